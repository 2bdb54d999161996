"""flask_ampalibe.storage on SQLite, MariaDB and PostgreSQL (every test runs on each).

The server backends are real throwaway servers from ``tests/dbservers.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_ampalibe import engine as engines, schema, storage, tables, writequeue
from flask_ampalibe.errors import ConfigurationError
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store

ROOT = Path(__file__).resolve().parent.parent

UNICODE = {
    "emoji": "😀🎉",
    "rtl": "مرحبا بالعالم — שלום עולם",
    "astral": "𝄞 𠜎 𐍈",  # 4-byte UTF-8 outside emoji blocks
    "zwj": "👩🏽‍💻👨‍👩‍👧",
    "combining": "e\u0301 n\u0303",
    "mixed": "Salut 😀 مرحبا 𝄞 !",
}


@pytest.fixture
def store(database_url):
    engine = make_engine(database_url)
    store = Store(engine)
    store.create_all()
    yield store
    engine.dispose()


def run_threads(count: int, target, timeout: float = 120.0) -> None:
    """Run ``target(index)`` in ``count`` threads started together; re-raise the first error."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def wrapper(index: int) -> None:
        try:
            barrier.wait(timeout)
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapper, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "threads still running (deadlock?)"
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- schema


def test_create_all_is_idempotent_and_records_the_schema_revision(store):
    Store(store.engine).create_all()  # a second app / worker on the same database
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"amp_user", "amp_temp", "amp_page", "amp_inbox", "amp_lease", "amp_job", "amp_meta"} <= names
    assert "alembic_version" not in names  # ours has its own name: a bot's own Alembic never meets it
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT version_num FROM {schema.VERSION_TABLE}")).all()
    assert [r.version_num for r in rows] == [schema.head()]


def test_create_all_races_safely(database_url):
    engine = make_engine(database_url)
    try:
        run_threads(6, lambda i: Store(engine).create_all())
        assert "amp_user" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_hot_paths_are_indexed(store):
    inspector = sa.inspect(store.engine)
    user_unique = [tuple(u["column_names"]) for u in inspector.get_unique_constraints("amp_user")]
    user_unique += [tuple(i["column_names"]) for i in inspector.get_indexes("amp_user") if i["unique"]]
    assert ("user_id",) in user_unique
    inbox_indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("amp_inbox")}
    assert any(cols[0] == "user_id" for cols in inbox_indexed)
    assert any(cols[0] == "status" for cols in inbox_indexed)


# --------------------------------------------------------------------------- actions


def test_unknown_user(store):
    assert store.get_user("nobody") == (None, {}, None)


def test_set_get_and_clear_action(store):
    store.set_action("u1", "/get_name")
    assert store.get_user("u1") == ("/get_name", {}, None)
    store.set_action("u1", "/get_age", {"name": "Rakoto", "step": 2})
    assert store.get_user("u1") == ("/get_age", {"name": "Rakoto", "step": 2}, None)
    store.set_action("u1", None)
    assert store.get_user("u1") == (None, {}, None)


def test_touch_user_creates_the_row_and_returns_the_state(store):
    assert store.touch_user("u1") == (None, {}, None)
    store.set_action("u1", "/next", {"a": 1})
    assert store.touch_user("u1") == ("/next", {"a": 1}, None)
    with store.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(tables.users)).scalar()
        last_use = conn.execute(sa.select(tables.users.c.last_use)).scalar()
    assert count == 1
    assert last_use is not None


def test_actions_of_users_are_independent(store):
    store.set_action("u1", "/a")
    store.set_action("u2", "/b", {"x": 1})
    store.set_action("u1", None)
    assert store.get_user("u1") == (None, {}, None)
    assert store.get_user("u2") == ("/b", {"x": 1}, None)


def test_setting_the_action_keeps_the_language_and_back(store):
    store.set_user_fields("u1", lang="mg")
    store.set_action("u1", "/a")
    assert store.get_user("u1") == ("/a", {}, "mg")
    store.set_user_fields("u1", lang="fr")
    assert store.get_user("u1") == ("/a", {}, "fr")


# --------------------------------------------------------------------------- temporary data


def test_temp_set_get_del(store):
    assert store.get_temp("u1", "name") is None
    store.set_temp("u1", "name", "Rakoto")
    assert store.get_temp("u1", "name") == "Rakoto"
    store.set_temp("u1", "name", "Rabe")  # overwrite
    assert store.get_temp("u1", "name") == "Rabe"
    store.del_temp("u1", "name")
    assert store.get_temp("u1", "name") is None
    store.del_temp("u1", "name")  # deleting twice is not an error


