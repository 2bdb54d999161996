"""The webhook's side of the inbox: record a request's events durably before the 200.

With the webhook's journal on (an SQLite file, ``AMPALIBE_WEBHOOK_JOURNAL=1``) the events go to
it (:mod:`flask_ampalibe.journal`) and are moved into ``amp_inbox`` by :meth:`InboxRecorder.move`
(in the executor's step transactions) and :meth:`InboxRecorder.settle` (its sweeps, the operators'
views); elsewhere they go to ``amp_inbox`` at once.

A base class of :class:`~flask_ampalibe.inbox.Inbox` (which holds the store, the engines, the
clock and the counters it uses); callers use ``Inbox``.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy.exc import DataError, DBAPIError

from .dberrors import is_deadlock
from .events import Event, rejected_key
from .groupcommit import GroupCommit
from .journal import COLUMNS, Journal
from .storage import Store, insert_ignore, upsert
from . import inbox_sql as sql
from .inbox_sql import PENDING, REJECTED
from .tables import inbox, leases, meta

__all__ = ["InboxRecorder", "DEADLOCK_RETRIES"]

logger = logging.getLogger(__name__)

#: How many times the webhook's insert is tried when the database picks it as a deadlock victim.
DEADLOCK_RETRIES = 3


class InboxRecorder:
    """:meth:`record`, with its group commit (see :mod:`flask_ampalibe.groupcommit`)."""

    store: Store
    engine: Any
    webhook_engine: Any
    journal: Journal | None
    counters: Any
    clock: Callable[[], float]
    _group: GroupCommit[list[dict[str, Any]], list[str]]

    def record(self, events: Iterable[Event]) -> list[str]:
        """Store ``events`` durably, ignoring those already known; return once they are committed.

        Events with a :attr:`~flask_ampalibe.events.Event.problem` are stored as ``rejected``
        with it, never to be handled.  Should the database still refuse an event's data (a
        ``DataError``), each event is stored on its own and the refused ones are kept as
        ``rejected``: one odd item never holds up the rest of its batch.

        Concurrent calls in one process share a transaction (group commit, see
        :mod:`flask_ampalibe.groupcommit`): a call that finds no write in progress commits at
        once; those that arrive meanwhile are committed together by the next write.  A shared
        write that fails is retried call by call, so each call meets only its own errors.

        :returns: the users that have events to handle now (to wake the executor for).
        """
        self.store.ensure()
        now = self.clock()
        rows = [_row(ev, now) for ev in events]
        if not rows:
            return []
        return self._group.submit(rows)

    def _record_alone(self, rows: list[dict[str, Any]]) -> list[str]:
        """One call's rows in a transaction of their own, item by item if the database refuses the batch."""
        try:
            self._insert(rows)
            return _pending_users(rows)
        except (DataError, UnicodeError):
            logger.warning("the database refused a webhook batch's data; recording its %s items one by one",
                           len(rows))
        users: dict[str, None] = {}
        for row in rows:
            try:
                self._insert([row])
                users.update(dict.fromkeys(_pending_users([row])))
            except (DataError, UnicodeError) as exc:
                logger.warning("webhook item %s rejected: the database refused it (%s)", row["event_key"],
                               type(exc).__name__)
                self._insert([_refused_row(row, exc, row["received_at"])])
        return list(users)

    def _record_many(self, calls: Sequence[list[dict[str, Any]]]) -> list[list[str]]:
        """The rows of several concurrent calls in one transaction; each call's users."""
        self._insert([row for rows in calls for row in rows])
        return [_pending_users(rows) for rows in calls]

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self.journal is not None:
            self.journal.append(rows)
        else:
            self._insert_inbox(rows)
        if self.counters is not None:
            self.counters.recorded(sum(1 for r in rows if r["status"] == PENDING))

    def _insert_inbox(self, rows: list[dict[str, Any]]) -> None:
        # Sorted, so that two processes inserting lease rows of the same users do not deadlock.
        users = sorted({r["user_id"] for r in rows if r["status"] == PENDING})
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                with self.webhook_engine.begin() as conn:
                    if users and conn.dialect.name == "postgresql":  # one round trip (autocommit)
                        params = {c: [r[c] for r in rows] for c in sql.RECORD_COLUMNS}
                        conn.execute(sql.record_with_leases, {**params, "users": users})
                    else:
                        insert_ignore(conn, inbox, rows)
                        new = users
                        if users and conn.dialect.name != "sqlite":
                            # Only the users without a lease row: MySQL/MariaDB's duplicate check
                            # waits for the executor's transactions that update the rows it meets.
                            # (A plain read takes no lock; SQLite has no row locks.)
                            known = set(conn.execute(sql.leases_of, {"users": users}).scalars())
                            new = [u for u in users if u not in known]
                        insert_ignore(conn, leases, [{"user_id": u, "owner": None, "expires_at": 0.0} for u in new])
                break
            except DBAPIError as exc:
                # On MariaDB the inserts and the executor's updates of the same index can deadlock
                # under load; the server rolled back, so writing again is safe (and beats a 503).
                if attempt == DEADLOCK_RETRIES or not is_deadlock(exc):
                    raise
                logger.info("webhook insert chosen as a deadlock victim; writing it again (%s)", attempt)

    # -- the journal (SQLite files) -------------------------------------------------------
    def settle(self) -> int:
        """Move the events the webhook recorded in the journal into the inbox (nothing to do on
        a database without one); returns how many rows were moved.

        The executor moves them in each of its step transactions, and its sweeps call this
        (through :meth:`ready_users` and the like), so events recorded by a process that died
        before its executor took them up are found; the operators' views and
        :meth:`~flask_ampalibe.inbox.Inbox.has_work` call it before they read.
        """
        moving = self.unmoved()
        if not moving:
            return 0
        self.store.ensure()
        with self.engine.begin() as conn:
            mark = self.move(conn, moving)
        self.moved(mark)
        return len(moving)

    def unmoved(self) -> Sequence[Any]:
        """The journal's rows not yet moved (as far as this process knows), read without a lock;
        empty without a journal."""
        return self.journal.unmoved() if self.journal is not None else []

    def move(self, conn: Any, moving: Sequence[Any]) -> int:
        """In a write transaction of the main file: insert ``moving``'s rows above the committed
        mark into the inbox, their users' lease rows, and the new mark.  Returns the mark, for
        :meth:`moved` once the transaction committed (``0``: nothing to move)."""
        if not moving or self.journal is None:
            return 0
        name = self.journal.mark_name
        found = conn.execute(sql.journal_mark, {"name": name}).scalar()
        mark = int(found) if found else 0
        self.journal.moved(mark)  # committed (this transaction holds the write lock)
        fresh = [row for row in moving if row.seq > mark]
        if not fresh:
            return mark
        insert_ignore(conn, inbox, [{c: getattr(row, c) for c in COLUMNS} for row in fresh])
        users = sorted({row.user_id for row in fresh if row.status == PENDING})
        insert_ignore(conn, leases, [{"user_id": u, "owner": None, "expires_at": 0.0} for u in users])
        upsert(conn, meta, {"name": name, "value": str(fresh[-1].seq)}, ["name"])
        return int(fresh[-1].seq)

    def moved(self, mark: int) -> None:
        """A transaction that ran :meth:`move` committed: rows up to ``mark`` are in the inbox."""
        if self.journal is not None:
            self.journal.moved(mark)

    def prune_journal(self) -> int:
        """Delete the journal's rows this process knows were moved (the executor's upkeep does,
        every few seconds); returns how many."""
        return self.journal.prune() if self.journal is not None else 0

    @property
    def group_commit(self) -> GroupCommit[list[dict[str, Any]], list[str]]:
        """The webhook's group commit (its ``writes`` and ``shared_writes`` counters show batching)."""
        return self._group


