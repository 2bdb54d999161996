"""A handler's state changes commit with its event (flask_ampalibe/unit.py, through the public API).

Bots are served through the webhook route (or :class:`BotTester`) on each database; what the
database holds is read from another :class:`Store` (no unit of its own: it reads what is
committed), as another process would.
"""
from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import threading
import time
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from flask import Flask

import flask_ampalibe
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store
from flask_ampalibe.testing import BotTester, WebhookClient, bot_config
from conftest import SECRET

USER = "4242"


def serve(tmp_path, graph, database_url: str, executor: str = "inline") -> tuple[Flask, flask_ampalibe.Router]:
    app = Flask("unit_bot", instance_path=str(tmp_path / "instance"))
    app.config.update(bot_config(graph, database_url, secret=SECRET), AMPALIBE_EXECUTOR=executor)
    return app, flask_ampalibe.Router()


@pytest.fixture
def bots(tmp_path, graph, database_url):
    """``bots(executor)`` -> (app, router, hook, outside): the extension is set up on first send."""
    made: list[Flask] = []

    def make(executor: str = "inline") -> tuple[Flask, flask_ampalibe.Router, Callable[[], WebhookClient], Store]:
        app, router = serve(tmp_path, graph, database_url, executor)
        made.append(app)

        def hook() -> WebhookClient:
            if "ampalibe" not in app.extensions:
                flask_ampalibe.Ampalibe(app, router=router)
            return WebhookClient(app.test_client(), SECRET)

        return app, router, hook, Store(make_engine(database_url))

    yield make
    for app in made:
        if "ampalibe" in app.extensions:
            app.extensions["ampalibe"].executor.shutdown(timeout=10)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)
    return value


def done(app: Flask, count: int) -> Callable[[], bool]:
    """Whether ``count`` events have an outcome."""
    def check() -> bool:
        stats = app.extensions["ampalibe"].inbox.stats()
        return stats["done"] + stats["failed"] >= count

    return check


def test_writes_are_seen_by_the_handler_and_committed_with_the_event(bots):
    app, router, hook, outside = bots("thread")
    inside: dict[str, Any] = {}
    gate, parked = threading.Event(), threading.Event()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        query = app.extensions["ampalibe"].query
        query.set_temp(sender_id, "n", (query.get_temp(sender_id, "n") or 0) + 1)
        query.set_action(sender_id, "/answer")
        query.set_lang(sender_id, "fr")
        inside.update(n=query.get_temp(sender_id, "n"), action=query.get_action(sender_id),
                      lang=query.get_lang(sender_id))
        parked.set()
        assert gate.wait(20)

    assert hook().send_text(USER, "hi").status_code == 200
    assert parked.wait(20)
    assert inside == {"n": 1, "action": "/answer", "lang": "fr"}
    # Not committed while the handler runs: another connection sees the state before the event.
    assert outside.get_temp(USER, "n") is None
    assert outside.get_user(USER) == (None, {}, None)
    gate.set()
    wait_until(done(app, 1))
    assert outside.get_temp(USER, "n") == 1
    assert outside.get_user(USER) == ("/answer", {}, "fr")


def test_set_action_routes_the_next_message_and_del_temp_deletes(bots):
    app, router, hook, outside = bots()
    got: list[tuple[str, Any]] = []
    query = flask_ampalibe.Model(store=outside)  # the same database, outside the app

    @router.command("/")
    def main(sender_id, cmd, **extends):
        bot = app.extensions["ampalibe"].query
        bot.set_action(sender_id, flask_ampalibe.Payload("/answer", step=2))
        bot.del_temp(sender_id, "draft")
        got.append(("main", bot.get_temp(sender_id, "draft")))

    @router.action("/answer")
    def answer(sender_id, cmd, step, **extends):
        got.append(("answer", (cmd, step)))
        app.extensions["ampalibe"].query.set_action(sender_id, None)

    client = hook()
    query.set_temp(USER, "draft", "old")
    client.send_text(USER, "hi")
    assert outside.get_temp(USER, "draft") is None and query.get_action(USER) == "/answer"
    client.send_text(USER, "forty-two")
    assert got == [("main", None), ("answer", ("forty-two", 2))]
    assert query.get_action(USER) is None