@pytest.mark.parametrize("value", [
    0, 42, -1.5, True, "", "text", [1, "two", None], {"nested": {"list": [1, 2], "ok": False}},
])
def test_temp_keeps_json_values(store, value):
    store.set_temp("u1", "k", value)
    assert store.get_temp("u1", "k") == value


def test_temp_is_per_user_and_per_key(store):
    store.set_temp("u1", "k", 1)
    store.set_temp("u2", "k", 2)
    store.set_temp("u1", "other", 3)
    store.del_temp("u1", "k")
    assert store.get_temp("u1", "k") is None
    assert store.get_temp("u2", "k") == 2
    assert store.get_temp("u1", "other") == 3


def test_temp_keys_are_exact(store):
    # MariaDB's default collations are case- and accent-insensitive and give
    # every emoji the same weight; keys must still be told apart.
    keys = ["name", "Name", "NAME", "cafe", "café", "😀", "🎉", "𝄞"]
    for i, key in enumerate(keys):
        store.set_temp("u1", key, i)
    assert [store.get_temp("u1", key) for key in keys] == list(range(len(keys)))


def test_large_temp_value(store):
    value = {"text": "😀 مرحبا " * 20000}  # ~300 kB of UTF-8: more than a MySQL TEXT
    store.set_temp("u1", "big", value)
    assert store.get_temp("u1", "big") == value


# --------------------------------------------------------------------------- unicode


@pytest.mark.parametrize("text", UNICODE.values(), ids=UNICODE.keys())
def test_unicode_round_trips(store, text):
    store.set_action(text, f"/{text}", {"arg": text, text: [text]})
    assert store.get_user(text) == (f"/{text}", {"arg": text, text: [text]}, None)
    store.set_temp("u1", text, {"value": text})
    assert store.get_temp("u1", text) == {"value": text}
    store.set_temp("u1", "plain", text)
    assert store.get_temp("u1", "plain") == text
    token = store.save_page("u1", {"items": [text]})
    assert store.take_page(token, "u1") == {"items": [text]}


def test_unicode_is_stored_as_text_not_escapes(store):
    # A value must be readable (and searchable) in the database, not \\ud83d escapes.
    store.set_temp("u1", "k", UNICODE["mixed"])
    with store.engine.connect() as conn:
        raw = conn.execute(sa.select(tables.temps.c.value)).scalar()
    assert json.loads(raw) == UNICODE["mixed"]
    assert "😀" in raw


def test_text_with_lone_surrogates_and_nul_from_a_message_is_stored(store):
    # What a user's message may carry ends up in temp data and pages: every database stores it.
    for text in ("a\ud800b", "nul\x00here", "\udfff\U0001f600"):
        store.set_temp("u1", "k", {"said": text})
        assert store.get_temp("u1", "k") == {"said": text}
        token = store.save_page("u1", {"items": [text]})
        assert store.take_page(token, "u1") == {"items": [text]}
        store.set_action("u1", "/next", {"said": text})
        assert store.get_user("u1")[1] == {"said": text}


# --------------------------------------------------------------------------- pages


def test_page_is_taken_once_and_only_by_its_user(store):
    token = store.save_page("u1", {"items": [1, 2, 3], "next": 3})
    assert isinstance(token, str) and token
    assert store.take_page(token, "u2") is None
    assert store.take_page(token, "u1") == {"items": [1, 2, 3], "next": 3}
    assert store.take_page(token, "u1") is None
    assert store.take_page("no-such-token", "u1") is None


def test_page_taken_once_under_concurrency(store):
    token = store.save_page("u1", {"n": 1})
    results: list[object] = []
    lock = threading.Lock()

    def take(_: int) -> None:
        page = store.take_page(token, "u1")
        with lock:
            results.append(page)

    run_threads(8, take)
    assert sorted(results, key=repr) == [None] * 7 + [{"n": 1}]


# --------------------------------------------------------------------------- concurrency


THREADS = 8
ROUNDS = 25


