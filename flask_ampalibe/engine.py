"""Engines: one per database URL and process, with settings that suit each database.

SQLite gets WAL mode (checkpoints in a thread: :mod:`flask_ampalibe.checkpoint`), reads that
take no lock and writers that queue (threads of a process on a lock, the webhook's writes first,
processes on a kernel lock of ``<db>-writelock``) instead of sleeping in SQLite's busy handler.
MySQL/MariaDB: utf8mb4, ``pool_recycle``; server databases ping a connection that sat idle.

Each database has up to three engines per process, each with a pool of its own:

- the main engine (``make_engine(url)``): the executor's and the handlers' statements.  Its
  pool is small on purpose (``AMPALIBE_DB_POOL_SIZE``, 2 kept and as many again): hundreds of
  handlers in flight borrow a connection per statement or transaction, and the pool is what
  bounds how many of them work on the database at once.  More only add contention when the
  database shares the machine's CPUs (its processes, SQLite's write lock, the GIL);
- the webhook's engine (``make_engine(url, webhook=True)``): its inserts and the lease renewals
  never wait for a connection behind the handlers;
- the bot's own SQL (``make_engine(url, bot_sql=True)``, the DB-API connections of
  :class:`~flask_ampalibe.model.Model`): a thread may keep one for a while (``self.db``), so
  these never take one of the handlers' few.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError

from .config import DEFAULT_DB_POOL_SIZE
from .errors import ConfigurationError
from . import checkpoint
from .writequeue import TurnLock, WriteLocks

__all__ = ["make_engine", "bot_sql_engine", "read_only", "background_writes", "writers_waiting", "sqlite_file"]

logger = logging.getLogger(__name__)

#: How long (s) a thread may wait for a pooled connection before an error (waiting is queueing).
POOL_TIMEOUT = 120.0
#: The webhook's engine: connections kept and extra ones (gunicorn's 8 request threads, the
#: lease renewals, room for more request threads).
WEBHOOK_POOL_SIZE, WEBHOOK_POOL_OVERFLOW = 4, 28
#: The bot's own SQL (Model's DB-API connections): kept, and extra ones.
BOT_SQL_POOL_SIZE, BOT_SQL_POOL_OVERFLOW = 2, 30

_engines: dict[tuple[str, str], Engine] = {}
_engines_lock = threading.Lock()


def make_engine(url: str, *, webhook: bool = False, bot_sql: bool = False, pool_size: int | None = None) -> Engine:
    """The engine for ``url``, created once per process, URL and use, with settings that suit it.

    ``webhook=True``: the webhook's engine on the same database, with a pool of its own, so an
    ack never queues for a connection behind the handlers.  ``bot_sql=True``: the engine of
    :class:`~flask_ampalibe.model.Model`'s DB-API connections.  SQLite files share their write
    queue between the engines; an in-memory database has one engine only (a second one would
    be another database).

    :param pool_size: the main engine's connections kept (as many again at most under load;
        default ``AMPALIBE_DB_POOL_SIZE``'s, 2).  The engine is made once: a later call with
        another size gets the first one.

    SQLite: WAL mode, a 30 s busy timeout and ``BEGIN IMMEDIATE`` transactions, so several
    gunicorn workers can share one file; the threads of one process queue for the write lock
    in Python (see :class:`_SQLiteConnection`).  MySQL/MariaDB: utf8mb4, ``pool_recycle``.
    Server databases: a pooled connection that sat idle is pinged before use, so a restarted
    server is reconnected transparently (see :func:`_ping_when_idle`; a local SQLite file needs
    no ping).  PostgreSQL: the webhook's engine runs in autocommit (its writes are single
    statements, see :meth:`~flask_ampalibe.inbox.Inbox.record`).
    """
    use = "webhook" if webhook else "bot_sql" if bot_sql else "main"
    with _engines_lock:
        key = (url, use if use == "main" or _has_file(url) else "main")
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create(url, key[1], pool_size or DEFAULT_DB_POOL_SIZE)
        return engine


def _forget_parent_connections() -> None:
    """In a forked child: the pooled connections of the parent are not this process's to use."""
    for engine in list(_engines.values()):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_forget_parent_connections)


def bot_sql_engine(engine: Engine) -> Engine:
    """The engine for the bot's own SQL on ``engine``'s database (itself for an in-memory one)."""
    url = engine.url.render_as_string(hide_password=False)
    return make_engine(url, bot_sql=True) if _has_file(url) else engine


