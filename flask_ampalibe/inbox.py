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
savepoint of the outcome's transaction; on a server database a failure there rolls both back and
the outcome is then committed on its own first); the state
changes its handler made (buffered by the store, see :class:`~flask_ampalibe.storage.Store`) are
written in that same transaction, so both commit or neither does.  A worker reads several of its
user's events at once (:data:`READ_AHEAD`) and starts them one by one without reading the inbox
again; events read but not started stay ``pending``.  The steps of a process's threads that
arrive together share a transaction (:mod:`flask_ampalibe.inbox_steps`), as the webhook's writes
do (:mod:`flask_ampalibe.groupcommit`).

Items of a webhook body that cannot be valid Messenger events (see
:attr:`flask_ampalibe.events.Event.problem`) are stored as ``rejected`` with their reason, for
operators; they are never handed out.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sqlalchemy.exc import DataError

from .engine import read_only
from .events import Event
from .groupcommit import GroupCommit
from .storage import Store
from . import inbox_sql as sql
from .inbox_sql import DONE, FAILED, PENDING, READ_AHEAD, REJECTED, RUNNING, STATUSES
from .inbox_queries import InboxQueries
from .inbox_record import InboxRecorder
from .journal import Journal
from .inbox_steps import STEP_BATCH, Advance, InboxSteps, Step, StepResult, Take, Writes, attempt
from .tables import inbox, leases
from .unit import Unit

__all__ = ["Inbox", "Claimed", "PENDING", "RUNNING", "DONE", "FAILED", "REJECTED", "STATUSES", "USER_STATE_KINDS",
           "lease_owner"]

#: Kinds of events the dispatcher routes by the user's pending action (unless in standby): their
#: user state is read in the transaction that hands them out, one round trip less per event.
USER_STATE_KINDS = frozenset({"message", "postback"})

logger = logging.getLogger(__name__)


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