def test_a_handler_that_raises_commits_its_writes_with_the_failed_outcome(bots):
    app, router, hook, outside = bots()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        app.extensions["ampalibe"].query.set_temp(sender_id, "before", "the error")
        raise RuntimeError("boom")

    hook().send_text(USER, "hi")
    state = app.extensions["ampalibe"]
    assert state.inbox.stats()["failed"] == 1
    assert outside.get_temp(USER, "before") == "the error"


def test_async_and_offloaded_writes_are_buffered_in_the_same_unit(bots):
    app, router, hook, outside = bots("thread")
    inside: dict[str, Any] = {}
    gate, parked = threading.Event(), threading.Event()

    @router.command("/")
    async def main(sender_id, cmd, **extends):
        query = app.extensions["ampalibe"].query
        await flask_ampalibe.offload(query.set_temp, sender_id, "a", 1)
        query.set_temp(sender_id, "b", 2)  # on the loop's thread
        await asyncio.gather(*(flask_ampalibe.offload(query.set_temp, sender_id, f"c{i}", i) for i in range(5)))
        inside["read"] = [await flask_ampalibe.offload(query.get_temp, sender_id, k) for k in ("a", "b", "c4")]
        parked.set()
        await flask_ampalibe.offload(gate.wait, 20)

    hook().send_text(USER, "hi")
    assert parked.wait(20)
    assert inside["read"] == [1, 2, 4]
    assert outside.get_temp(USER, "a") is None and outside.get_temp(USER, "c0") is None
    gate.set()
    wait_until(done(app, 1))
    assert [outside.get_temp(USER, k) for k in ("a", "b", "c0", "c4")] == [1, 2, 0, 4]


def test_set_temps_and_forget_user_reach_a_handled_users_unit(bots):
    app, router, hook, outside = bots("thread")
    inside: dict[str, Any] = {}
    gate, parked = threading.Event(), threading.Event()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        query = app.extensions["ampalibe"].query
        query.set_temp(sender_id, "a", 1)
        query.set_temp(sender_id, "c", 3)
        parked.set()
        assert gate.wait(20)
        inside[cmd] = [query.get_temp(sender_id, k) for k in ("a", "b", "c")]
        if cmd == "forget":
            query.set_temp(sender_id, "after", True)

    client = hook()
    store = app.extensions["ampalibe"].store
    client.send_text(USER, "bulk")
    assert parked.wait(20)
    # Written at once; a later write than the handler's, so its value stands for "a".
    store.set_temps([(USER, "a", 10), (USER, "b", 20), ("other", "a", 0)])
    assert outside.get_temp(USER, "a") == 10
    gate.set()
    wait_until(done(app, 1))
    assert inside["bulk"] == [10, 20, 3]
    assert [outside.get_temp(USER, k) for k in ("a", "b", "c")] == [10, 20, 3]

    parked.clear()
    gate.clear()
    client.send_text(USER, "forget")
    assert parked.wait(20)
    assert store.forget_user(USER)["amp_inbox"] == 2
    gate.set()
    wait_until(lambda: app.extensions["ampalibe"].executor.in_flight == 0)
    assert inside["forget"] == [None, None, None]
    # Nothing of the forgotten state was written back; what the handler wrote afterwards was.
    assert [outside.get_temp(USER, k) for k in ("a", "c", "after")] == [None, None, True]


def _temp_reads(engine: sa.Engine) -> tuple[list[str], Callable[[], None]]:
    """Statements that read one temporary value (not the prefetch of all of them)."""
    seen: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if " ".join(statement.split("WHERE")[0].split()) == "SELECT amp_temp.value FROM amp_temp":
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", before)