def _has_file(url: str) -> bool:
    """Whether a second engine on ``url`` reaches the same database: not for in-memory SQLite
    (nor ``file:`` URIs, which may be in memory too)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return True  # _create explains the error
    return parsed.get_backend_name() != "sqlite" or sqlite_file(parsed) is not None


def sqlite_file(url: URL) -> str | None:
    """The path of ``url``'s database when it is a plain SQLite file; ``None`` for other
    databases, in-memory SQLite and ``file:`` URIs (which may be in memory too)."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return database


def _create(url: str, use: str, pool_size: int) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"DATABASE_URL {url!r} is not an SQLAlchemy URL (e.g. sqlite:///bot.db).") from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    memory_db = backend == "sqlite" and parsed.database in (None, "", ":memory:")
    if not memory_db:
        # Hundreds of handlers per process, but each borrows a connection per statement or
        # transaction (none holds one while it waits on the network): a few serve them all.
        # Waiting for one is queueing, not an error, hence the long timeout.
        sizes = {"webhook": (WEBHOOK_POOL_SIZE, WEBHOOK_POOL_OVERFLOW),
                 "bot_sql": (BOT_SQL_POOL_SIZE, BOT_SQL_POOL_OVERFLOW)}.get(use, (pool_size, pool_size))
        kwargs.update(pool_size=sizes[0], max_overflow=sizes[1], pool_timeout=POOL_TIMEOUT)
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False, "factory": _SQLiteConnection}
    elif backend in ("mysql", "mariadb"):
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        kwargs.update(pool_recycle=3600, isolation_level="READ COMMITTED")
    elif backend == "postgresql" and use == "webhook":
        # Its writes are single statements (the inbox and lease rows in one, see Inbox): no
        # BEGIN and COMMIT round trips around them.
        kwargs["isolation_level"] = "AUTOCOMMIT"
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        known = {"mysql": ("mysql", "mysql+pymysql"), "mariadb": ("mysql", "mysql+pymysql"),
                 "postgresql": ("postgresql", "postgresql+psycopg")}
        if backend not in known and backend != "sqlite":
            raise ConfigurationError(
                f"DATABASE_URL {parsed.render_as_string(hide_password=True)!r}: the database {backend!r} is not "
                "supported; use sqlite:///bot.db, mysql+pymysql://user:password@host/name or "
                "postgresql+psycopg://user:password@host/name."
            ) from None
        extra, driver = known.get(backend, (backend, backend))
        raise ConfigurationError(
            f"The database driver of {parsed.drivername!r} is not installed ({exc}); "
            f"install the supported one with: pip install 'flask_ampalibe[{extra}]' and use a {driver}:// URL"
        ) from None
    if backend != "sqlite":
        _ping_when_idle(engine)
    if backend == "sqlite":
        memory = (parsed.database or "") in ("", ":memory:")
        plain_file = sqlite_file(parsed)  # URI filenames: no queue file
        _sqlite_setup(engine, memory, os.path.abspath(plain_file) + "-writelock" if plain_file else None)
    return engine


#: A pooled connection unused for longer (s) is pinged before it is handed out.
PING_AFTER_IDLE = 0.1


def _ping_when_idle(engine: Engine) -> None:
    """Ping a server database's pooled connection before use when it sat idle in the pool.

    A restarted server (or a dropped network path) leaves dead connections in the pool; the
    ping finds them and the pool opens a fresh one, so no statement fails for it.  Unlike
    ``pool_pre_ping``, a connection used less than :data:`PING_AFTER_IDLE` ago is not pinged:
    under load that is one round trip less per transaction.  A connection that worked that
    recently and died since can only meet a server that is still down (a restart takes longer),
    where a ping would not help either.  (A server that kills one connection on purpose can
    still fail the statement that next uses it.)
    """
    clock = time.monotonic

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        record.info["ampalibe_idle_since"] = clock()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("ampalibe_idle_since")
        if since is None or clock() - since <= PING_AFTER_IDLE:
            return  # a new connection, or one that worked a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"pooled connection found dead ({exc})") from exc
        if alive is False:
            raise DisconnectionError("pooled connection found dead")