def test_threads_on_different_users(store):
    def work(i: int) -> None:
        user = f"user-{i}"
        for n in range(ROUNDS):
            store.touch_user(user)
            store.set_action(user, f"/step{n}", {"n": n, "u": user})
            store.set_temp(user, "n", n)
            assert store.get_user(user)[0] == f"/step{n}"
            assert store.get_temp(user, "n") == n

    run_threads(THREADS, work)
    for i in range(THREADS):
        assert store.get_user(f"user-{i}") == (f"/step{ROUNDS - 1}", {"n": ROUNDS - 1, "u": f"user-{i}"}, None)
        assert store.get_temp(f"user-{i}", "n") == ROUNDS - 1


def test_threads_on_the_same_user_lose_no_update(store):
    # Different keys of one user, the action and the language are written at
    # once: none of these writes may undo another.
    def work(i: int) -> None:
        for n in range(ROUNDS):
            store.touch_user("shared")
            store.set_temp("shared", f"key-{i}", n)
            store.set_temp("shared", "last", {"by": i, "n": n})
            if i == 0:
                store.set_action("shared", f"/step{n}")
            elif i == 1:
                store.set_user_fields("shared", lang=f"l{n}")
            store.get_user("shared")

    run_threads(THREADS, work)
    assert [store.get_temp("shared", f"key-{i}") for i in range(THREADS)] == [ROUNDS - 1] * THREADS
    assert store.get_temp("shared", "last")["n"] == ROUNDS - 1
    assert store.get_user("shared") == (f"/step{ROUNDS - 1}", {}, f"l{ROUNDS - 1}")
    with store.engine.connect() as conn:
        users = conn.execute(sa.select(sa.func.count()).select_from(tables.users)).scalar()
    assert users == 1


def test_threads_first_contact_of_one_user(store):
    # Many webhooks of a brand-new user arrive at once: one row, no error.
    results: list[tuple] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        state = store.touch_user("newcomer")
        with lock:
            results.append(state)

    run_threads(THREADS, work)
    assert results == [(None, {}, None)] * THREADS
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(tables.users.c.user_id)).scalars().all()
    assert rows == ["newcomer"]


def test_threads_insert_the_same_new_keys(store):
    # Concurrent first inserts of the same keys: the classic upsert deadlock on MySQL.
    def work(i: int) -> None:
        for n in range(ROUNDS):
            store.set_temp(f"u{n % 3}", f"k{n}", i)
            store.set_action(f"fresh-{n}", f"/by{i}")

    run_threads(THREADS, work)
    for n in range(ROUNDS):
        assert store.get_temp(f"u{n % 3}", f"k{n}") in range(THREADS)
        assert store.get_user(f"fresh-{n}")[0] in {f"/by{i}" for i in range(THREADS)}


WORKER = textwrap.dedent("""
    import sys, threading
    from flask_ampalibe.engine import make_engine
    from flask_ampalibe.storage import Store

    url, me, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = Store(make_engine(url))
    store.create_all()  # both processes race to create the schema
    errors = []

    def work(t):
        try:
            for n in range(rounds):
                store.touch_user("shared")
                store.set_temp("shared", f"{me}-{t}", {"n": n, "s": "😀"})
                store.set_temp("shared", "last", me)
                store.set_action(f"{me}-{t}", f"/step{n}", {"n": n})
                store.set_temp(f"{me}-{t}", "n", n)
                assert store.get_user(f"{me}-{t}")[0] == f"/step{n}"
                assert store.get_temp(f"{me}-{t}", "n") == n
                assert store.get_temp("shared", f"{me}-{t}") == {"n": n, "s": "😀"}
        except BaseException as exc:
            errors.append(repr(exc))

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if errors:
        sys.exit("errors: " + "; ".join(errors))
    print("ok")
""")


def test_two_processes(database_url):
    threads, rounds = 4, 20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, database_url, name, str(threads), str(rounds)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for name in ("p1", "p2")
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
                p.communicate()
            pytest.fail("worker processes did not finish (deadlock?)")
        outputs.append((proc.returncode, out, err))
    assert [o[0] for o in outputs] == [0, 0], outputs
    store = Store(make_engine(database_url))
    try:
        for name in ("p1", "p2"):
            for t in range(threads):
                assert store.get_temp("shared", f"{name}-{t}") == {"n": rounds - 1, "s": "😀"}
                assert store.get_user(f"{name}-{t}") == (f"/step{rounds - 1}", {"n": rounds - 1}, None)
        assert store.get_temp("shared", "last") in ("p1", "p2")
    finally:
        store.engine.dispose()


# --------------------------------------------------------------------------- server restart