class Inbox(InboxSteps, InboxRecorder, InboxQueries):
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
    :param journal: on an SQLite file, record the webhook's events in a journal file of their own
        and move them into the inbox when a user is taken up (see :mod:`flask_ampalibe.journal`;
        ``AMPALIBE_WEBHOOK_JOURNAL``); ignored on other databases.
    """

    def __init__(self, store: Store, max_attempts: int = 5, clock: Callable[[], float] = time.time,
                 webhook_engine: Any = None, journal: bool = False) -> None:
        self.store = store
        #: The webhook's journal (an SQLite file database only), or ``None``.
        self.journal = Journal.of(store.engine) if journal else None
        self.webhook_engine = webhook_engine if webhook_engine is not None else store.engine
        self.max_attempts = max_attempts
        #: Told of recorded and finished events (``recorded(n)``, ``finished(outcome)``): the
        #: dashboard's in-memory counters, when it is on (see :mod:`flask_ampalibe.dashboard`).
        self.counters: Any = None
        self.clock = clock
        self._group: GroupCommit[list[dict[str, Any]], list[str]] = GroupCommit(self._record_alone,
                                                                                self._record_many)
        # The executor's steps of concurrent threads (:meth:`take`, :meth:`next_event` with an
        # outcome) share transactions (up to STEP_BATCH in one).  On SQLite, whose one writer at a
        # time makes each transaction a turn of a lock every thread and process waits for
        # (_steps_shared); on server databases, where a transaction costs two round trips and a
        # commit, and one transaction per event and step would take three (_steps_locked).
        serialized = store.engine.dialect.name == "sqlite"
        self._steps: GroupCommit[Step, StepResult] = GroupCommit(
            self._step_alone, self._steps_shared if serialized else self._steps_locked, STEP_BATCH)

    @property
    def step_commit(self) -> GroupCommit[Step, StepResult]:
        """The executor's steps' group commit (``writes`` and ``shared_writes`` show the sharing;
        see :mod:`flask_ampalibe.inbox_steps`)."""
        return self._steps

    # -- leases ---------------------------------------------------------------------------
    def claim(self, user_id: str, owner: str, seconds: float) -> bool:
        """Take ``user_id``'s lease if it is free or expired (what the webhook recorded moved in first)."""
        self.settle()
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

        One transaction: :meth:`claim` and the first :meth:`next_event` (shared with other
        threads' steps, see :attr:`step_commit`).  When the user has no event left the
        lease is given back at once.

        :returns: the event, or ``None`` (lease held by someone else, or nothing to do).
        """
        step = Take(user_id, owner, seconds)
        claimed, failure = self._steps.submit(step)
        if failure is not None:  # a shared transaction failed, then this step alone
            raise failure
        return self._handed_out(claimed)

    def _take(self, conn: Any, step: Take) -> Claimed | None:
        now = self.clock()
        taken = conn.execute(sql.claim, {"uid": step.user_id, "now": now, "new_owner": step.owner,
                                         "until": now + step.seconds})
        if taken.rowcount != 1:
            return None
        return self._next(conn, step.user_id, step.owner, now)

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
            again).  Steps of other threads that arrive together share the transaction
            (:attr:`step_commit`).  SQLite takes the next step in a savepoint of the outcome's
            transaction (one write transaction per event instead of two).  Server databases
            take it in the same transaction when it is shared, and should anything in that
            transaction fail, run each of its steps again on its own, the outcome committed
            first; a step alone commits its outcome first.
        :param error: what ``finished``'s handler raised.
        :returns: the event, or ``None`` (nothing left, or the lease was lost to another worker).
        """
        if finished is None:
            moving = self.unmoved()
            with self.engine.connect() as conn, conn.begin():
                mark = self.move(conn, moving)
                claimed = self._step(conn, user_id, owner, seconds, None)
            self.moved(mark)
            return self._handed_out(claimed)
        step = Advance(user_id, owner, seconds, finished, error, _writes_of(finished))
        try:
            claimed, failure = self._steps.submit(step)
        finally:
            self._close(finished)
        claimed = self._handed_out(claimed)
        if failure is not None:
            raise failure
        return claimed

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
        try:
            with self.engine.connect() as conn:
                self._commit_finish(conn, claimed, error, _writes_of(claimed))
        finally:
            self._close(claimed)

    def _close(self, claimed: Claimed) -> None:
        if claimed.unit is not None:
            self.store.close_unit(claimed.unit)

    def _commit_finish(self, conn: Any, claimed: Claimed, error: BaseException | None, writes: Writes | None,
                       then: Callable[..., Claimed | None] | None = None, *args: Any) -> StepResult:
        """The outcome and the handler's state changes (``writes``) in one transaction.

        :param then: run (with ``args``) in the same transaction once the outcome is written,
            without undoing it when it fails (:meth:`_sqlite_step`).
        :returns: what ``then`` returned, and what it raised (the outcome is committed).
        """
        try:
            with conn.begin():
                outcome = self._finish(conn, claimed, error, self.clock(), writes)
                result = attempt(then, *args)
        except (DataError, UnicodeError) as exc:
            if not writes or not any(writes):
                raise
            # The database refused a value the handler set (a key too long for its column...):
            # handling the event again would meet the same refusal, so it fails, without them.
            logger.error("event %s of user %s failed: the database refused its state changes (%s)",
                         claimed.event.key, claimed.event.sender_id, type(exc).__name__)
            with conn.begin():
                outcome = self._finish(conn, claimed, exc, self.clock(), None)
                result = attempt(then, *args)
        self._count(outcome)
        return result

    def _finish(self, conn: Any, claimed: Claimed, error: BaseException | None, now: float,
                writes: Writes | None) -> str | None:
        """Write the outcome (and the handler's state changes); returns it, or ``None`` when the
        event was no longer running (its lease was lost and someone else finished it)."""
        if writes is not None:  # the handler's state changes: they commit with the outcome, or neither does
            self.store.write_unit(conn, claimed.event.sender_id, writes)
        values: dict[str, Any] = {"event_id": claimed.id, "outcome": DONE, "now": now, "err": None}
        if error is not None:
            values.update(outcome=FAILED, err="".join(traceback.format_exception(error))[-8000:])
        return values["outcome"] if conn.execute(sql.end, values).rowcount else None

    def _count(self, outcome: str | None) -> None:
        if outcome is not None and self.counters is not None:
            self.counters.finished(outcome)

    def has_work(self, user_id: str) -> bool:
        """Whether ``user_id`` has unfinished events (what the webhook's journal holds moved in first)."""
        self.settle()
        with read_only(self.engine) as conn:
            return self._has_work(conn, user_id)

    @staticmethod
    def _has_work(conn: Any, user_id: str) -> bool:
        return conn.execute(sql.any_unfinished, {"uid": user_id}).first() is not None


def _writes_of(claimed: Claimed) -> Writes | None:
    """The state changes of ``claimed``'s handler, taken from its unit (which stops serving them)."""
    return claimed.unit.take_writes() if claimed.unit is not None else None