class _SQLiteConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions take its engine's per-process lock.

    SQLite lets one writer in at a time and makes the others sleep in its busy handler, with a
    back-off of 1 ms growing to 100 ms: under load the threads of one process would wait far
    longer than the writes take.  Queueing on a :class:`threading.Lock` hands the write lock over
    as soon as it is free; only other processes still meet in the busy handler.  The lock is
    taken just before ``BEGIN IMMEDIATE`` and released once ``COMMIT`` or ``ROLLBACK`` is done
    (or the connection closed), so no thread of this process ever waits inside SQLite.
    """

    locks: WriteLocks | None = None
    _held: TurnLock | None = None
    _file_locked = False

    def begin_write(self) -> None:
        locks = self.locks
        if locks is not None and self._held is None:
            background = getattr(_background, "on", False)
            if background:
                with locks.background_gate:
                    acquired = locks.write.acquire(background=True)
            else:
                acquired = locks.write.acquire()
            self._held = locks.write if acquired else None
            # Record locks belong to the process: only the holder of the thread lock may take it.
            self._file_locked = acquired and locks.lock_file(foreground=not background)
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise
        if locks is not None and locks.database is not None:
            checkpoint.written(locks.database, locks)

    def _release(self) -> None:
        held, self._held = self._held, None
        if self._file_locked and self.locks is not None:  # only set with locks
            self._file_locked = False
            self.locks.unlock_file()
        if held is not None:
            held.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()


_background = threading.local()


@contextmanager
def background_writes() -> Iterator[None]:
    """Mark the current thread's writes as background work (the executor's, not the webhook's).

    On SQLite, the webhook's transactions then get the process's write lock before them, so
    the 200 is not held up by handlers' bookkeeping.  Elsewhere it changes nothing.
    """
    before = getattr(_background, "on", False)
    _background.on = True
    try:
        yield
    finally:
        _background.on = before


#: The write queue of each SQLite file, shared by its engines (POSIX record locks belong to the process).
_write_locks: dict[str, WriteLocks] = {}


def _sqlite_setup(engine: Engine, memory: bool, lock_path: str | None) -> None:
    if lock_path is None:
        locks = WriteLocks(None)
    else:
        locks = _write_locks.get(lock_path) or _write_locks.setdefault(lock_path, WriteLocks(lock_path))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE can be issued: a deferred
        # transaction that reads then writes fails at once with "database is locked" under WAL.
        dbapi_conn.isolation_level = None
        if isinstance(dbapi_conn, _SQLiteConnection):
            dbapi_conn.locks = locks
        cursor = dbapi_conn.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            if lock_path is not None:  # checkpoints in a thread, not in a writer's COMMIT
                cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Reads (see read_only) take no write lock, so they never queue behind the writers.
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None  # a connection that begins is open
        if conn.get_execution_options().get(_READ_ONLY):
            dbapi_conn.execute("BEGIN")
        elif isinstance(dbapi_conn, _SQLiteConnection):
            dbapi_conn.begin_write()
        else:
            dbapi_conn.execute("BEGIN IMMEDIATE")


_READ_ONLY = "ampalibe_read_only"


def writers_waiting(conn: Connection, foreground: bool = False) -> bool:
    """Whether other writers wait for the SQLite write lock ``conn``'s transaction holds: a
    foreground (webhook) thread of this process, or another process.  ``False`` elsewhere.

    A transaction that does the work of several callers (the executor's shared steps) commits
    early when an ack waits, so the webhook's write waits for one step, not a whole batch.

    :param foreground: count only foreground (webhook) writers, of this process or another; not
        another process's :func:`background_writes`, which may wait for a whole batch.
    """
    dbapi = getattr(conn.connection, "dbapi_connection", None)
    locks = getattr(dbapi, "locks", None)
    return locks is not None and getattr(dbapi, "_held", None) is not None and locks.others_waiting(foreground)


def read_only(engine: Engine) -> Connection:
    """A connection for reads only.  Use as ``with read_only(engine) as conn: ...``.

    SQLite: a deferred ``BEGIN`` that takes no write lock (its statements share one snapshot).
    PostgreSQL: autocommit, each statement its own transaction, without the ``BEGIN`` and
    ``ROLLBACK`` round trips around the reads.  At the isolation the engines use (``READ
    COMMITTED``) each statement saw its own snapshot inside a transaction too.  MySQL/MariaDB keep a
    transaction (ended by one ``ROLLBACK``): switching a pooled PyMySQL connection to autocommit and
    back costs four statements (``SET AUTOCOMMIT`` twice, the isolation level and a ``COMMIT``).
    """
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        # The switch is client-side in psycopg and pg8000: no statement is sent for it.
        return conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn.execution_options(**{_READ_ONLY: True})
