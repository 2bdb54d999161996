"""``next=`` pagination of templates and quick replies, with the pages kept in a store."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from conftest import MemoryPages

from flask_ampalibe.messenger import PAGE_PREFIX, Messenger
from flask_ampalibe.payload import Payload, PayloadCodec
from flask_ampalibe.testing.graph import FakeGraph
from flask_ampalibe.ui import Element, LimitError, QuickReply

USER = "4242"
codec = PayloadCodec("pages-test-secret")


@pytest.fixture
def pages() -> MemoryPages:
    return MemoryPages()


@pytest.fixture
def chat(graph: FakeGraph, pages: MemoryPages) -> Messenger:
    messenger = Messenger("token", graph_url=graph.url, timeout=5, pages=pages, payload_encoder=codec.encode)
    yield messenger
    messenger.close()


def items(n: int) -> list[Element]:
    return [Element(title=f"item {i}", buttons=[{"type": "postback", "title": "Get", "payload": Payload("/item", i=i)}])
            for i in range(1, n + 1)]


def last_message(graph: FakeGraph) -> dict:
    return graph.sent_messages(USER)[-1]


def titles(message: dict) -> list[str]:
    return [e["title"] for e in message["attachment"]["payload"]["elements"]]


def tap(chat: Messenger, message: dict, label: str, user: str = USER) -> bool:
    """Tap the quick reply called ``label`` of ``message`` (a standalone Messenger's handle_internal;
    in an app, the dispatcher runs the internal command instead)."""
    payload = next(q["payload"] for q in message["quick_replies"] if q["title"] == label)
    return chat.handle_internal(user, payload)


def test_template_25_elements_in_pages_of_10_10_5(chat: Messenger, graph: FakeGraph, pages: MemoryPages) -> None:
    extra = [QuickReply(title="Menu", payload="/menu")]
    assert chat.send_template(USER, items(25), quick_rep=extra, next=True).status_code == 200
    first = last_message(graph)
    assert titles(first) == [f"item {i}" for i in range(1, 11)]
    assert [q["title"] for q in first["quick_replies"]] == ["Menu", "Next page"]
    assert first["quick_replies"][1]["payload"].startswith(PAGE_PREFIX)

    assert tap(chat, first, "Next page") is True
    second = last_message(graph)
    assert titles(second) == [f"item {i}" for i in range(11, 21)]
    assert [q["title"] for q in second["quick_replies"]] == ["Menu", "Next page"]
    # Payload objects of later pages were encoded when the page was saved, and still decode.
    assert codec.decode(second["attachment"]["payload"]["elements"][0]["buttons"][0]["payload"]) == ("/item", {"i": 11})

    assert tap(chat, second, "Next page") is True
    third = last_message(graph)
    assert titles(third) == [f"item {i}" for i in range(21, 26)]
    assert third["quick_replies"] == [{"content_type": "text", "title": "Menu", "payload": "/menu"}]  # no "next"
    assert len(graph.sends(USER)) == 3
    assert pages.data == {}  # every page was taken


def test_stale_or_repeated_tap_sends_nothing(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_template(USER, items(25), next=True)
    first = last_message(graph)
    assert tap(chat, first, "Next page") is True
    assert len(graph.sends()) == 2
    assert tap(chat, first, "Next page") is True  # the same tap again: consumed, nothing re-sent
    assert chat.handle_internal(USER, PAGE_PREFIX + "no-such-token") is True
    assert chat.handle_internal(USER, PAGE_PREFIX.strip()) is True
    assert len(graph.sends()) == 2


def test_a_page_belongs_to_its_user(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_template(USER, items(12), next=True)
    first = last_message(graph)
    assert tap(chat, first, "Next page", user="someone-else") is True
    assert len(graph.sends()) == 1
    assert tap(chat, first, "Next page") is True
    assert titles(last_message(graph)) == ["item 11", "item 12"]


def test_handle_internal_ignores_other_texts(chat: Messenger) -> None:
    assert chat.handle_internal(USER, "/item") is False
    assert chat.handle_internal(USER, "__amp_pagex") is False
    assert chat.handle_internal(USER, None) is False  # type: ignore[arg-type]


def test_custom_next_label_and_persona_kept(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_template(USER, items(15), next="Suivant", persona_id="99", tag="ACCOUNT_UPDATE")
    first = graph.sends(USER)[0].json
    assert first["persona_id"] == "99" and first["tag"] == "ACCOUNT_UPDATE"
    assert [q["title"] for q in first["message"]["quick_replies"]] == ["Suivant"]
    tap(chat, first["message"], "Suivant")
    second = graph.sends(USER)[1].json
    # The next page answers the user's tap: a RESPONSE, by the same persona.
    assert second["persona_id"] == "99" and second["messaging_type"] == "RESPONSE" and "tag" not in second
    assert titles(second["message"]) == [f"item {i}" for i in range(11, 16)]


def test_quick_replies_30_in_pages_of_12(chat: Messenger, graph: FakeGraph) -> None:
    quick_rep = [QuickReply(title=f"response {i}", payload=Payload("/response", item=i)) for i in range(1, 31)]
    chat.send_quick_reply(USER, quick_rep, "who do you choose ?", next=True)
    seen: list[str] = []
    for expected in (12, 12, 6):
        message = last_message(graph)
        assert message["text"] == "who do you choose ?"
        replies = message["quick_replies"]
        assert len(replies) <= 13
        seen += [q["title"] for q in replies if q["title"] != "More"]
        assert len([q for q in replies if q["title"] != "More"]) == expected
        if expected == 6:
            assert all(q["title"] != "More" for q in replies)
        else:
            assert replies[-1]["title"] == "More"
            assert tap(chat, message, "More") is True
    assert seen == [f"response {i}" for i in range(1, 31)]
    assert codec.decode(last_message(graph)["quick_replies"][0]["payload"]) == ("/response", {"item": 25})


def test_quick_reply_next_label(chat: Messenger, graph: FakeGraph) -> None:
    quick_rep = [{"content_type": "text", "title": f"r{i}", "payload": f"/r {i}"} for i in range(20)]
    chat.send_quick_reply(USER, quick_rep, "Pick", next="See More")
    assert last_message(graph)["quick_replies"][-1]["title"] == "See More"


def test_limits_without_next_raise_and_send_nothing(chat: Messenger, graph: FakeGraph) -> None:
    with pytest.raises(LimitError, match=r"11 elements.*at most 10.*next=True"):
        chat.send_template(USER, items(11))
    quick_rep = [QuickReply(title=f"r{i}", payload="/r") for i in range(14)]
    with pytest.raises(LimitError, match=r"14 quick replies.*at most 13.*next=True"):
        chat.send_quick_reply(USER, quick_rep, "Pick")
    with pytest.raises(LimitError, match="14 quick replies; Messenger shows at most 13"):
        chat.send_template(USER, items(2), quick_rep=quick_rep[:13] + [quick_rep[13]])
    with pytest.raises(LimitError, match="next-page button"):
        chat.send_template(USER, items(11), quick_rep=quick_rep[:13], next=True)
    with pytest.raises(LimitError, match="at most 20"):
        chat.send_template(USER, items(11), next="A label far too long for it")
    assert graph.requests == []


def test_exact_limits_need_no_next(chat: Messenger, graph: FakeGraph, pages: MemoryPages) -> None:
    chat.send_template(USER, items(10), next=True)
    chat.send_quick_reply(USER, [QuickReply(title=f"r{i}", payload="/r") for i in range(13)], "Pick", next=True)
    assert "quick_replies" not in graph.sent_messages(USER)[0]
    assert len(graph.sent_messages(USER)[1]["quick_replies"]) == 13
    assert pages.count == 0


def test_next_without_a_page_store_is_a_clear_error(graph: FakeGraph) -> None:
    chat = Messenger("token", graph_url=graph.url)
    with pytest.raises(ValueError, match="pages=store"):
        chat.send_template(USER, items(11), next=True)
    assert graph.requests == []
    assert chat.handle_internal(USER, PAGE_PREFIX + "t1") is True
    chat.close()


def test_page_data_is_plain_json(chat: Messenger, pages: MemoryPages) -> None:
    chat.send_template(USER, items(11), quick_rep=[QuickReply(title="Menu", payload=Payload("/menu", a=1))], next=True)
    (owner, data), = pages.data.values()
    assert owner == USER
    assert json.loads(json.dumps(data)) == data
    assert data["elements"][0]["title"] == "item 11"
    assert codec.decode(data["quick_rep"][0]["payload"]) == ("/menu", {"a": 1})


def test_caller_lists_are_not_changed(chat: Messenger) -> None:
    elements = items(25)
    extras = [QuickReply(title="Menu", payload="/menu")]
    chat.send_template(USER, elements, quick_rep=extras, next=True)
    assert len(elements) == 25 and len(extras) == 1


# -- with the real SQL store --------------------------------------------------------------------------
def test_pagination_with_the_sql_store_across_workers(graph: FakeGraph, tmp_path: Path) -> None:
    from flask_ampalibe.engine import make_engine
    from flask_ampalibe.storage import Store

    store = Store(make_engine(f"sqlite:///{tmp_path / 'pages.db'}"))
    worker_a = Messenger("token", graph_url=graph.url, pages=store, payload_encoder=codec.encode)
    worker_b = Messenger("token", graph_url=graph.url, pages=store, payload_encoder=codec.encode)
    worker_a.send_template(USER, items(25), next=True)
    first = last_message(graph)
    assert tap(worker_b, first, "Next page") is True  # the tap lands on another worker
    second = last_message(graph)
    assert titles(second) == [f"item {i}" for i in range(11, 21)]

    # Two simultaneous taps on the same button: the page is sent once.
    results: list[bool] = []
    threads = [threading.Thread(target=lambda w=w: results.append(tap(w, second, "Next page")))
               for w in (worker_a, worker_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True]
    assert len(graph.sends(USER)) == 3
    assert titles(last_message(graph)) == [f"item {i}" for i in range(21, 26)]
    assert tap(worker_a, first, "Next page") is True and len(graph.sends(USER)) == 3  # stale
    worker_a.close()
    worker_b.close()