@pytest.mark.parametrize("server_name", ["mariadb", "postgresql"])
def test_store_survives_a_server_restart(request, server_name):
    server = request.getfixturevalue(f"{server_name}_server")
    server.reset()
    store = Store(make_engine(server.url))
    try:
        store.create_all()
        store.set_action("u1", "/before", {"s": "😀"})
        store.set_temp("u1", "k", "before")
        server.restart()
        # The pooled connections died with the server; the next calls just work.
        assert store.get_user("u1") == ("/before", {"s": "😀"}, None)
        store.set_temp("u1", "k", "after")
        assert store.get_temp("u1", "k") == "after"
        assert store.touch_user("u2") == (None, {}, None)
    finally:
        store.engine.dispose()


# --------------------------------------------------------------------------- engines


def test_make_engine_is_cached_per_url(database_url):
    assert make_engine(database_url) is make_engine(database_url)


def test_engine_settings(database_url):
    engine = make_engine(database_url)
    # Server databases ping a connection that sat idle before use (test_engine, and the restart
    # tests of test_inbox), not one used a moment ago: SQLAlchemy's pre-ping is off.
    assert engine.pool._pre_ping is False
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        elif engine.dialect.name in ("mysql", "mariadb"):
            assert conn.exec_driver_sql("SELECT @@character_set_connection").scalar() == "utf8mb4"
            assert 0 < engine.pool._recycle <= 3600 * 8