def _row(event: Event, now: float) -> dict[str, Any]:
    if event.problem is None:
        return {"event_key": event.key, "user_id": event.sender_id, "kind": event.kind, "timestamp": event.timestamp,
                "body": event.to_json(), "status": PENDING, "attempts": 0, "error": None, "received_at": now,
                "finished_at": None}
    return {"event_key": event.key or rejected_key(event), "user_id": event.sender_id, "kind": event.kind,
            "timestamp": event.timestamp, "body": event.to_json(), "status": REJECTED, "attempts": 0,
            "error": event.problem, "received_at": now, "finished_at": now}


def _pending_users(rows: list[dict[str, Any]]) -> list[str]:
    """The users of ``rows`` that have an event to handle, in order of first appearance."""
    return list(dict.fromkeys(r["user_id"] for r in rows if r["status"] == PENDING))


def _refused_row(row: dict[str, Any], exc: BaseException, now: float) -> dict[str, Any]:
    """What is kept of an event the database refused: ASCII-only text, no id of the sender's."""
    body = row["body"].encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")
    return {**row, "event_key": "r:" + hashlib.sha256(body.encode()).hexdigest()[:48], "user_id": "",
            "kind": row["kind"] if row["kind"].isascii() else "unknown", "body": body, "status": REJECTED,
            "error": f"The database refused this item ({type(exc).__name__}); it was not handled.",
            "finished_at": now}
