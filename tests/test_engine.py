"""flask_ampalibe.engine.read_only on the server databases, seen from the server's own statement log.

The other tests of the engines (pools, SQLite's write queue, settings per database) are in
``test_storage.py``, which runs them on each backend.
"""
from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from flask_ampalibe import checkpoint
from flask_ampalibe.engine import PING_AFTER_IDLE, make_engine
from flask_ampalibe.events import parse_body
from flask_ampalibe.inbox import Inbox
from flask_ampalibe.storage import Store
from flask_ampalibe.testing import message_event, page_body

APP_NAME = "amp_read_only_test"


@contextmanager
def postgresql_statements(server) -> Iterator[Callable[[], list[str]]]:
    """The statements the server runs for connections named :data:`APP_NAME` from now on, read
    from its log (``log_statement = 'all'`` while the block runs)."""
    admin = server._admin()
    try:
        admin.execute("ALTER SYSTEM SET log_statement = 'all'")
        admin.execute("ALTER SYSTEM SET log_line_prefix = '[%a] '")
        admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)  # the server applies a reload asynchronously
        start = server.log_path.stat().st_size

        def statements() -> list[str]:
            time.sleep(0.2)
            with open(server.log_path, errors="replace") as fh:
                fh.seek(start)
                lines = fh.read().splitlines()
            found = []
            for line in lines:
                m = re.match(rf"\[{APP_NAME}\] LOG:\s+(?:statement|execute [^:]*): (.*)", line)
                if m:
                    found.append(m.group(1).strip())
            return found

        yield statements
    finally:
        admin.execute("ALTER SYSTEM RESET log_statement")
        admin.execute("ALTER SYSTEM RESET log_line_prefix")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()


@contextmanager
def mariadb_statements(engine, server) -> Iterator[Callable[[], list[str]]]:
    """The statements the server runs for ``engine``'s connections from now on, from its general
    log (on while the block runs).  The connections the block checks out of the pool are
    identified by their thread ids (the pool may hold more than one)."""
    import sqlalchemy as sa

    admin = server._admin()
    cur = admin.cursor()
    thread_ids: set[int] = set()

    def checked_out(dbapi_connection, record, proxy) -> None:
        thread_ids.add(dbapi_connection.thread_id())

    sa.event.listen(engine, "checkout", checked_out)
    try:
        cur.execute("SET GLOBAL log_output = 'TABLE'")
        cur.execute("SET GLOBAL general_log = 1")
        cur.execute("SELECT NOW(6)")
        (start,) = cur.fetchone()

        def statements() -> list[str]:
            if not thread_ids:
                return []
            marks = ", ".join(["%s"] * len(thread_ids))
            cur.execute(f"SELECT argument FROM mysql.general_log WHERE thread_id IN ({marks}) AND event_time >= %s "
                        "AND command_type = 'Query' ORDER BY event_time", (*sorted(thread_ids), start))
            return [a.decode() if isinstance(a, bytes) else a for (a,) in cur.fetchall()]

        yield statements
    finally:
        sa.event.remove(engine, "checkout", checked_out)
        cur.execute("SET GLOBAL general_log = 0")
        cur.execute("TRUNCATE TABLE mysql.general_log")
        admin.close()


def _kinds(statements: list[str]) -> list[str]:
    """The first word of each statement; the pool's pre-ping (``;`` on psycopg) left out."""
    return [s.split()[0].upper() for s in statements if s.strip(" ;")]


def test_postgresql_reads_run_without_begin_or_rollback(postgresql_server) -> None:
    postgresql_server.reset()  # no other test's events (the counts below start from none)
    # A URL of its own: a new engine whose connections carry the name the log is filtered on.
    store = Store(make_engine(postgresql_server.url + f"?application_name={APP_NAME}"))
    store.create_all()
    inbox = Inbox(store)
    store.set_temp("u1", "n", 41)
    with postgresql_statements(postgresql_server) as statements:
        assert store.get_temp("u1", "n") == 41
        assert inbox.stats()["received"] == 0
        reads = statements()
        store.set_temp("u1", "n", 42)
        writes = statements()[len(reads):]
    assert _kinds(reads) == ["SELECT", "SELECT", "SELECT"], reads  # autocommit: no BEGIN, no ROLLBACK
    assert _kinds(writes)[0] == "BEGIN" and _kinds(writes)[-1] == "COMMIT", writes  # writes keep theirs
    assert store.get_temp("u1", "n") == 42


def test_postgresql_webhook_write_is_one_statement_and_only_an_idle_connection_is_pinged(postgresql_server) -> None:
    postgresql_server.reset()  # no other test's events
    url = postgresql_server.url + f"?application_name={APP_NAME}"
    store = Store(make_engine(url))
    store.create_all()
    inbox = Inbox(store, webhook_engine=make_engine(url, webhook=True))  # as the app makes them

    def record(user: str, mid: str) -> None:
        inbox.record(parse_body(page_body(message_event(user, "hi", mid=mid))))

    record("u0", "m.0")  # the webhook engine's connection is made (and its first statements run)
    with postgresql_statements(postgresql_server) as statements:
        record("u1", "m.1")  # that connection sat idle while the log was set up
        record("u2", "m.2")  # right after
        first = statements()  # waits 0.2 s: idle past PING_AFTER_IDLE again
        assert PING_AFTER_IDLE < 0.2
        record("u1", "m.3")
        later = statements()[len(first):]
    # Autocommit and one statement each (inbox and lease rows): no BEGIN, no COMMIT.  Pinged only
    # after idling (psycopg's ping is an empty statement), not when used a moment ago.
    assert len(first) == 3 and not first[0].strip(" ;") and _kinds(first) == ["WITH", "WITH"], first
    assert len(later) == 2 and not later[0].strip(" ;") and _kinds(later) == ["WITH"], later
    stats = inbox.stats()
    assert stats["received"] == 4 and stats["pending"] == 4
    # The same statement wrote the lease rows: a user's lease is there to be claimed.
    assert [c.event.raw["message"]["mid"] for c in (inbox.take(u, "w", 30) for u in ("u1", "u2"))] == ["m.1", "m.2"]
    postgresql_server.reset()