def test_sqlite_write_lock_is_held_for_the_write_transaction_only(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    lock = None
    with engine.begin() as conn:  # a write transaction: BEGIN IMMEDIATE under the process's lock
        lock = conn.connection.dbapi_connection.locks.write
        assert lock.locked()
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            assert lock.locked()
            raise RuntimeError("rolled back")
    assert not lock.locked()
    with engines.read_only(engine) as conn:  # reads never queue behind the writers
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
        assert not lock.locked()
    engine.dispose()


def test_background_writes_still_write_and_leave_the_locks_free(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'bg.db'}")
    with engines.background_writes():
        with engine.begin() as conn:
            locks = conn.connection.dbapi_connection.locks
            assert locks.write.locked() and not locks.background_gate.locked()
            conn.exec_driver_sql("CREATE TABLE b (x INTEGER)")
    assert not locks.write.locked() and not locks.background_gate.locked()
    assert not getattr(engines._background, "on", False)
    engine.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_free_write_locks(tmp_path):
    # gunicorn forks workers from a master that may have written: a lock held by a parent's
    # thread at the fork must not block the child forever.
    engine = make_engine(f"sqlite:///{tmp_path / 'fork.db'}")
    with engine.begin() as conn:
        locks = conn.connection.dbapi_connection.locks
        assert locks.write.locked()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            os._exit(0 if not locks.write.locked() and not locks.background_gate.locked() else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    engine.dispose()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX record locks")
def test_sqlite_writers_of_other_processes_queue_on_the_writelock_file(tmp_path):
    db = tmp_path / "procs.db"
    engine = make_engine(f"sqlite:///{db}")
    probe = ("import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(7)\n")

    def other_process_may_write():
        code = subprocess.run([sys.executable, "-c", probe, f"{db}-writelock"]).returncode
        assert code in (0, 7)
        return code == 0

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE w (x INTEGER)")
        assert not other_process_may_write()
    assert other_process_may_write()
    engine.dispose()


def _wait_for(predicate, what):
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_sqlite_emptying_the_log_goes_before_every_waiting_writer():
    # The checkpoint that empties the -wal file holds every writer (checkpoint._empty_log): it
    # takes the next turn, ahead of the webhook's writers already waiting.  (Repeated: without
    # its turn it would win only by chance.)
    for _ in range(20):
        locks = writequeue.WriteLocks(None)
        order: list[str] = []
        assert locks.write.acquire()  # a transaction in progress

        def webhook() -> None:
            assert locks.write.acquire()
            order.append("webhook")
            locks.write.release()

        def empty_the_log() -> None:
            with locks.all_writers_held() as held:
                order.append("checkpoint" if held else "gave up")

        writer = threading.Thread(target=webhook)
        writer.start()
        _wait_for(lambda: locks.write.waiting == 1, "the webhook's write to wait")
        emptier = threading.Thread(target=empty_the_log)
        emptier.start()
        _wait_for(lambda: locks.write.waiting == 2, "the checkpoint to wait")
        locks.write.release()
        writer.join(10)
        emptier.join(10)
        assert order == ["checkpoint", "webhook"]


def test_sqlite_a_file_lock_the_kernel_refuses_as_a_deadlock_is_tried_again(tmp_path, monkeypatch):
    # POSIX record locks belong to processes: with two lock files (a database and its webhook
    # journal), two processes each holding one while another of their threads waits for the other
    # look like a deadlock to the kernel, though neither holder waits for anything.
    import errno

    locks = writequeue.WriteLocks(str(tmp_path / "bot.db-writelock"))
    real, refused = writequeue.fcntl.lockf, []

    def lockf(fd, mode, length=0, start=0, whence=0):
        if mode == writequeue.fcntl.LOCK_EX and start == 0 and len(refused) < 3:
            refused.append(start)
            raise OSError(errno.EDEADLK, "Resource deadlock avoided")
        return real(fd, mode, length, start, whence)

    monkeypatch.setattr(writequeue.fcntl, "lockf", lockf)
    assert locks.write.acquire()
    try:
        assert locks.lock_file() is True  # taken once the kernel let it, not given up
        assert refused == [0, 0, 0]
    finally:
        locks.unlock_file()
        locks.write.release()
    assert locks.write.acquire()
    try:
        assert locks.lock_file() is True  # and the queue is still used next time
    finally:
        locks.unlock_file()
        locks.write.release()


def test_sqlite_the_webhooks_writes_go_before_waiting_background_writes(tmp_path, monkeypatch):
    # threading.Lock is not fair; the executor's writes (background) let the webhook's go first.
    monkeypatch.setattr(writequeue, "YIELD_SECONDS", 30.0)  # however long the background one waited
    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    order: list[str] = []

    def write(who, background):
        with (engines.background_writes() if background else contextlib.nullcontext()), engine.begin() as c:
            order.append(who)
            c.exec_driver_sql("INSERT INTO o VALUES (?)", (who,))

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE o (who TEXT)")
        lock = conn.connection.dbapi_connection.locks.write
        executor = threading.Thread(target=write, args=("executor", True))
        executor.start()
        _wait_for(lambda: lock.waiting == 1, "the background writer to wait")
        assert not engines.writers_waiting(conn)  # a background writer waits: nobody to let go first
        webhook = threading.Thread(target=write, args=("webhook", False))
        webhook.start()
        _wait_for(lambda: lock.waiting == 2, "the webhook's writer to wait")
        assert engines.writers_waiting(conn)  # a shared transaction of the executor's commits early now
    for t in (executor, webhook):
        t.join(30)
    assert order == ["webhook", "executor"]
    engine.dispose()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX record locks")
def test_sqlite_processes_take_turns_at_the_write_lock(tmp_path):
    # The kernel does not hand a record lock to the process woken for it: without turns, the
    # process that just committed takes the lock again before the waiting one runs.
    db, wrote = tmp_path / "turns.db", tmp_path / "other-wrote"
    engine = make_engine(f"sqlite:///{db}")
    other = textwrap.dedent("""
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, 1)  # announce: waiting for the write lock
        print("waiting", flush=True)
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)  # the write lock
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
        open(sys.argv[2], "w").close()
        time.sleep(0.3)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
    """)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        proc = subprocess.Popen([sys.executable, "-c", other, f"{db}-writelock", str(wrote)], stdout=subprocess.PIPE,
                                text=True)
        with selectors.DefaultSelector() as sel:  # (select.select fails on descriptors over 1023)
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(30) and proc.stdout.readline().strip() == "waiting"
        assert engines.writers_waiting(conn)  # the other process's announcement is seen
    try:
        with engine.begin() as conn:  # the next write of this process comes after the other's turn
            assert wrote.exists()
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.communicate()
        engine.dispose()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX record locks")
@pytest.mark.parametrize("kind", ["webhook", "background"])
def test_sqlite_a_transaction_tells_another_process_webhook_write_from_its_executor(tmp_path, kind):
    # The executor's shared steps commit early for an ack that waits, in any process, but not
    # for another worker's executor: that one waits for the batch (one turn per batch).
    db = tmp_path / "kinds.db"
    engine = make_engine(f"sqlite:///{db}")
    child = textwrap.dedent("""
        import contextlib, sys
        from flask_ampalibe.engine import background_writes, make_engine
        engine = make_engine(f"sqlite:///{sys.argv[1]}")
        with (background_writes() if sys.argv[2] == "background" else contextlib.nullcontext()):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO k VALUES (1)")
    """)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(engines.__file__))}
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE k (x INTEGER)")
        assert not engines.writers_waiting(conn) and not engines.writers_waiting(conn, foreground=True)
        proc = subprocess.Popen([sys.executable, "-c", child, str(db), kind], env=env)
        try:
            _wait_for(lambda: engines.writers_waiting(conn), "the other process to wait for the write lock")
            if kind == "webhook":
                _wait_for(lambda: engines.writers_waiting(conn, foreground=True), "its webhook write to be seen")
            else:
                assert not engines.writers_waiting(conn, foreground=True)
        except BaseException:
            proc.kill()
            raise
    assert proc.wait(30) == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM k").scalar() == 1
    engine.dispose()