@pytest.mark.parametrize("keys", [10, 70])
def test_temps_are_read_with_the_event_once_handlers_read_them(bots, keys):
    app, router, hook, outside = bots()
    values: dict[str, list[Any]] = {}

    @router.command("/")
    def main(sender_id, cmd, **extends):
        query = app.extensions["ampalibe"].query
        values[cmd] = [query.get_temp(sender_id, f"k{i}") for i in range(keys)] + [query.get_temp(sender_id, "none")]

    client = hook()
    outside.set_temps((USER, f"k{i}", i) for i in range(keys))
    engine = app.extensions["ampalibe"].store.engine
    reads, stop = _temp_reads(engine)
    try:
        client.send_text(USER, "first")  # no handler has read a temporary value yet: one by one
        first = len(reads)
        client.send_text(USER, "second")  # read with the event: up to 64 of them
        second = len(reads) - first
    finally:
        stop()
    assert values["first"] == values["second"] == [*range(keys), None]
    assert first == keys + 1
    # 10 keys: all read with the event, the missing one known missing; 70: 65 read with it.
    assert second == (0 if keys <= 64 else keys - 65 + 1)


def test_a_value_the_database_refuses_fails_the_event_without_blocking_the_user(bots, database_url):
    app, router, hook, outside = bots()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        query = app.extensions["ampalibe"].query
        query.set_temp(sender_id, "seen", cmd)
        if cmd == "long":
            query.set_temp(sender_id, "k" * 300, 1)  # amp_temp.key is 191 characters

    client = hook()
    client.send_text(USER, "long")
    client.send_text(USER, "next")
    stats = app.extensions["ampalibe"].inbox.stats()
    if database_url.startswith("sqlite"):  # SQLite does not enforce column lengths
        assert stats["done"] == 2
    else:
        assert stats["done"] == 1 and stats["failed"] == 1
        assert "DataError" in app.extensions["ampalibe"].inbox.failed()[0]["error"]
    assert outside.get_temp(USER, "seen") == "next"


def test_bot_tester_reads_the_committed_state(tmp_path, graph):
    app = Flask("kit_unit", instance_path=str(tmp_path / "instance"))
    app.config.update(bot_config(graph, f"sqlite:///{tmp_path / 'kit.db'}"))
    router = flask_ampalibe.Router()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        query = app.extensions["ampalibe"].query
        query.set_temp(sender_id, "count", (query.get_temp(sender_id, "count") or 0) + 1)

    flask_ampalibe.Ampalibe(app, router=router)
    try:
        bot = BotTester(app, graph)
        for _ in range(3):
            bot.send("hi")
        assert bot.query.get_temp(bot.user, "count") == 3
    finally:
        app.extensions["ampalibe"].executor.shutdown(timeout=5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_reads_the_database_not_the_parents_units(bots):
    app, router, hook, outside = bots("thread")
    # No thread of this process may be inside SQLite at the fork: SQLite's own mutexes (its file
    # and memory locks) stay held in the child by a thread that does not exist there, and the
    # child's first statement would hang (seen once in CI).  So the sweeper, which starts with
    # the first event, must have ended its first round (its purge is its last step) and sleeps
    # for a minute; the handler is parked in the bot's code.
    app.config.update(AMPALIBE_POLL_SECONDS=60, AMPALIBE_LEASE_SECONDS=300)
    gate, parked, swept = threading.Event(), threading.Event(), threading.Event()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        app.extensions["ampalibe"].query.set_temp(sender_id, "n", "parent's, not committed")
        parked.set()
        assert gate.wait(20)

    client = hook()
    inbox = app.extensions["ampalibe"].inbox
    purge = inbox.purge

    def purge_then_tell(*args: Any) -> int:
        try:
            return purge(*args)
        finally:
            swept.set()

    inbox.purge = purge_then_tell
    client.send_text(USER, "hi")
    assert parked.wait(20) and swept.wait(20)
    store = app.extensions["ampalibe"].store
    assert store.get_temp(USER, "n") == "parent's, not committed"  # this process: the unit's
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, json.dumps(store.get_temp(USER, "n")).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with selectors.DefaultSelector() as selector:  # not select(): the suite's descriptors pass 1024
            selector.register(read_end, selectors.EVENT_READ)
            reported = bool(selector.select(20))
        if not reported:
            os.kill(pid, signal.SIGKILL)  # a hung child must not hang the suite too
        assert reported, "the forked child did not report within 20 s"
        assert json.loads(os.read(read_end, 4096)) is None
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
        gate.set()
    wait_until(done(app, 1))
    assert outside.get_temp(USER, "n") == "parent's, not committed"
