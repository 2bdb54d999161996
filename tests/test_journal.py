"""The webhook's journal on an SQLite file (flask_ampalibe.journal): the acks' writes go to a file
of their own, and every event is moved into the inbox once, whatever fails or dies in between."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import sqlalchemy as sa

from flask_ampalibe.engine import make_engine, read_only
from flask_ampalibe.events import parse_body
from flask_ampalibe.inbox import Inbox
from flask_ampalibe.storage import Store
from flask_ampalibe.testing import message_event, page_body


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'bot.db'}"


@pytest.fixture
def box(url):
    inbox = Inbox(Store(make_engine(url)), journal=True)
    yield inbox
    inbox.engine.dispose()


def events(*items):
    return parse_body(page_body(*items))


def _in_inbox(box):
    """How many rows ``amp_inbox`` holds (without moving anything in)."""
    box.store.ensure()
    with read_only(box.engine) as conn:
        return conn.execute(sa.text("SELECT count(*) FROM amp_inbox")).scalar()


def _texts(box, user):
    """``user``'s events in the order the inbox hands them out (each finished)."""
    got, claimed = [], box.take(user, "w", 30)
    while claimed is not None:
        got.append(claimed.event.raw["message"]["text"])
        claimed = box.next_event(user, "w", 30, finished=claimed)
    return got


def test_the_webhook_records_in_a_file_of_its_own_and_taking_a_user_moves_it_in(box, tmp_path):
    assert box.record(events(message_event("u", "hi", mid="m.1"), message_event("u", "there", mid="m.2"))) == ["u"]
    assert (tmp_path / "bot.db-webhook").is_file()
    assert _in_inbox(box) == 0  # recorded, not yet moved
    assert box.has_work("u")  # (what a Celery task asks first)
    assert _texts(box, "u") == ["hi", "there"]
    assert box.stats()["done"] == 2


def test_the_operators_counts_include_what_the_journal_holds(box):
    box.record(events(message_event("u", "hi", mid="m.1"), message_event("v", "yo", mid="m.2")))
    assert _in_inbox(box) == 0
    stats = box.stats()
    assert stats["pending"] == 2 and stats["received"] == 2


def test_an_ack_does_not_wait_for_a_transaction_holding_the_main_files_write_lock(box):
    box.record(events(message_event("u", "first", mid="m.0")))
    box.settle()
    holding, release = threading.Event(), threading.Event()

    def executor_transaction():
        with box.engine.begin() as conn:  # BEGIN IMMEDIATE: SQLite's write lock of the main file
            conn.execute(sa.text("SELECT 1"))
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=executor_transaction)
    holder.start()
    try:
        assert holding.wait(10)
        recorder = threading.Thread(target=box.record, args=(events(message_event("u", "second", mid="m.1")),))
        recorder.start()
        recorder.join(10)
        assert not recorder.is_alive()  # committed while the main file stayed locked
    finally:
        release.set()
        holder.join(10)
    assert _texts(box, "u") == ["first", "second"]


def test_an_earlier_event_recorded_while_a_user_is_handled_comes_before_their_later_ones(box):
    box.record(events(*[message_event("u", f"m{i}", mid=f"m.{i}", timestamp=1000 + 10 * i) for i in range(3)]))
    first = box.take("u", "w", 30)
    box.record(events(message_event("u", "late", mid="m.late", timestamp=1005)))  # before m1
    got = [first.event.raw["message"]["text"]]
    claimed = box.next_event("u", "w", 30, finished=first)
    while claimed is not None:
        got.append(claimed.event.raw["message"]["text"])
        claimed = box.next_event("u", "w", 30, finished=claimed)
    assert got == ["m0", "late", "m1", "m2"]


def test_what_a_process_that_died_recorded_is_found_by_another_ones_sweep(box, url):
    # A real process records two users' events, then dies before its executor took them up.
    script = textwrap.dedent(f"""
        import os
        from flask_ampalibe.engine import make_engine
        from flask_ampalibe.events import parse_body
        from flask_ampalibe.inbox import Inbox
        from flask_ampalibe.storage import Store
        from flask_ampalibe.testing import message_event, page_body
        box = Inbox(Store(make_engine({url!r})), journal=True)
        box.record(parse_body(page_body(message_event("a", "from a", mid="a.1"), message_event("b", "from b", mid="b.1"))))
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env={**os.environ})
    assert _in_inbox(box) == 0
    assert sorted(box.ready_users()) == ["a", "b"]
    assert _texts(box, "a") == ["from a"] and _texts(box, "b") == ["from b"]


def test_a_move_that_fails_moves_nothing_and_the_next_one_moves_each_event_once(box):
    box.record(events(*[message_event(f"u{i}", "hi", mid=f"m.{i}") for i in range(3)]))
    box.store.ensure()

    def crash_before_the_mark(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO amp_meta"):
            raise RuntimeError("the process died before the mark was written")

    sa.event.listen(box.engine, "before_cursor_execute", crash_before_the_mark)
    try:
        with pytest.raises(Exception, match="before the mark"):
            box.settle()
    finally:
        sa.event.remove(box.engine, "before_cursor_execute", crash_before_the_mark)
    assert _in_inbox(box) == 0  # the events and the mark commit together, or neither
    assert box.settle() == 3
    assert box.settle() == 0
    assert _in_inbox(box) == 3
    assert sorted(box.ready_users()) == ["u0", "u1", "u2"]


def test_moved_rows_are_pruned_and_a_redelivery_after_that_is_not_handled_again(box):
    event = message_event("u", "hi", mid="m.1")
    box.record(events(event))
    assert _texts(box, "u") == ["hi"]
    box.record(events(message_event("v", "not yet moved", mid="m.2")))
    assert box.prune_journal() == 1  # the moved one; the other stays until it is moved
    with read_only(box.journal.engine) as conn:
        assert conn.execute(sa.text("SELECT user_id FROM amp_journal")).scalars().all() == ["v"]
    box.record(events(event))  # Facebook delivers the first one again
    assert _texts(box, "u") == []
    assert _texts(box, "v") == ["not yet moved"]
    assert box.stats()["done"] == 2 and box.stats()["received"] == 2


def test_a_journal_made_again_is_moved_from_its_first_row(box, url):
    box.record(events(message_event("u", "one", mid="m.1"), message_event("u", "two", mid="m.2")))
    box.settle()  # the mark is at 2
    with box.journal.engine.begin() as conn:  # the journal file lost and made anew: seq starts at 1
        for statement in ("DELETE FROM amp_journal", "DELETE FROM sqlite_sequence", "DELETE FROM amp_journal_id"):
            conn.execute(sa.text(statement))
    fresh = Inbox(Store(make_engine(url)), journal=True)  # (a process started since)
    fresh.record(events(message_event("u", "three", mid="m.3")))
    assert fresh.settle() == 1
    assert _texts(fresh, "u") == ["one", "two", "three"]


def test_without_the_journal_the_webhook_writes_to_the_inbox(url, tmp_path):
    box = Inbox(Store(make_engine(url)))  # the default
    box.record(events(message_event("u", "hi", mid="m.1")))
    assert box.journal is None and not (tmp_path / "bot.db-webhook").exists()
    assert _in_inbox(box) == 1


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:bot.db?uri=true"])
def test_databases_without_a_plain_file_have_no_journal(url):
    assert Inbox(Store(make_engine(url)), journal=True).journal is None
