"""The app's internal commands (flask_ampalibe.internal): the library's own buttons, run before routing."""
from __future__ import annotations

import asyncio

import pytest

from flask_ampalibe.internal import InternalCommands
from flask_ampalibe.pagination import PAGE_COMMAND, PAGE_PREFIX
from flask_ampalibe.testing.graph import FakeGraph
from flask_ampalibe.ui import Element

USER = "31337"


@pytest.fixture
def seen(ext) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    @ext.command("/")
    def main(sender_id, cmd, **extends):
        calls.append(("main", cmd))

    @ext.command("/list")
    def listing(sender_id, cmd, **extends):
        elements = [Element(title=f"item {i}") for i in range(1, 26)]
        ext.chat.send_template(sender_id, elements, next=True)

    return calls


def _titles(graph: FakeGraph) -> list[str]:
    message = graph.sent_messages(USER)[-1]
    return [e["title"] for e in message["attachment"]["payload"]["elements"]]


def _next_payload(graph: FakeGraph) -> str:
    (button,) = [q for q in graph.sent_messages(USER)[-1]["quick_replies"] if q["title"] == "Next page"]
    return button["payload"]


def test_the_app_registers_pagination_as_an_internal_command(app, ext) -> None:
    internal = app.extensions["ampalibe"].internal
    assert PAGE_COMMAND in internal and list(internal) == [PAGE_COMMAND]
    assert internal.find(PAGE_PREFIX + "tok") is not None
    assert internal.find(PAGE_COMMAND) is not None
    assert internal.find("__amp_pagex tok") is None and internal.find("/list") is None


def test_a_page_tap_runs_the_internal_command_not_the_bot(hook, graph, seen) -> None:
    hook.send_text(USER, "/list")
    assert _titles(graph)[0] == "item 1"
    tap = _next_payload(graph)
    hook.send_quick_reply(USER, tap, "Next page")
    assert _titles(graph)[0] == "item 11"
    hook.send_quick_reply(USER, tap, "Next page")  # the same tap again: consumed, nothing sent
    hook.send_postback(USER, PAGE_PREFIX + "no-such-token")
    assert len(graph.sends(USER)) == 2
    assert seen == []  # the bot's '/' never saw a tap


def test_an_internal_command_runs_after_event_handlers(hook, graph, seen, ext) -> None:
    @ext.event("message")
    def stop(sender_id, **extends):
        return False

    hook.send_quick_reply(USER, PAGE_PREFIX + "tok", "Next page")
    assert graph.sends(USER) == [] and seen == []


def test_other_amp_words_go_to_the_bot(hook, graph, seen, ext) -> None:
    @ext.command("__amp_help")
    def amp_help(sender_id, cmd, **extends):
        seen.append(("__amp_help", cmd))

    hook.send_text(USER, "__amp_help me")
    hook.send_text(USER, "__amp_pagex tok")
    hook.send_text(USER, " __amp_page tok")  # not the library's payload
    assert seen == [("__amp_help", "me"), ("main", "__amp_pagex tok"), ("main", " __amp_page tok")]
    assert graph.sends(USER) == []


def test_a_registered_internal_command_gets_sender_and_text(app, hook, seen) -> None:
    got: list[tuple[str, str]] = []
    app.extensions["ampalibe"].internal.register("__amp_ping", lambda sender_id, text: got.append((sender_id, text)))
    hook.send_postback(USER, "__amp_ping 42")
    hook.send_text(USER, "__amp_ping")
    assert got == [(USER, "__amp_ping 42"), (USER, "__amp_ping")]
    assert seen == []


def test_internal_commands_run_on_the_event_loop_too(app, hook, graph, ext) -> None:
    """With an ``async def`` handler the dispatcher runs on the loop; the tap is offloaded there."""
    @ext.command("/list")
    async def listing(sender_id, cmd, **extends):
        await asyncio.sleep(0)
        await ext.chat.aio.send_template(sender_id, [Element(title=f"item {i}") for i in range(1, 13)], next=True)

    hook.send_text(USER, "/list")
    hook.send_quick_reply(USER, _next_payload(graph), "Next page")
    assert _titles(graph) == ["item 11", "item 12"]


def test_register_checks_the_name_and_refuses_a_second_function() -> None:
    internal = InternalCommands()

    def first(sender_id: str, text: str) -> None:
        pass

    def second(sender_id: str, text: str) -> None:
        pass

    assert internal.register("__amp_x", first) is first
    assert internal.register("__amp_x", first) is first  # the same function again is fine
    with pytest.raises(ValueError, match=r"__amp_x.*first.*second"):
        internal.register("__amp_x", second)
    for bad in ("/x", "__amp_a b", "amp_x", ""):
        with pytest.raises(ValueError, match="one word starting with '__amp_'"):
            internal.register(bad, first)