def test_sqlite_writers_of_one_process_queue_instead_of_timing_out(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE n (x INTEGER)")
    errors = []

    def writer():
        try:
            for _ in range(50):
                with engine.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO n VALUES (1)")
        except Exception as exc:  # pragma: no cover - shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM n").scalar() == 400
    engine.dispose()


def test_mysql_url_without_charset_gets_utf8mb4(mariadb_server):
    url = sa.make_url(mariadb_server.url)
    url = url.set(query={k: v for k, v in url.query.items() if k != "charset"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@character_set_connection").scalar() == "utf8mb4"
    finally:
        engine.dispose()


@pytest.mark.parametrize("url, module, extra", [
    ("mysql+pymysql://u:p@127.0.0.1:9/no_driver", "pymysql", "mysql"),
    ("postgresql+psycopg://u:p@127.0.0.1:9/no_driver", "psycopg", "postgresql"),
])
def test_missing_driver_names_the_extra(monkeypatch, url, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ConfigurationError, match=re.escape(f"pip install 'flask_ampalibe[{extra}]'")):
        make_engine(url)


def test_bad_url_names_the_setting():
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        make_engine("not a url")


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path):
    # Reads start deferred transactions: a writer holding the write lock does not block them.
    from concurrent.futures import ThreadPoolExecutor

    store = Store(make_engine(f"sqlite:///{tmp_path / 'locks.db'}"))
    store.set_temp("u", "k", "before")
    with store.engine.begin() as writer:  # BEGIN IMMEDIATE: the write lock is held until the end
        writer.execute(tables.temps.update().values(value='"during"'))
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(store.get_temp, "u", "k")
            assert reading.result(timeout=10) == "before"
    assert store.get_temp("u", "k") == "during"


def test_two_postgresql_drivers_in_one_process_each_run_their_own_sql(postgresql_server):
    # psycopg takes named parameters (%(name)s), pg8000 positional ones (%s): both dialects are
    # called "postgresql", so SQL text cached by dialect name would be run on the wrong driver.
    from flask_ampalibe.events import parse_body
    from flask_ampalibe.inbox import Inbox
    from flask_ampalibe.testing import message_event, page_body

    psycopg_url = postgresql_server.url
    pg8000_url = psycopg_url.replace("postgresql+psycopg://", "postgresql+pg8000://", 1)
    assert pg8000_url != psycopg_url
    stores = [Store(make_engine(url)) for url in (psycopg_url, pg8000_url)]
    try:
        assert {s.engine.dialect.paramstyle for s in stores} == {"pyformat", "format"}
        for n in range(2):  # each operation runs on both drivers, alternately first
            for i, store in enumerate(stores if n == 0 else stores[::-1]):
                other = stores[1 - stores.index(store)]
                user = f"u{n}{i}"
                store.set_temp(user, "k", {"n": n})
                store.set_temp(user, "k", {"n": n + 1})  # the upsert's update branch
                assert other.get_temp(user, "k") == {"n": n + 1}
                store.set_action(user, "/next", {"a": 1})
                assert other.touch_user(user) == ("/next", {"a": 1}, None)
                token = store.save_page(user, {"page": n})
                assert other.take_page(token, user) == {"page": n} and store.take_page(token, user) is None
                box, other_box = Inbox(store), Inbox(other)
                body = parse_body(page_body(message_event(user, "hi", mid=f"m.{user}")))
                assert box.record(body) == [user] and other_box.record(body) == [user]  # a redelivery
                claimed = other_box.take(user, "w", 30)
                assert claimed.event.raw["message"]["text"] == "hi" and claimed.user == ("/next", {"a": 1}, None)
                assert box.take(user, "w2", 30) is None  # the lease is held
                assert other_box.next_event(user, "w", 30, finished=claimed) is None
                assert box.stats()["done"] == n * 2 + i + 1
    finally:
        for store in stores:
            store.engine.dispose()
