"""The webhook's journal: on an SQLite file database, the acks' writes go to a file of their own.

SQLite lets one writer at a time into a file.  With the webhook's inserts and the executor's
steps on the same file, an ack waits for whatever step transaction holds the write lock, and
those hold it for tens of milliseconds at the tail while their threads wait for the GIL between
statements (see bench/ANALYSIS.md, "where an ack's time goes").  So the webhook records its
events in ``<database>-webhook`` (WAL mode, a write queue of its own), an append-only table whose
``seq`` only grows, and answers 200 once that commits.  The executor *moves* them into the inbox
(:meth:`~flask_ampalibe.inbox.Inbox.settle`): it reads the rows above the mark outside any write
transaction, then inserts them into ``amp_inbox`` (and their users' lease rows) and advances the
mark, kept in ``amp_meta``, in one transaction of the main file.  So a crash in between neither
loses nor doubles an event: the rows stay in the journal until a mark at or above them is
committed, and ``amp_inbox``'s unique ``event_key`` ignores a row moved twice.

Why the mark is enough: the journal's writers take its write lock one at a time, so ``seq`` is
assigned in commit order and a reader's snapshot holds every row up to its highest ``seq`` (no
gap a later commit could fill).  The journal file carries a random id, kept with the mark: a
journal deleted and made again starts from its first row, whatever mark the old one reached.

Rows at or below the committed mark are deleted from the journal by the executor's upkeep
(:meth:`Journal.prune`).  Deduplication of redelivered events stays with ``amp_inbox``: the
journal's own unique ``event_key`` only spares the move a row it would ignore.

It is off unless ``AMPALIBE_WEBHOOK_JOURNAL=1``: on a machine whose CPUs are busy, the acks no
longer have the write lock before the handlers, so the handlers get more of the CPU during a burst.
Measured (bench/ANALYSIS.md, the twelfth session): replies during the load 1.5-3 times as many
and 3-10 % more in all, but in the ``slow`` scenario 20 % fewer acks per second and a longer ack
tail.  Server databases (PostgreSQL, MySQL/MariaDB), in-memory SQLite and ``file:`` URIs have no
journal: the webhook writes to ``amp_inbox``.
"""
from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from sqlalchemy import Column, Double, Integer, MetaData, String, Table, Text, literal, select
from sqlalchemy.engine import Engine

from .engine import make_engine, read_only, sqlite_file
from .forks import renew_in_child
from .storage import insert_ignore

__all__ = ["Journal", "COLUMNS", "MOVE_ROWS"]

#: The most rows one move carries (the rest go with the next one).
MOVE_ROWS = 2000

_metadata = MetaData()
entries = Table(
    "amp_journal", _metadata,
    Column("seq", Integer, primary_key=True),  # AUTOINCREMENT: never reused after a prune
    Column("event_key", Text, nullable=False, unique=True),
    Column("user_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("timestamp", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("received_at", Double, nullable=False),
    Column("finished_at", Double, nullable=True),
    sqlite_autoincrement=True,
)
identity = Table("amp_journal_id", _metadata, Column("id", String(32), primary_key=True))

#: The columns of an inbox row the journal keeps (all of ``amp_inbox``'s but ``id``).
COLUMNS = tuple(c.name for c in entries.columns if c.name != "seq")


class Journal:
    """The journal of one SQLite database file (see the module's docstring).

    :param database: the main database file's path (the journal is ``<database>-webhook``).
    """

    def __init__(self, database: str) -> None:
        self.path = os.path.abspath(database) + "-webhook"
        self._id: str | None = None
        self._lock = threading.Lock()
        renew_in_child(self._new_lock)
        #: The highest ``seq`` this process knows to be moved (committed by a move here or read
        #: from ``amp_meta`` by one): rows at or below it are not read again.
        self.mark = 0

    def _new_lock(self) -> None:
        self._lock = threading.Lock()  # (a thread of the parent may have held it at the fork)

    @classmethod
    def of(cls, engine: Engine) -> "Journal | None":
        """The journal of ``engine``'s database: ``None`` unless it is a plain SQLite file."""
        database = sqlite_file(engine.url)
        return cls(database) if database is not None else None

    @property
    def engine(self) -> Engine:
        """The journal file's engine (made once per process, see :func:`~flask_ampalibe.engine.make_engine`)."""
        return make_engine(f"sqlite:///{self.path}", webhook=True)

    @property
    def id(self) -> str:
        """The journal file's random id, made with the file (its tables are created on first use)."""
        if self._id is None:
            with self._lock:
                if self._id is None:
                    with self.engine.begin() as conn:
                        _metadata.create_all(conn)
                        conn.execute(identity.insert().from_select(
                            ["id"], select(literal(uuid.uuid4().hex)).where(~select(identity.c.id).exists())))
                        self._id = conn.execute(select(identity.c.id)).scalar_one()
        return self._id

    @property
    def mark_name(self) -> str:
        """The ``amp_meta`` row that holds the mark (per journal file: see the module's docstring)."""
        return f"journal:{self.id}"

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Record inbox rows (one transaction; rows whose ``event_key`` is already here are ignored)."""
        self.id  # the tables exist
        with self.engine.begin() as conn:
            insert_ignore(conn, entries, rows)

    def unmoved(self) -> list[Any]:
        """The rows above :attr:`mark`, oldest first (up to :data:`MOVE_ROWS`); reads take no lock."""
        self.id
        with read_only(self.engine) as conn:
            return list(conn.execute(select(entries).where(entries.c.seq > self.mark)
                                     .order_by(entries.c.seq).limit(MOVE_ROWS)).all())

    def moved(self, mark: int) -> None:
        """A mark read or committed in the main file: rows at or below it need not be read again."""
        with self._lock:
            if mark > self.mark:
                self.mark = mark

    def prune(self) -> int:
        """Delete the rows at or below :attr:`mark` (moved for good); returns how many."""
        if self.mark <= 0:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(entries.delete().where(entries.c.seq <= self.mark)).rowcount

