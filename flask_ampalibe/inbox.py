"""The durable webhook inbox: events recorded before the 200, handled once, one user at a time.

Every event is stored with a unique key (its ``mid``, or a hash of the item), so a redelivery
is recognised across restarts, workers and hosts.  A worker handles a user's events only while
it holds that user's *lease* (a row in ``amp_lease`` claimed by an atomic ``UPDATE``), oldest
``timestamp`` first.  A lease that is not renewed expires, and the events of a worker that died
become available to the others: delivery is at-least-once, and a handler that runs an event a
second time sees ``redelivered=True``.  An event whose handling was started
:attr:`Inbox.max_attempts` times without ever finishing (each worker died on it) is marked
failed instead of being tried forever, and so is one that cannot even be read back: a poison
event never blocks its user's later events.  Nothing that happens after an event's outcome is
written can undo the record of an event already handled (on SQLite the next step runs in a
savepoint of the outcome's transaction, elsewhere the outcome is committed first); the state
changes its handler made (buffered by the store, see :class:`~flask_ampalibe.storage.Store`) are
written in that same transaction, so both commit or neither does.  A worker reads several of its
user's events at once (:data:`READ_AHEAD`) and starts them one by one without reading the inbox
again; events read but not started stay ``pending``.

Items of a webhook body that cannot be valid Messenger events (see
:attr:`flask_ampalibe.events.Event.problem`) are stored as ``rejected`` with their reason, for
operators; they are never handed out.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy.exc import DataError, DBAPIError

from .dberrors import is_deadlock
from .engine import read_only
from .events import Event, rejected_key
from .groupcommit import GroupCommit
from .storage import Store, insert_ignore
from . import inbox_sql as sql
from .inbox_sql import DONE, FAILED, PENDING, READ_AHEAD, REJECTED, RUNNING, STATUSES
from .inbox_queries import InboxQueries
from .tables import inbox, leases
from .unit import Unit

__all__ = ["Inbox", "Claimed", "PENDING", "RUNNING", "DONE", "FAILED", "REJECTED", "STATUSES", "USER_STATE_KINDS",
           "lease_owner"]

#: Kinds of events the dispatcher routes by the user's pending action (unless in standby): their
#: user state is read in the transaction that hands them out, one round trip less per event.
USER_STATE_KINDS = frozenset({"message", "postback"})

logger = logging.getLogger(__name__)

#: How many times the webhook's insert is tried when the database picks it as a deadlock victim.
DEADLOCK_RETRIES = 3

def _same_table_subqueries(dialect: Any) -> bool:
    """Whether an ``UPDATE`` may read its own table in a subquery (not MySQL; MariaDB since 10.3)."""
    return dialect.name != "mysql" or bool(getattr(dialect, "is_mariadb", False))


def lease_owner(tag: str = "") -> str:
    """The name this process holds leases under (the ``owner`` of ``amp_lease`` and ``amp_job``):
    ``host:pid``, and ``:tag`` when given; at most 96 characters."""
    name = f"{socket.gethostname()[:48]}:{os.getpid()}"
    return f"{name}:{tag[:40]}" if tag else name


@dataclass
class Claimed:
    """An event taken out of the inbox to be handled now."""

    id: int
    event: Event
    attempts: int  # including this one
    #: The user's ``(action, action_args, lang)``, read (and ``last_use`` set) in the transaction
    #: that handed the event out, for the events routed by the user's state (see
    #: :data:`USER_STATE_KINDS`); ``None`` when not read.
    user: tuple[str | None, dict[str, Any], str | None] | None = None
    #: The user's next ready events, oldest first, read in the same transaction and not started:
    #: :meth:`Inbox.next_event` starts them one by one without reading the inbox again.
    ahead: tuple[Any, ...] = field(default=(), repr=False)
    #: The user's state while the event is handled (see :class:`~flask_ampalibe.storage.Store`):
    #: its writes are committed with the event's outcome.
    unit: Unit | None = field(default=None, repr=False)

    @property
    def redelivered(self) -> bool:
        """Whether an earlier attempt may have run (a worker died while handling it)."""
        return self.attempts > 1


class Inbox(InboxQueries):
    """Inbox operations on a :class:`~flask_ampalibe.storage.Store`'s database.

    The transaction that hands out an event (:meth:`take`, :meth:`next_event`) reads its user's
    state into a unit of the store (:attr:`Claimed.unit`); the one that records its outcome
    (:meth:`finish`, ``next_event(finished=...)``) writes the unit's buffered changes first.
    :meth:`putback` and :meth:`release` drop them.

    :param store: the app's store (its engine and tables).
    :param max_attempts: how many times an event may be started without finishing (the worker
        handling it died, or was stopped past its graceful timeout) before it is marked failed.
    :param clock: the time in epoch seconds (``time.time``), which leases, reception and finish times
        and ages are measured on; tests pass their own to let a lease expire without waiting and to
        know an age exactly.
    :param webhook_engine: the engine of the webhook's inserts and the lease renewals
        (``make_engine(url, webhook=True)``: a pool of its own, so the ack never waits for a
        connection behind the handlers); by default the store's.
    """

    def __init__(self, store: Store, max_attempts: int = 5, clock: Callable[[], float] = time.time,
                 webhook_engine: Any = None) -> None:
        self.store = store
        self.webhook_engine = webhook_engine if webhook_engine is not None else store.engine
        self.max_attempts = max_attempts
        #: Told of recorded and finished events (``recorded(n)``, ``finished(outcome)``): the
        #: dashboard's in-memory counters, when it is on (see :mod:`flask_ampalibe.dashboard`).
        self.counters: Any = None
        self.clock = clock
        self._group: GroupCommit[list[dict[str, Any]], list[str]] = GroupCommit(self._record_alone,
                                                                                self._record_many)

    # -- the webhook path -----------------------------------------------------------------
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
                        insert_ignore(conn, leases, [{"user_id": u, "owner": None, "expires_at": 0.0} for u in users])
                break
            except DBAPIError as exc:
                # On MariaDB the inserts and the executor's updates of the same index can deadlock
                # under load; the server rolled back, so writing again is safe (and beats a 503).
                if attempt == DEADLOCK_RETRIES or not is_deadlock(exc):
                    raise
                logger.info("webhook insert chosen as a deadlock victim; writing it again (%s)", attempt)
        if self.counters is not None and users:
            self.counters.recorded(sum(1 for r in rows if r["status"] == PENDING))

    @property
    def group_commit(self) -> GroupCommit[list[dict[str, Any]], list[str]]:
        """The webhook's group commit (its ``writes`` and ``shared_writes`` counters show batching)."""
        return self._group

    # -- leases ---------------------------------------------------------------------------
    def claim(self, user_id: str, owner: str, seconds: float) -> bool:
        """Take ``user_id``'s lease if it is free or expired."""
        now = self.clock()
        with self.engine.begin() as conn:
            taken = conn.execute(sql.claim, {"uid": user_id, "now": now, "new_owner": owner, "until": now + seconds})
        return taken.rowcount == 1

    def renew(self, owner: str, seconds: float, users: Iterable[str]) -> int:
        """Extend the leases ``owner`` holds on ``users`` (those it is handling right now).

        Only those: a lease this owner still holds on another user (its release failed during a
        database outage) must expire, so that the user's events go on elsewhere.

        :returns: how many leases were extended.
        """
        users = list(users)
        if not users:
            return 0
        with self.webhook_engine.begin() as conn:
            return conn.execute(
                leases.update().where(leases.c.owner == owner, leases.c.user_id.in_(users))
                .values(expires_at=self.clock() + seconds)
            ).rowcount

    def release(self, user_id: str, owner: str) -> bool:
        """Give ``user_id``'s lease back (and drop the state changes of an event of theirs not finished).

        :returns: whether the user has unfinished events (recorded while the lease was held,
            their recorder found it taken: the caller should try again).  Checked in the same
            transaction, so such an event is either seen here or finds the lease free.
        """
        self.store.close_units_of(user_id)
        with self.engine.begin() as conn:
            conn.execute(sql.release, {"uid": user_id, "holder": owner})
            return self._has_work(conn, user_id)

    def take(self, user_id: str, owner: str, seconds: float) -> Claimed | None:
        """Claim ``user_id``'s lease if it is free or expired and take their oldest unfinished event.

        One transaction: :meth:`claim` and the first :meth:`next_event`.  When the user has no
        event left the lease is given back at once.

        :returns: the event, or ``None`` (lease held by someone else, or nothing to do).
        """
        now = self.clock()
        with self.engine.begin() as conn:
            taken = conn.execute(sql.claim, {"uid": user_id, "now": now, "new_owner": owner, "until": now + seconds})
            if taken.rowcount != 1:
                return None
            claimed = self._next(conn, user_id, owner, now)
        return self._handed_out(claimed)

    def next_event(self, user_id: str, owner: str, seconds: float, finished: Claimed | None = None,
                   error: BaseException | None = None) -> Claimed | None:
        """Mark the user's oldest unfinished event running and return it (lease holder only).

        When there is none, the lease is given back in the same transaction: an event recorded
        meanwhile is either seen here or finds the lease free (its recorder's claim waits for
        this transaction's row lock), so the caller need not :meth:`release`.

        Up to :data:`READ_AHEAD` of the user's events are read at once; while ``finished``
        carries events read with it (:attr:`Claimed.ahead`), the next of them is started in one
        statement that also checks the lease is still held (with at least half its time left)
        and that no unfinished event of the user comes before it; otherwise the lease is
        renewed and the inbox read again.  Events read ahead are not started, so a worker that
        dies leaves them pending, their attempts uncounted.

        :param finished: an event this worker just handled, recorded as :meth:`finish` does, on
            the same connection; whatever happens next cannot undo it (and send its reply
            again): server databases commit it first, on its own; SQLite takes the next step in
            a savepoint of the same transaction (one write transaction per event instead of two).
        :param error: what ``finished``'s handler raised.
        :returns: the event, or ``None`` (nothing left, or the lease was lost to another worker).
        """
        with self.engine.connect() as conn:
            if finished is not None and conn.dialect.name == "sqlite":
                # One transaction, so one turn of the write lock per event: the step runs after
                # the outcome, and its failure never undoes the outcome.  (Server databases
                # commit first: a deadlock there rolls back the whole transaction.)
                claimed = self._commit_finish(conn, finished, error,
                                              lambda: self._sqlite_step(conn, user_id, owner, seconds, finished))
                return self._handed_out(claimed)
            if finished is not None:
                self._commit_finish(conn, finished, error)
            with conn.begin():
                claimed = self._step(conn, user_id, owner, seconds, finished)
        return self._handed_out(claimed)

    def _sqlite_step(self, conn: Any, user_id: str, owner: str, seconds: float, finished: Claimed) -> Claimed | None:
        """:meth:`_step` in the outcome's transaction on SQLite, where it must not undo the outcome.

        After the user's last event read (nothing read ahead) the step is most often the single
        statement that gives the lease back: run alone, since SQLite undoes a failed statement
        without the rest of its transaction.  Anything more runs in a savepoint, so that a
        failure halfway (an event started, then an error) is undone as a whole.
        """
        idle = not finished.ahead
        if idle and conn.execute(sql.release_if_idle, {"uid": user_id, "holder": owner}).rowcount == 1:
            return None
        with conn.begin_nested():
            return self._step(conn, user_id, owner, seconds, finished, release_tried=idle)

    def _step(self, conn: Any, user_id: str, owner: str, seconds: float, finished: Claimed | None,
              release_tried: bool = False) -> Claimed | None:
        """:meth:`next_event`'s transaction after the outcome: start the next event, or give the lease back.

        :param release_tried: the lease could not be given back a moment ago in this transaction
            (:meth:`_sqlite_step`): do not try again.
        """
        now = self.clock()
        if finished is not None and finished.ahead and _same_table_subqueries(conn.dialect):
            claimed = self._start_ahead(conn, user_id, owner, now + seconds / 2, finished.ahead)
            if claimed is not None:
                return claimed
        # Nothing read ahead: probably the user's last event, so first try to give the lease
        # back if nothing is left.  SQLite runs one write transaction at a time, so the check
        # and the release need no lock first; server databases renew (lock) the lease first.
        idle = {"uid": user_id, "holder": owner} if finished is not None and not finished.ahead else None
        serialized = conn.dialect.name == "sqlite"
        if idle and serialized and not release_tried and conn.execute(sql.release_if_idle, idle).rowcount == 1:
            return None
        # Renewing the lease checks that it is still ours and, on server databases, locks
        # its row until the end of the transaction.
        held = conn.execute(sql.renew_one, {"uid": user_id, "holder": owner, "until": now + seconds})
        if held.rowcount != 1:
            return None  # the lease expired and someone else took it: stop
        if idle and not serialized and conn.execute(sql.release_if_idle, idle).rowcount == 1:
            return None
        return self._next(conn, user_id, owner, now, READ_AHEAD)

    def _handed_out(self, claimed: Claimed | None) -> Claimed | None:
        """Once the transaction that started ``claimed`` committed: its user's state is served
        from its unit (not before, or a rolled-back hand-out would leave a unit nobody writes)."""
        if claimed is not None and claimed.unit is not None:
            self.store.adopt_unit(claimed.unit)
        return claimed

    def _start_ahead(self, conn: Any, user_id: str, owner: str, fresh_until: float,
                     ahead: tuple[Any, ...]) -> Claimed | None:
        """Start the first event read ahead, if it is still the user's next and the lease ours;
        ``None`` leaves it to the full step (which also gives up a poison event)."""
        row = ahead[0]
        if row.attempts >= self.max_attempts:
            return None
        try:
            event = Event.from_json(row.event_key, user_id, row.timestamp, row.body)
        except Exception:
            return None
        started = conn.execute(sql.start_read_ahead, {"event_id": row.id, "uid": user_id, "holder": owner,
                                                   "fresh_until": fresh_until, "ts": row.timestamp})
        if started.rowcount != 1:
            return None
        return self._claimed(conn, row.id, event, row.attempts + 1, ahead[1:])

    def _next(self, conn: Any, user_id: str, owner: str, now: float, read: int = 1) -> Claimed | None:
        """With the lease held and renewed: mark the oldest unfinished event running (and read up
        to ``read`` - 1 more after it), or release."""
        while True:
            started = read == 1 and conn.dialect.update_returning
            if started:
                rows = conn.execute(sql.start_oldest, {"uid": user_id}).all()
            else:
                rows = conn.execute(sql.oldest if read == 1 else sql.read_ahead, {"uid": user_id}).all()
            if not rows:
                conn.execute(sql.release, {"uid": user_id, "holder": owner})
                return None
            for i, row in enumerate(rows):
                attempts = row.attempts - 1 if started else row.attempts  # before this one
                if attempts >= self.max_attempts:
                    # Every earlier attempt died with its worker: a poison event must not block the user.
                    logger.error("event %s of user %s given up after %s attempts that never finished",
                                 row.event_key, user_id, attempts)
                    self._give_up(conn, row.id, attempts, now,
                                  f"Given up after {attempts} attempts: the process handling this event died "
                                  f"(or was stopped) each time before the handler returned. Check the workers' "
                                  f"logs, then replay it with `ampalibe inbox replay {row.id}`.")
                    continue
                try:
                    event = Event.from_json(row.event_key, user_id, row.timestamp, row.body)
                except Exception as exc:  # recorded by an older version, or edited by hand: it can never run
                    logger.error("event %s of user %s cannot be read back: %r", row.event_key, user_id, exc)
                    self._give_up(conn, row.id, attempts + 1, now,
                                  "The recorded event cannot be read back, so no handler ran: "
                                  + "".join(traceback.format_exception(exc))[-4000:])
                    continue
                if not started:
                    conn.execute(sql.start, {"event_id": row.id, "n": attempts + 1})
                return self._claimed(conn, row.id, event, attempts + 1, tuple(rows[i + 1:]))
            # every event read was given up: read again

    def _give_up(self, conn: Any, event_id: int, attempts: int, now: float, error: str) -> None:
        conn.execute(sql.give_up, {"event_id": event_id, "n": attempts, "now": now, "err": error})
        if self.counters is not None:
            self.counters.finished(FAILED)

    def _claimed(self, conn: Any, event_id: int, event: Event, attempts: int, ahead: tuple[Any, ...]) -> Claimed:
        """The event just started, with the user's state (read when its kind is routed by it)."""
        touch = event.kind in USER_STATE_KINDS and not event.standby
        unit, user = self.store.open_unit(event.sender_id, conn, touch)
        return Claimed(event_id, event, attempts, user, ahead, unit)

    def putback(self, claimed: Claimed) -> None:
        """Return an event taken by :meth:`next_event` but not started (shutdown began) to pending."""
        if claimed.unit is not None:
            self.store.close_unit(claimed.unit)
        with self.engine.begin() as conn:
            conn.execute(inbox.update().where(inbox.c.id == claimed.id, inbox.c.status == RUNNING)
                         .values(status=PENDING, attempts=claimed.attempts - 1))

    def finish(self, claimed: Claimed, error: BaseException | None = None) -> None:
        """Mark an event handled, or failed with ``error``'s traceback, with the state changes of
        its handler (committed or dropped together)."""
        with self.engine.connect() as conn:
            self._commit_finish(conn, claimed, error)

    def _commit_finish(self, conn: Any, claimed: Claimed, error: BaseException | None,
                       then: Callable[[], Claimed | None] | None = None) -> Claimed | None:
        """The outcome and the unit's writes in one transaction; the unit is done either way.

        :param then: run in the same transaction once the outcome is written, without undoing it
            when it fails (:meth:`_sqlite_step`); what it returns is returned, and what it raises
            is raised once the outcome is committed.
        """
        unit = claimed.unit
        try:
            try:
                with conn.begin():
                    self._finish(conn, claimed, error, self.clock())
                    result, failure = _attempt(then)
            except (DataError, UnicodeError) as exc:
                if unit is None or not unit.has_writes:
                    raise
                # The database refused a value the handler set (a key too long for its column...):
                # handling the event again would meet the same refusal, so it fails, without them.
                logger.error("event %s of user %s failed: the database refused its state changes (%s)",
                             claimed.event.key, claimed.event.sender_id, type(exc).__name__)
                with conn.begin():
                    self._finish(conn, claimed, exc, self.clock())  # the unit is closed: no writes
                    result, failure = _attempt(then)
        finally:
            if unit is not None:
                self.store.close_unit(unit)
        if failure is not None:
            raise failure
        return result

    def _finish(self, conn: Any, claimed: Claimed, error: BaseException | None, now: float) -> None:
        if claimed.unit is not None:  # the handler's state changes: they commit with the outcome, or neither does
            self.store.flush_unit(conn, claimed.unit)
        values: dict[str, Any] = {"event_id": claimed.id, "outcome": DONE, "now": now, "err": None}
        if error is not None:
            values.update(outcome=FAILED, err="".join(traceback.format_exception(error))[-8000:])
        if conn.execute(sql.end, values).rowcount and self.counters is not None:
            self.counters.finished(values["outcome"])

    def has_work(self, user_id: str) -> bool:
        """Whether ``user_id`` has unfinished events."""
        with read_only(self.engine) as conn:
            return self._has_work(conn, user_id)

    @staticmethod
    def _has_work(conn: Any, user_id: str) -> bool:
        return conn.execute(sql.any_unfinished, {"uid": user_id}).first() is not None


def _attempt(then: Callable[[], Claimed | None] | None) -> tuple[Claimed | None, Exception | None]:
    """What ``then()`` returned, or the error it raised (``then`` may be ``None``: nothing to do)."""
    if then is None:
        return None, None
    try:
        return then(), None
    except Exception as exc:  # the step undid its own part (see Inbox._sqlite_step); the outcome stays
        return None, exc


def _row(event: Event, now: float) -> dict[str, Any]:
    if event.problem is None:
        return {"event_key": event.key, "user_id": event.sender_id, "kind": event.kind, "timestamp": event.timestamp,
                "body": event.to_json(), "status": PENDING, "attempts": 0, "error": None, "received_at": now,
                "finished_at": None}
    return {"event_key": event.key or rejected_key(event), "user_id": event.sender_id, "kind": event.kind,
            "timestamp": event.timestamp, "body": event.to_json(), "status": REJECTED, "attempts": 0, "error": event.problem, "received_at": now,
            "finished_at": now}


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