def test_mariadb_reads_end_with_one_rollback(mariadb_server) -> None:
    # PyMySQL starts no transaction with a statement of its own; a read costs one ROLLBACK, which
    # is cheaper than switching a pooled connection to autocommit and back (four statements).
    store = Store(make_engine(mariadb_server.url))
    store.create_all()
    store.set_temp("u1", "n", 41)
    with mariadb_statements(store.engine, mariadb_server) as statements:
        assert store.get_temp("u1", "n") == 41
        reads = statements()
    assert _kinds(reads) == ["SELECT", "ROLLBACK"], reads


def test_sqlite_checkpoints_run_in_a_thread_of_their_own_not_in_a_writers_commit(tmp_path) -> None:
    # A commit that grows the WAL past SQLite's mark would copy it back into the file (and fsync)
    # while holding the write lock every writer waits for; the library's connections leave that
    # to a checkpoint thread, which copies the pages back on its own soon after the commit.
    path = tmp_path / "checkpoints.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
            conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (zeroblob(2000000))")  # ~490 pages, in the WAL
        deadline = time.monotonic() + 30
        while path.stat().st_size < 2_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size >= 2_000_000, "the WAL was never checkpointed into the database file"
    finally:
        engine.dispose()


@pytest.mark.parametrize("pause", [0.001, 0.0], ids=["paced", "back_to_back"])
def test_sqlite_log_is_emptied_under_steady_writes_and_keeps_every_row(tmp_path, monkeypatch, pause) -> None:
    # Passive checkpoints never start the log over while writers keep adding to it: the -wal file
    # would grow for as long as the writes last.  Past the limit the checkpoint thread holds the
    # writers a moment and empties it, also between writers that follow each other back to back.
    monkeypatch.setattr(checkpoint, "WAL_LIMIT", 1_000_000)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_EVERY", 0.05)
    path = tmp_path / "steady.db"
    wal = Path(f"{path}-wal")
    engine = make_engine(f"sqlite:///{path}")
    stop = threading.Event()
    rows = [0, 0]  # written by each thread

    def write(n: int) -> None:
        while not stop.is_set():
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (?, zeroblob(8000))", (n,))
            rows[n] += 1
            time.sleep(pause)

    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (n INTEGER, x BLOB)")
        writers = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for thread in writers:
            thread.start()
        sizes, until = [], time.monotonic() + 3  # a few turns of the checkpoint thread, whatever its last sleep
        while (time.monotonic() < until or sum(rows) < 2_000) and time.monotonic() < until + 60:
            time.sleep(0.02)  # 16 MB or more through the log
            sizes.append(wal.stat().st_size if wal.exists() else 0)
        stop.set()
        for thread in writers:
            thread.join(30)
        assert sum(rows) >= 2_000
        # Emptied again and again, in the second half of the run too (how large the log grows between
        # two emptyings depends on how much CPU the checkpoint thread gets beside the writers: under
        # a loaded CI machine it once reached 90 MB of the 150 written; a log that is never emptied
        # again grows until the writers stop).
        late = sizes[len(sizes) // 2:]
        emptied = [sum(1 for before, after in zip(part, part[1:]) if after < before / 2) for part in (sizes, late)]
        told = f"the log was emptied {emptied[0]} times ({emptied[1]} in the run's second half), up to {max(sizes):,} bytes"
        assert emptied[0] >= 2 and emptied[1] >= 1, told
        with engine.connect() as conn:
            counts = dict(conn.exec_driver_sql("SELECT n, count(*) FROM t GROUP BY n").all())
        assert counts == {0: rows[0], 1: rows[1]}
    finally:
        stop.set()
        engine.dispose()


def test_sqlite_log_a_reader_keeps_busy_is_tried_again_after_a_pause(tmp_path, monkeypatch, caplog) -> None:
    # A reader's snapshot keeps the log from being emptied.  Each try holds every writer up to
    # 100 ms, so the checkpoint thread waits TRUNCATE_RETRY before the next one instead of
    # trying at each of its turns; once the reader is done, the log is emptied.
    monkeypatch.setattr(checkpoint, "WAL_LIMIT", 100_000)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_EVERY", 0.05)
    monkeypatch.setattr(checkpoint, "TRUNCATE_RETRY", 1.0)
    caplog.set_level(logging.DEBUG, logger="flask_ampalibe.checkpoint")
    path = tmp_path / "read.db"
    wal = Path(f"{path}-wal")
    engine = make_engine(f"sqlite:///{path}")
    reader = sqlite3.connect(str(path), isolation_level=None)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()  # a snapshot the log must keep
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (zeroblob(8000))")
            time.sleep(0.01)
        tries = [r for r in caplog.records if "could not empty the log" in r.getMessage() and "read.db" in r.getMessage()]
        # One try per second of it (every 0.05 s turn would be 15 or more).
        assert 1 <= len(tries) <= 4, f"{len(tries)} tries to empty the log in 2.5 s"
        assert wal.stat().st_size > 100_000  # still over the limit: nothing else emptied it
        reader.execute("COMMIT")
        deadline = time.monotonic() + 20
        while wal.stat().st_size > 100_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wal.stat().st_size <= 100_000, "the log was not emptied once the reader was done"
    finally:
        reader.close()
        engine.dispose()
