"""Hostile and malformed webhook input (issue 12): each failure found by the fuzz has a regression
test here, through the real route, on every database where the outcome differed.

A body that is not a page webhook is a 400; an item of a page webhook that cannot be a valid
Messenger event is kept as ``rejected`` with its reason and never handled, while the rest of its
batch is; a 5xx only ever means our own database is down.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Iterator

import pytest
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

import flask_ampalibe
from flask_ampalibe.events import MAX_ID_LENGTH, parse_body
from flask_ampalibe.executor import ThreadExecutor
from flask_ampalibe.inbox import Claimed, Inbox
from flask_ampalibe.signature import HEADER, generate_signature
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store
from flask_ampalibe.tables import leases
from flask_ampalibe.tables import inbox as inbox_table
from flask_ampalibe.testing import WebhookClient, attachment_event, message_event, page_body
from conftest import SECRET
from test_delivery import wait_until


class Bot:
    """An app whose ``/`` command notes every message and echoes it; events are recorded by the
    webhook and handled by :meth:`drain` (the ``worker`` executor), so a test sees both steps."""

    def __init__(self, app: Flask, graph: Any) -> None:
        self.app = app
        self.graph = graph
        self.state = app.extensions["ampalibe"]
        self.inbox = self.state.inbox
        self.hook = WebhookClient(app.test_client(), SECRET)
        self.seen: list[tuple[str, str]] = []

    def post_raw(self, raw: bytes) -> Any:
        return self.hook.client.post("/", data=raw, headers={HEADER: generate_signature(SECRET, raw),
                                                             "Content-Type": "application/json"})

    def drain(self, *users: str) -> int:
        return sum(self.state.executor.drain(user) for user in users)


def make_bot(url: str, tmp_path: Any, graph: Any, name: str, reply: bool = True) -> Bot:
    app = Flask(name, instance_path=str(tmp_path / "instance"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="worker", AMPALIBE_DATABASE_URL=url)
    router = flask_ampalibe.Router()
    flask_ampalibe.Ampalibe(app, router=router)
    bot = Bot(app, graph)

    @router.command("/")
    def main(sender_id: str, cmd: str, **extends: Any) -> None:
        bot.seen.append((sender_id, str(cmd)))
        if reply:
            bot.state.chat.send_text(sender_id, f"you said {cmd}")

    return bot


@pytest.fixture
def bot(database_url: str, tmp_path: Any, graph: Any) -> Iterator[Bot]:
    """A bot on each database (SQLite, MariaDB, PostgreSQL)."""
    bot = make_bot(database_url, tmp_path, graph, "hostile")
    yield bot
    bot.state.shutdown(timeout=5)
    bot.state.store.engine.dispose()


def _texts(bot: Bot, user: str) -> list[str]:
    return [text for who, text in bot.seen if who == user]


# -- 1. a malformed event neither blocks its user nor repeats the reply before it ------------------
def test_1_a_malformed_event_is_rejected_and_the_users_other_events_are_handled_once(bot):
    bad = message_event("u", "malformed")
    bad["recipient"] = "PAGE1"
    assert bot.hook.post(message_event("u", "one", timestamp=1), dict(bad, timestamp=2)).status_code == 200
    assert bot.hook.post(message_event("u", "three", timestamp=3)).status_code == 200
    assert bot.drain("u") == 2
    assert _texts(bot, "u") == ["one", "three"]
    assert bot.graph.sent_texts("u") == ["you said one", "you said three"]  # each reply sent once
    stats = bot.inbox.stats()
    assert (stats["done"], stats["rejected"], stats["failed"], stats["pending"]) == (2, 1, 0, 0)
    (row,) = bot.inbox.rejected()
    assert row["error"] == "recipient is not an object" and row["user_id"] == "u"


def test_1_an_event_that_cannot_be_read_back_fails_with_its_reason_and_blocks_nothing(bot):
    # Recorded before validation existed (or edited by hand): handing it out fails before any
    # handler runs.  It is failed with that reason at once; the event handled before it keeps its
    # "done" and its reply is not sent again; the user's later events go on.
    bot.hook.post(message_event("u", "one", timestamp=1), message_event("u", "two", timestamp=2, mid="m.two"),
                  message_event("u", "three", timestamp=3))
    with bot.inbox.engine.begin() as conn:
        conn.execute(update(inbox_table).where(inbox_table.c.event_key == "m:message:m.two")
                     .values(body='{"kind":"message","raw":{"recipient":"PAGE1"}}'))
    assert bot.drain("u") == 2
    assert _texts(bot, "u") == ["one", "three"]
    assert bot.graph.sent_texts("u") == ["you said one", "you said three"]
    (failed,) = bot.inbox.failed()
    assert failed["event_key"] == "m:message:m.two" and failed["attempts"] == 1
    assert "cannot be read back" in failed["error"] and "KeyError" in failed["error"]
    assert bot.inbox.stats()["done"] == 2


def test_1_done_is_committed_before_the_next_event_is_taken(bot, monkeypatch):
    # A database error while taking the next event (here: reading the user's state) must not undo
    # the "done" of the event just handled, or its reply would be sent again by the next worker.
    bot.hook.post(message_event("u", "one", timestamp=1), message_event("u", "two", timestamp=2))
    store, calls = bot.state.store, []
    real_open = store.open_unit

    def read_once_then_fail(user_id, conn, touch):
        calls.append(user_id)
        if len(calls) == 2:
            raise OperationalError("SELECT", {}, Exception("connection lost"))
        return real_open(user_id, conn, touch)

    monkeypatch.setattr(store, "open_unit", read_once_then_fail)
    with pytest.raises(OperationalError):
        bot.drain("u")
    monkeypatch.setattr(store, "open_unit", real_open)
    assert bot.inbox.stats()["done"] == 1
    assert bot.inbox.claim("u", "other-worker", 30) is True  # the lease was given back
    bot.inbox.release("u", "other-worker")
    assert bot.drain("u") == 1
    assert bot.graph.sent_texts("u") == ["you said one", "you said two"]


# -- 4. lone surrogates, CESU-8, NUL and 4-byte characters are stored (every database) ---------------
def test_4_lone_surrogates_and_cesu8_are_stored_and_handled(bot):
    escaped = json.dumps(page_body(message_event("u", "a\ud800b", timestamp=1))).encode()
    assert b"\\ud800" in escaped
    cesu8 = json.dumps(page_body(message_event("u", "c\udbffd", timestamp=2)), ensure_ascii=False)
    raw = cesu8.encode("utf-8", "surrogatepass")
    assert b"\xed\xaf\xbf" in raw
    assert bot.post_raw(escaped).status_code == 200
    assert bot.post_raw(raw).status_code == 200
    assert bot.drain("u") == 2
    assert _texts(bot, "u") == ["a\ud800b", "c\udbffd"]


def test_4_6_nul_and_astral_characters_in_texts_are_stored_and_handled(bot):
    assert bot.hook.post(message_event("u", "nul\x00here", timestamp=1),
                         message_event("u", "\U0001f600\U0001d11e", timestamp=2),
                         message_event("u", "x" * 100_000, timestamp=3)).status_code == 200
    assert bot.drain("u") == 3
    assert _texts(bot, "u") == ["nul\x00here", "\U0001f600\U0001d11e", "x" * 100_000]


# -- 5. numbers out of range -------------------------------------------------------------------------
@pytest.mark.parametrize("timestamp", [9223372036854775808, 2 ** 53 + 1, -1, 1e308, 1.5, "1", True, None])
def test_5_a_timestamp_out_of_range_is_rejected_and_the_batch_goes_on(bot, timestamp):
    bad = message_event("u", "bad", timestamp=1)
    bad["timestamp"] = timestamp
    raw = json.dumps(page_body(bad, message_event("u", "good", timestamp=2))).encode()
    assert bot.post_raw(raw).status_code == 200
    assert bot.drain("u") == 1 and _texts(bot, "u") == ["good"]
    assert bot.inbox.stats()["rejected"] == 1


@pytest.mark.parametrize("constant", [b"Infinity", b"-Infinity", b"NaN"])
def test_5_non_json_numbers_are_400(bot, constant):
    raw = json.dumps(page_body(message_event("u", "x", timestamp=1))).encode().replace(b'"timestamp": 1',
                                                                                     b'"timestamp": ' + constant)
    assert constant in raw
    assert bot.post_raw(raw).status_code == 400
    assert bot.inbox.stats()["received"] == 0


def test_5_huge_numbers_elsewhere_are_kept_as_sent(bot):
    item = message_event("u", "big", timestamp=1)
    item["message"]["custom"] = [10 ** 30, 1e308, -(2 ** 70)]
    assert bot.hook.post(item).status_code == 200
    assert bot.drain("u") == 1
    assert bot.inbox.stats()["done"] == 1


# -- 6. ids the database cannot hold (PostgreSQL gave a permanent 503) --------------------------------
@pytest.mark.parametrize("field, value, reason", [
    ("sender", "x" * (MAX_ID_LENGTH + 1), "sender.id is longer than 64 characters"),
    ("sender", "u\x00", "sender.id holds control characters or invalid Unicode"),
    ("sender", "u\ud800", "sender.id holds control characters or invalid Unicode"),
    ("sender", 12.5, "sender.id is not a string"),
    ("recipient", "p" * 65, "recipient.id is longer than 64 characters"),
    ("mid", "m" * 200, "the mid is longer than 181 characters"),
    ("mid", "m\x00", "the mid holds control characters or invalid Unicode"),
    ("mid", 5, "message.mid is not a string"),
])
def test_6_ids_that_cannot_be_stored_are_rejected_and_the_rest_is_recorded(bot, field, value, reason):
    bad = message_event("u", "bad", timestamp=1)
    if field == "mid":
        bad["message"]["mid"] = value
    else:
        bad[field] = {"id": value}
    assert bot.hook.post(bad, message_event("u", "good", timestamp=2)).status_code == 200
    assert bot.drain("u") == 1 and _texts(bot, "u") == ["good"]
    (row,) = bot.inbox.rejected()
    assert row["error"] == reason


def test_6_the_longest_ids_that_fit_are_handled(bot):
    user, mid = "9" * MAX_ID_LENGTH, "m" * 181
    assert bot.hook.post(message_event(user, "long ids", mid=mid, timestamp=1)).status_code == 200
    assert bot.drain(user) == 1 and _texts(bot, user) == ["long ids"]
    assert bot.hook.post(message_event(user, "again", mid=mid, timestamp=1)).status_code == 200  # deduplicated
    assert bot.drain(user) == 0


# -- 7. attachments that are not a list of objects -----------------------------------------------------
@pytest.mark.parametrize("attachments, reason", [
    (5, "message.attachments is not a list"), (True, "message.attachments is not a list"),
    (1.5, "message.attachments is not a list"), ("abc", "message.attachments is not a list"),
    ([5], "message.attachments holds something else than objects"),
    ([{"type": "image", "payload": "url"}], "an attachment's payload is not an object"),
    ([{"type": "image", "payload": {"url": 7}}], "an attachment's payload.url is not a string"),
])
def test_7_attachments_of_the_wrong_shape_are_rejected(bot, attachments, reason):
    bad = attachment_event("u", ["https://x/1.png"], timestamp=1)
    bad["message"]["attachments"] = attachments
    assert bot.hook.post(bad, attachment_event("u", ["https://x/2.png"], timestamp=2)).status_code == 200
    assert bot.drain("u") == 1 and _texts(bot, "u") == ["https://x/2.png"]
    assert bot.inbox.rejected()[0]["error"] == reason
    assert bot.inbox.stats()["failed"] == 0


# -- 8. after a database outage, a lease left behind expires within one lease period ----------------
def test_8_a_lease_left_behind_by_an_outage_is_not_renewed_while_the_worker_is_busy_with_others(tmp_path,
                                                                                                 monkeypatch):
    now = [1000.0]  # the inbox's clock: leases expire when the test says, not after a sleep
    url = f"sqlite:///{tmp_path / 'leases.db'}"
    inbox = Inbox(Store(make_engine(url)), clock=lambda: now[0])
    b_started, b_release = threading.Event(), threading.Event()
    handled: list[str] = []

    def handle(claimed: Claimed) -> None:
        handled.append(claimed.event.raw["message"]["text"])
        if claimed.event.sender_id == "b":
            b_started.set()
            b_release.wait(20)

    def expiry(user: str) -> float:
        with inbox.engine.connect() as conn:
            return conn.execute(select(leases.c.expires_at).where(leases.c.user_id == user)).scalar()

    executor = ThreadExecutor(inbox, handle, threads=2, lease_seconds=30, poll_seconds=0.05)
    try:
        executor.notify(inbox.record(parse_body(page_body(message_event("b", "b1", timestamp=1)))))
        assert b_started.wait(20)
        # The database goes away while a's first event finishes: taking the next one fails, and so
        # does giving the lease back.  a's lease stays with this (living, busy) worker until 1030.
        real_next, real_release = inbox.next_event, inbox.release

        def next_down(user_id, owner, seconds, finished=None, error=None):
            if user_id != "a":
                return real_next(user_id, owner, seconds, finished, error)
            inbox.finish(finished, error)  # a1's outcome was committed, then the server went away
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

        release_failed = threading.Event()

        def release_down(user_id, owner):
            release_failed.set()
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

        monkeypatch.setattr(inbox, "next_event", next_down)
        monkeypatch.setattr(inbox, "release", release_down)
        executor.notify(inbox.record(parse_body(page_body(message_event("a", "a1", timestamp=1),
                                                          message_event("a", "a2", timestamp=2)))))
        assert release_failed.wait(20)
        wait_until(lambda: "a" not in executor._active, 20, "the executor to be done with a")
        monkeypatch.setattr(inbox, "next_event", real_next)
        monkeypatch.setattr(inbox, "release", real_release)
        assert expiry("a") == 1030.0
        now[0] = 1020.0  # the database is back; b's handler still runs and its lease is renewed
        wait_until(lambda: expiry("b") == 1050.0, 20, "b's lease to be renewed")
        assert expiry("a") == 1030.0  # not a's: this worker does not handle a any more
        assert "a2" not in handled
        now[0] = 1030.5  # one lease period after a was taken: a's lease expired, its events go on
        wait_until(lambda: "a2" in handled, 20, "a's next event to be handled")
    finally:
        b_release.set()
        assert executor.shutdown(20)
        inbox.engine.dispose()
    assert handled.count("a1") == 1 and handled.count("a2") == 1 and handled.count("b1") == 1
