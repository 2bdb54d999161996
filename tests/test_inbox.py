"""The durable inbox on SQLite, MariaDB and PostgreSQL (every test runs on each backend).

Recording and deduplication, per-user leases (exclusive across threads), timestamp order,
failures and replays, purging, stats; and a webhook handled normally after the database
server restarted under a running app.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import threading
import time

import pytest
import sqlalchemy as sa
from flask import Flask

import flask_ampalibe
from flask_ampalibe.events import parse_body
from flask_ampalibe.inbox import Inbox
from flask_ampalibe.engine import background_writes, make_engine, writers_waiting
from flask_ampalibe.storage import Store
from flask_ampalibe.testing import WebhookClient, message_event, page_body, read_event
from conftest import SECRET, FakeClock


@pytest.fixture
def box(database_url):
    inbox = Inbox(Store(make_engine(database_url)))
    yield inbox
    inbox.engine.dispose()


def events(*items):
    return parse_body(page_body(*items))


def test_record_ignores_redeliveries_and_events_without_mid(box):
    first = events(message_event("u1", "a", mid="m.1"), read_event("u1", watermark=5, timestamp=9))
    assert box.record(first) == ["u1"]
    box.record(first)
    box.record(events(message_event("u1", "a", mid="m.1")))
    assert box.stats()["pending"] == 2 and box.stats()["received"] == 2


def test_events_come_out_oldest_first_and_one_holder_at_a_time(box):
    box.record(events(message_event("u", "late", timestamp=3000), message_event("u", "early", timestamp=1000)))
    box.record(events(message_event("u", "middle", timestamp=2000)))
    first = box.take("u", "w1", 30)
    assert first.event.raw["message"]["text"] == "early" and not first.redelivered
    assert box.take("u", "w2", 30) is None  # w1 holds the user
    second = box.next_event("u", "w1", 30, finished=first)
    third = box.next_event("u", "w1", 30, finished=second)
    assert [c.event.raw["message"]["text"] for c in (second, third)] == ["middle", "late"]
    assert box.next_event("u", "w1", 30, finished=third) is None  # done: the lease is free again
    assert box.stats()["done"] == 3
    box.record(events(message_event("u", "next")))
    assert box.take("u", "w2", 30).event.raw["message"]["text"] == "next"


def test_only_one_of_many_threads_claims_a_user(box):
    box.record(events(message_event("solo", "x")))
    box.store.ensure()
    winners, barrier = [], threading.Barrier(8)

    def grab(i):
        barrier.wait()
        if box.claim("solo", f"w{i}", 30):
            winners.append(i)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_an_expired_lease_is_taken_over_and_the_event_redelivered(box):
    box.clock = clock = FakeClock()
    box.record(events(message_event("u", "x")))
    assert box.take("u", "dead", 30) is not None  # started, then the worker died
    clock.advance(29.9)
    assert box.ready_users() == []  # the lease still holds
    assert box.take("u", "alive", 30) is None
    clock.advance(0.2)
    assert box.ready_users() == ["u"]
    again = box.take("u", "alive", 30)
    assert again is not None and again.redelivered and again.attempts == 2
    assert box.next_event("u", "dead", 30) is None  # the old holder lost it


def test_failures_are_kept_then_replayed(box):
    box.record(events(message_event("u", "x")))
    claimed = box.take("u", "w", 30)
    assert box.next_event("u", "w", 30, finished=claimed, error=RuntimeError("kaput 😀")) is None
    (failed,) = box.failed()
    assert "kaput 😀" in failed["error"] and box.stats()["failed"] == 1
    assert box.replay(failed["id"]) == ["u"]
    assert box.take("u", "w", 30).event.raw["message"]["text"] == "x"


def test_purge_removes_only_old_handled_events(box):
    box.record(events(message_event("u", "done"), message_event("v", "pending")))
    claimed = box.take("u", "w", 30)
    box.next_event("u", "w", 30, finished=claimed)
    assert box.purge(3600) == 0
    assert box.purge(-1) == 1
    assert box.stats()["pending"] == 1
    box.record(events(message_event("u", "done")))  # purged: outside the deduplication window now
    assert box.stats()["pending"] == 2


def test_unicode_event_bodies_round_trip(box):
    text = "😀 مرحبا 𝄞 👩🏽‍💻"
    box.record(events(message_event("u", text)))
    assert box.take("u", "w", 30).event.raw["message"]["text"] == text


@pytest.mark.parametrize("server_name", ["mariadb", "postgresql"])
def test_the_next_webhook_is_handled_after_the_server_restarted(request, server_name, tmp_path, graph):
    server = request.getfixturevalue(f"{server_name}_server")
    server.reset()  # a clean database on that server
    app = Flask(f"restart_{server_name}", instance_path=str(tmp_path / "i"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="inline", AMPALIBE_DATABASE_URL=server.url)
    router = flask_ampalibe.Router()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        query = app.extensions["ampalibe"].query
        query.set_temp(sender_id, "n", (query.get_temp(sender_id, "n") or 0) + 1)
        app.extensions["ampalibe"].chat.send_message(sender_id, f"{cmd} {query.get_temp(sender_id, 'n')}")

    flask_ampalibe.Ampalibe(app, router=router)
    hook = WebhookClient(app.test_client(), SECRET)
    assert hook.send_text("u", "before").status_code == 200
    server.restart()
    assert hook.send_text("u", "after").status_code == 200
    assert graph.sent_texts("u") == ["before 1", "after 2"]
    make_engine(server.url).dispose()


@pytest.mark.parametrize("bad_user", ["u\x00nul", "u\ud800"])
def test_an_event_the_database_refuses_is_kept_as_rejected_and_the_rest_recorded(box, bad_user):
    # The webhook's validation refuses such ids first; this is the net under it.
    good, bad = events(message_event("u", "good"), message_event("u", "bad"))
    bad.sender_id = bad_user
    assert box.record([good, bad]) in (["u"], ["u", bad_user])
    stats = box.stats()
    assert stats["received"] == 2 and stats["pending"] + stats["rejected"] == 2
    if stats["rejected"]:
        (row,) = box.rejected()
        assert row["user_id"] == "" and "The database refused this item" in row["error"]
        assert row["body"].isascii()
    assert box.take("u", "w", 30).event.raw["message"]["text"] == "good"


# -- group commit: concurrent webhook requests share a transaction ------------------------------------
def _count_inserts(engine, table="amp_inbox", delay=0.0):
    """Count the INSERTs into ``table`` (each executemany counts once); optionally make each slower."""
    count = [0]

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()}"):
            count[0] += 1
            if delay:
                time.sleep(delay)  # a slow disk or network: requests arrive while a write is in progress

    sa.event.listen(engine, "before_cursor_execute", before)
    return count, lambda: sa.event.remove(engine, "before_cursor_execute", before)


def test_concurrent_webhook_posts_share_commits_and_are_handled_once_in_order(database_url, tmp_path, graph):
    app = Flask("group_commit", instance_path=str(tmp_path / "i"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="thread", AMPALIBE_DATABASE_URL=database_url)
    router = flask_ampalibe.Router()
    seen: dict[str, list[str]] = {}
    lock = threading.Lock()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        with lock:
            seen.setdefault(sender_id, []).append(cmd)

    flask_ampalibe.Ampalibe(app, router=router)
    state = app.extensions["ampalibe"]
    state.store.create_all()
    inserts, stop_counting = _count_inserts(state.store.engine, delay=0.005)
    senders, per_user = 32, 8
    statuses: list[int] = []

    def send(n):
        # One user per thread, each message once and then again (a redelivery, same mid): the
        # copy may land in the same shared write as the original, or in a later one.
        hook = WebhookClient(app.test_client(), SECRET)
        for i in range(per_user):
            item = message_event(f"u{n}", f"m{i}", mid=f"mid.{n}.{i}", timestamp=1000 + i)
            statuses.append(hook.post(item).status_code)
            statuses.append(hook.post(item).status_code)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop_counting()
    try:
        posts = senders * per_user * 2
        assert len(statuses) == posts and set(statuses) == {200}
        assert inserts[0] < posts // 2, "concurrent posts should share transactions"
        assert state.inbox.group_commit.shared_writes > 0
        deadline = time.monotonic() + 60
        while state.inbox.stats()["done"] < senders * per_user and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = state.inbox.stats()
        assert stats["received"] == stats["done"] == senders * per_user and stats["failed"] == 0
        assert seen == {f"u{n}": [f"m{i}" for i in range(per_user)] for n in range(senders)}
    finally:
        state.executor.shutdown(timeout=10)
        state.store.engine.dispose()


def test_a_request_the_database_refuses_does_not_fail_the_others_sharing_its_write(box):
    box.store.ensure()
    engine = box.engine
    first_in, release = threading.Event(), threading.Event()

    def hold_first(conn, cursor, statement, parameters, context, executemany):
        # (On PostgreSQL the webhook's write is one statement that starts with a WITH clause.)
        if "INSERT INTO AMP_INBOX" in statement.upper() and not first_in.is_set():
            first_in.set()
            release.wait(30)  # the first request's write is in progress while the others queue

    sa.event.listen(engine, "before_cursor_execute", hold_first)
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def record(name, *evs):
        try:
            results[name] = box.record(list(evs))
        except BaseException as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    good = [events(message_event(f"g{n}", "hello", mid=f"g.{n}")) for n in range(4)]
    bad_ok, bad = events(message_event("b", "fine", mid="b.1"), message_event("b", "refused", mid="b.2"))
    bad.sender_id = "b\ud800"  # no database stores a lone surrogate: the shared write fails
    first = threading.Thread(target=record, args=("g0", *good[0]))
    first.start()
    assert first_in.wait(30)
    others = [threading.Thread(target=record, args=(f"g{n}", *good[n])) for n in (1, 2)]
    others.append(threading.Thread(target=record, args=("b", bad_ok, bad)))
    others.append(threading.Thread(target=record, args=("g3", *good[3])))
    for t in others:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while box.group_commit.queued < len(others) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert box.group_commit.queued == len(others)
    finally:
        release.set()
        for t in [first, *others]:
            t.join(30)
        sa.event.remove(engine, "before_cursor_execute", hold_first)
    assert not errors
    assert box.group_commit.shared_writes == 1  # the four queued requests went out together, and failed
    assert {name: users for name, users in results.items() if name != "b"} == {f"g{n}": [f"g{n}"] for n in range(4)}
    assert results["b"] == ["b"]
    stats = box.stats()
    assert stats["pending"] == 5 and stats["received"] == 6  # the refused item is kept as rejected
    for n in range(4):
        assert box.take(f"g{n}", "w", 30).event.raw["message"]["text"] == "hello"


def test_a_lone_request_writes_at_once_without_sharing(box):
    for n in range(3):
        assert box.record(events(message_event("u", f"m{n}", mid=f"m.{n}"))) == ["u"]
    assert box.group_commit.writes == 3 and box.group_commit.shared_writes == 0


def test_on_postgresql_the_ack_looks_events_up_by_key_instead_of_reading_the_inbox(postgresql_server):
    # psycopg prepares a statement after its fifth run, and PostgreSQL then plans it once for any
    # parameters, with the statistics of that moment: on a new database those of an empty, never
    # analysed inbox.  The webhook's duplicate check must stay a look-up of each event's key; read as
    # a join, it read the whole inbox at every ack, more of it the longer the bot ran.
    postgresql_server.reset()
    watcher = sa.create_engine(postgresql_server.url, poolclass=sa.pool.NullPool)

    def scans():  # a server process reports its table statistics when its connection closes
        with watcher.connect() as conn:
            seq, index = conn.execute(sa.text(
                "SELECT seq_scan, idx_scan FROM pg_stat_user_tables WHERE relname = 'amp_inbox'")).one()
        return seq or 0, index or 0

    def settled(done=lambda seen: True):
        seen, deadline = [scans()], time.monotonic() + 20
        while not (done(seen[-1]) and seen[-3:] == [seen[-1]] * 3) and time.monotonic() < deadline:
            time.sleep(0.3)
            seen.append(scans())
        return seen[-1]

    schema = make_engine(postgresql_server.url)
    Store(schema).ensure()  # its set-up reads the (empty) tables
    schema.dispose()
    seq_before, index_before = settled()
    engine = make_engine(postgresql_server.url)
    box = Inbox(Store(engine))
    requests = 40
    for n in range(requests):
        box.record(events(message_event(f"u{n % 4}", "hi", mid=f"seq.{n}", timestamp=1000 + n)))
    engine.dispose()
    seq_after, index_after = settled(lambda seen: sum(seen) >= seq_before + index_before + requests)
    watcher.dispose()
    assert index_after - index_before >= requests, "the webhook's statistics never arrived"
    assert seq_after == seq_before, f"{seq_after - seq_before} of {requests} acks read the whole inbox"


# -- several of a user's events read at once ------------------------------------------------------------
def _texts(claimed_list):
    return [c.event.raw["message"]["text"] for c in claimed_list]


def _drain(box, user, owner, first):
    got, claimed = [first], box.next_event(user, owner, 30, finished=first)
    while claimed is not None:
        got.append(claimed)
        claimed = box.next_event(user, owner, 30, finished=claimed)
    return got


def test_a_burst_is_read_from_the_inbox_twice_not_once_per_event(box):
    box.record(events(*[message_event("u", f"m{i}", mid=f"m.{i}", timestamp=1000 + i) for i in range(10)]))
    reads = [0]

    def count(conn, cursor, statement, parameters, context, executemany):
        if "FROM amp_inbox" in statement and "ORDER BY" in statement:
            reads[0] += 1

    sa.event.listen(box.engine, "before_cursor_execute", count)
    try:
        got = _drain(box, "u", "w", box.take("u", "w", 30))
    finally:
        sa.event.remove(box.engine, "before_cursor_execute", count)
    assert _texts(got) == [f"m{i}" for i in range(10)]
    assert reads[0] == 2  # the first event, then the nine others at once (it was one per event)
    assert box.stats()["done"] == 10 and box.claim("u", "other", 30)  # and the lease is free


def test_on_sqlite_finishing_an_event_and_taking_the_next_step_is_one_transaction(box, database_url):
    # One turn of SQLite's write lock per handled event, not two; server databases commit the
    # outcome first (a deadlock there would roll back the outcome with the step).
    box.record(events(message_event("u", "a", mid="m.a", timestamp=1000), message_event("u", "b", mid="m.b",
                                                                                            timestamp=2000)))
    transactions = [0]

    def begin(conn):
        transactions[0] += 1

    first = box.take("u", "w", 30)
    sa.event.listen(box.engine, "begin", begin)
    try:
        second = box.next_event("u", "w", 30, finished=first)
        assert second is not None and second.event.raw["message"]["text"] == "b"
        assert box.next_event("u", "w", 30, finished=second) is None  # the last: the lease is given back
    finally:
        sa.event.remove(box.engine, "begin", begin)
    assert transactions[0] == (2 if database_url.startswith("sqlite") else 4)
    assert box.stats()["done"] == 2 and box.claim("u", "other", 30)


def test_on_sqlite_the_last_events_step_is_one_statement_and_its_failure_keeps_the_outcome(box, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("server databases commit the outcome first, in a transaction of its own")
    box.record(events(message_event("u", "a", mid="m.a")))
    first = box.take("u", "w", 30)
    seen: list[str] = []

    def watch(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement.split()[0].upper())

    sa.event.listen(box.engine, "before_cursor_execute", watch)
    try:
        assert box.next_event("u", "w", 30, finished=first) is None
    finally:
        sa.event.remove(box.engine, "before_cursor_execute", watch)
    # The outcome, then the lease given back: no SAVEPOINT / RELEASE around a single statement.
    assert seen == ["UPDATE", "UPDATE"], seen
    assert box.stats()["done"] == 1 and box.claim("u", "other", 30)
    box.release("u", "other")

    box.record(events(message_event("u", "b", mid="m.b")))
    second = box.take("u", "w", 30)

    def fail_release(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE amp_lease SET owner"):
            raise sa.exc.OperationalError(statement, parameters, Exception("disk I/O error"))

    sa.event.listen(box.engine, "before_cursor_execute", fail_release)
    try:
        with pytest.raises(sa.exc.OperationalError):
            box.next_event("u", "w", 30, finished=second)
    finally:
        sa.event.remove(box.engine, "before_cursor_execute", fail_release)
    assert box.stats()["done"] == 2  # the outcome was committed all the same: no reply sent twice
    assert not box.claim("u", "other", 30)  # the lease is still held (it expires, or is released)
    box.release("u", "w")
    assert box.claim("u", "other", 30)


def test_an_earlier_event_recorded_during_a_burst_comes_before_the_rest(box):
    box.record(events(*[message_event("u", f"m{i}", mid=f"m.{i}", timestamp=1000 + 10 * i) for i in range(5)]))
    first = box.take("u", "w", 30)
    second = box.next_event("u", "w", 30, finished=first)  # m1, with m2..m4 read ahead
    box.record(events(message_event("u", "late", mid="m.late", timestamp=1015)))  # before m2
    assert _texts(_drain(box, "u", "w", second)) == ["m1", "late", "m2", "m3", "m4"]


def test_events_read_ahead_by_a_worker_that_died_are_not_counted_as_attempts(box):
    box.clock = clock = FakeClock()
    box.record(events(*[message_event("u", f"m{i}", mid=f"m.{i}", timestamp=1000 + i) for i in range(4)]))
    first = box.take("u", "dead", 30)
    second = box.next_event("u", "dead", 30, finished=first)  # m1 started, m2 and m3 read ahead
    assert _texts([second]) == ["m1"]
    clock.advance(31)  # the worker died while handling m1
    assert box.ready_users() == ["u"]
    got = _drain(box, "u", "w2", box.take("u", "w2", 30))
    assert [(text, c.attempts) for text, c in zip(_texts(got), got)] == [("m1", 2), ("m2", 1), ("m3", 1)]
    assert box.stats()["done"] == 4


def test_events_read_ahead_are_not_started_on_a_lease_about_to_lapse(box):
    box.clock = clock = FakeClock()
    box.record(events(*[message_event("u", f"m{i}", mid=f"m.{i}", timestamp=1000 + i) for i in range(4)]))
    first = box.take("u", "w", 30)
    second = box.next_event("u", "w", 30, finished=first)  # the lease runs to +30 s
    clock.advance(20)  # nothing renewed it (no sweeper here): under half its time is left
    third = box.next_event("u", "w", 30, finished=second)
    assert _texts([third]) == ["m2"]
    clock.advance(15)  # +35 s: only alive because that step renewed it
    assert box.ready_users() == [] and box.take("u", "other", 30) is None


# -- the executor's steps of concurrent threads share a transaction ------------------------------------
def _steps_queued_behind_a_write(box, steps, first_user=""):
    """Run ``steps`` (callables) in threads while a write transaction holds SQLite (on a server
    database: the lease row of ``first_user``, the first step's user): the first thread's step
    waits for it alone, the others queue behind it; return their results by index."""
    results, errors = {}, []

    def run(n, step):
        try:
            results[n] = step()
        except BaseException as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, step)) for n, step in enumerate(steps)]
    commit = box.step_commit
    writes = commit.writes
    with box.engine.begin() as conn:  # holds the write lock: the first step waits for it
        conn.execute(sa.text("UPDATE amp_lease SET expires_at = expires_at WHERE user_id = :u"), {"u": first_user})
        threads[0].start()
        deadline = time.monotonic() + 30
        while commit.writes == writes and time.monotonic() < deadline:
            time.sleep(0.01)
        for t in threads[1:]:
            t.start()
        while commit.queued < len(threads) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert commit.queued == len(threads) - 1
    for t in threads:
        t.join(30)
    assert not errors
    return [results[n] for n in range(len(steps))]


def test_concurrent_steps_share_one_transaction(box, database_url):
    # SQLite: one turn of its write lock for several steps; server databases: one BEGIN and one
    # COMMIT for several steps, whose rows are locked in the order of their users (two workers'
    # transactions never wait for each other in a cycle), whatever order the threads came in.
    users = [f"s{n}" for n in range(5)]
    box.record(events(*[message_event(u, "first", mid=f"{u}.1", timestamp=1000) for u in users],
                      *[message_event(u, "second", mid=f"{u}.2", timestamp=2000) for u in users[:3]]))
    shared, commits = box.step_commit.shared_writes, []

    def committed(conn):
        commits.append(conn)

    sa.event.listen(box.engine, "commit", committed)
    taken = _steps_queued_behind_a_write(box, [lambda u=u: box.take(u, "w", 30) for u in users], users[0])
    assert box.step_commit.shared_writes == shared + 1  # the four queued takes went out together
    assert len(commits) == 3  # the test's own transaction, the first take alone, then the four others
    del commits[:]
    assert [c.event.raw["message"]["text"] for c in taken] == ["first"] * 5
    for n, u in enumerate(users):
        box.store.set_temp(u, "n", n)  # buffered in the event's unit: written with its outcome
    renewed: list[str] = []

    def watch(conn, cursor, statement, parameters, context, executemany):
        bound = context.compiled_parameters[0] if context.compiled_parameters else {}
        if statement.startswith("UPDATE amp_lease") and "uid" in bound:
            renewed.append(bound["uid"])

    sa.event.listen(box.engine, "before_cursor_execute", watch)
    try:
        order = [4, 0, 3, 2, 1]  # the first step alone, then the others queued in no particular order
        nxt = _steps_queued_behind_a_write(box, [lambda c=taken[n], u=users[n]: box.next_event(u, "w", 30, finished=c)
                                                 for n in order], users[4])
    finally:
        sa.event.remove(box.engine, "before_cursor_execute", watch)
        sa.event.remove(box.engine, "commit", committed)
    nxt = [nxt[order.index(n)] for n in range(5)]
    assert box.step_commit.shared_writes == shared + 2
    shared_part = list(dict.fromkeys(u for u in renewed if u != "s4"))
    if database_url.startswith("sqlite"):  # one writer at a time: no row locks, any order
        assert sorted(shared_part) == users[:4], renewed
    else:
        assert shared_part == users[:4], renewed
    # The test's transaction, the first step alone (on server databases its outcome committed
    # first, then its step), then the four others.
    assert len(commits) == (3 if database_url.startswith("sqlite") else 4), len(commits)
    assert [c and c.event.raw["message"]["text"] for c in nxt] == ["second"] * 3 + [None] * 2
    assert [box.store.get_temp(u, "n") for u in users] == list(range(5))  # committed with the outcomes
    assert box.stats()["done"] == 5 and box.stats()["running"] == 3
    assert not box.claim("s0", "other", 30) and box.claim("s4", "other", 30)  # held while running, else free


def test_the_webhook_does_not_wait_for_an_executor_transaction_on_the_same_user(box, database_url):
    # A shared steps' transaction updates the lease rows (and event rows) of its users until it
    # commits; their new events are recorded meanwhile, without waiting for it: the ack's
    # duplicate checks skip rows that exist instead of waiting to see whether they change.
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer at a time: every write waits for the one in progress")
    box.record(events(message_event("w", "first", mid="w.1", timestamp=1000)))
    assert box.take("w", "worker", 30) is not None
    later = [message_event("w", "second", mid="w.2", timestamp=2000)]
    if database_url.startswith("postgresql"):  # a redelivery of the running event too
        later.append(message_event("w", "first", mid="w.1", timestamp=1000))
    done = threading.Event()
    recorder = threading.Thread(target=lambda: (box.record(events(*later)), done.set()))
    with box.engine.begin() as conn:  # as an executor's transaction holds them
        conn.execute(sa.text("UPDATE amp_lease SET expires_at = expires_at WHERE user_id = 'w'"))
        conn.execute(sa.text("UPDATE amp_inbox SET attempts = attempts WHERE user_id = 'w'"))
        recorder.start()
        recorded_meanwhile = done.wait(20)
    recorder.join(30)
    assert recorded_meanwhile, "the webhook's write waited for the executor's transaction"
    assert box.stats()["pending"] == 1 and box.stats()["running"] == 1


def test_a_refused_step_in_a_shared_transaction_fails_alone(box, database_url):
    users = ["g0", "g1", "bad", "g2"]
    box.record(events(*[message_event(u, "hello", mid=f"{u}.1") for u in users]))
    taken = [box.take(u, "w", 30) for u in users]
    for u in users:
        box.store.set_temp(u, "seen", True)
    box.store.set_temp("bad", "key \ud800", 1)  # no database stores a lone surrogate: the shared write fails
    shared = box.step_commit.shared_writes
    nxt = _steps_queued_behind_a_write(box, [lambda c=c, u=u: box.next_event(u, "w", 30, finished=c)
                                             for u, c in zip(users, taken)], users[0])
    assert box.step_commit.shared_writes == shared + 1 and nxt == [None] * 4
    # Written again one by one: the refused event failed without its state changes, the others are done.
    assert [box.store.get_temp(u, "seen") for u in users] == [True, True, None, True]
    failed = box.failed()
    assert [f["user_id"] for f in failed] == ["bad"] and "UnicodeEncodeError" in failed[0]["error"]
    assert box.stats()["done"] == 3 and all(box.claim(u, "other", 30) for u in users)


def _in_background(step, *args):
    """``step(*args)`` as the executor runs it: its writes let the webhook's go first."""
    with background_writes():
        return step(*args)


def test_on_sqlite_shared_steps_let_a_waiting_webhook_write_in_between(box, database_url):
    # A shared transaction commits as soon as the webhook waits: its write goes between two
    # takes, and the remaining takes go on after it, in a new transaction.  (Without the
    # webhook's journal, the default: with it, the webhook's writes never wait for the steps.)
    if not database_url.startswith("sqlite"):
        pytest.skip("server databases lock rows, not the file: each step has its own transaction")
    users = ["t0", "t1", "t2", "t3"]
    box.record(events(*[message_event(u, "hi", mid=f"{u}.1") for u in users]))
    order: list[str] = []
    recorder: list[threading.Thread] = []

    def watch(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT") and "amp_inbox" in statement:
            order.append("webhook")
        elif statement.startswith("UPDATE amp_inbox SET status") and "RETURNING" in statement:
            order.append("start")
            if order.count("start") == 2 and not recorder:  # the first of the queued takes
                thread = threading.Thread(target=box.record, args=(events(message_event("new", "x", mid="new.1")),))
                recorder.append(thread)
                thread.start()
                deadline = time.monotonic() + 10
                while not writers_waiting(conn) and time.monotonic() < deadline:
                    time.sleep(0.005)

    sa.event.listen(box.engine, "before_cursor_execute", watch)
    try:
        taken = _steps_queued_behind_a_write(box, [lambda u=u: _in_background(box.take, u, "w", 30) for u in users])
    finally:
        sa.event.remove(box.engine, "before_cursor_execute", watch)
    recorder[0].join(10)
    assert [c.event.raw["message"]["text"] for c in taken] == ["hi"] * 4
    assert order == ["start", "start", "webhook", "start", "start"], order
    assert box.ready_users() == ["new"]


def test_on_sqlite_shared_steps_keep_their_turn_while_another_workers_executor_waits(box, database_url):
    # Another process's executor (a background writer) waiting does not split the shared
    # transaction: it waits for the batch, one turn of the lock instead of one per step.
    if not database_url.startswith("sqlite") or sys.platform == "win32":
        pytest.skip("SQLite's write lock shared by processes (POSIX record locks)")
    users = ["k0", "k1", "k2", "k3"]
    box.record(events(*[message_event(u, "hi", mid=f"{u}.1") for u in users]))
    order: list[str] = []
    other: list[subprocess.Popen] = []
    child = textwrap.dedent("""
        import sys
        from flask_ampalibe.engine import background_writes, make_engine
        with background_writes(), make_engine(f"sqlite:///{sys.argv[1]}").begin() as conn:
            conn.exec_driver_sql("UPDATE amp_lease SET expires_at = expires_at WHERE user_id = ''")
    """)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(flask_ampalibe.__file__))}

    def watch(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE amp_inbox SET status") and "RETURNING" in statement:
            order.append("start")
            if order.count("start") == 2 and not other:  # the first of the queued takes
                other.append(subprocess.Popen([sys.executable, "-c", child, box.engine.url.database], env=env))
                deadline = time.monotonic() + 30
                while not writers_waiting(conn) and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert writers_waiting(conn), "the other process never waited for the write lock"

    def committed(conn):
        order.append("commit")

    sa.event.listen(box.engine, "before_cursor_execute", watch)
    sa.event.listen(box.engine, "commit", committed)
    try:
        taken = _steps_queued_behind_a_write(box, [lambda u=u: _in_background(box.take, u, "w", 30) for u in users])
    finally:
        sa.event.remove(box.engine, "before_cursor_execute", watch)
        sa.event.remove(box.engine, "commit", committed)
        for proc in other:
            if proc.wait(30) != 0:
                proc.kill()
    assert [c.event.raw["message"]["text"] for c in taken] == ["hi"] * 4
    assert other and other[0].returncode == 0
    assert order == ["commit", "start", "commit", "start", "start", "start", "commit"], order
