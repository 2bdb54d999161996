"""The steps every executor shares: claim a user's lease, take their oldest event, handle it,
record the outcome and take the next one; and the two executors that need nothing more.

:meth:`Executor.drain` runs those steps for one user in the calling thread: it is *the* "drain
one user" function an executor built on another mechanism (threads, Celery, …) calls.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Callable, Iterable

from ..dberrors import is_unavailable, outage_for
from ..engine import background_writes
from ..forks import renew_in_child
from ..inbox import Claimed, Inbox, lease_owner
from ..schema import SchemaError

__all__ = ["Executor", "InlineExecutor", "PollingExecutor", "Handle", "PURGE_EVERY", "MAX_BACKOFF"]

logger = logging.getLogger(__name__)

Handle = Callable[[Claimed], "BaseException | None"]

#: Seconds between two purges of handled events older than the retention.
PURGE_EVERY = 600.0
#: Seconds between two prunes of the webhook journal's moved rows (see flask_ampalibe.journal).
PRUNE_JOURNAL_EVERY = 5.0
#: The longest pause between two tries while the database is unreachable (the pauses double).
MAX_BACKOFF = 60.0
#: Users whose lease is free a sweep takes up (at least, for an executor fed by sweeps: as many
#: as its free slots).
SWEEP_USERS = 100
#: After a sweep that found work to look for again (:attr:`Executor.sweep_more`), how often to
#: look for a free slot to sweep again.
SWEEP_AGAIN = 0.25


class Executor:
    """Base class: runs :meth:`drain` for users that have events.

    :param inbox: where events are recorded.
    :param handle: runs one event; returns the handler's exception, if it raised.
    :param lease_seconds: how long a claimed user stays reserved without renewal.
    :param poll_seconds: how often abandoned work is looked for (thread and worker executors).
    :param retention_seconds: how long handled events are kept.
    """

    #: Whether only its sweeps give this executor work (nothing notifies it: ``ampalibe worker``).
    #: A sweep then takes up as many users as it has free slots (:meth:`room`), and while sweeps
    #: find work the next one comes as soon as a slot is free.
    fed_by_sweeps = False
    #: Whether the last :meth:`sweep` found work it should look for again as soon as a slot is free.
    sweep_more = False
    _wanting_until = 0.0  # monotonic: until then this executor asked for work (see sweep)
    _recorded = 0  # the webhook's writes in this process at the last sweep (see sweep)

    def __init__(self, inbox: Inbox, handle: Handle, lease_seconds: float = 30.0, poll_seconds: float = 2.0,
                 retention_seconds: float = 7 * 86400.0) -> None:
        self.inbox = inbox
        self.handle = handle
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.retention_seconds = retention_seconds
        self.stopping = threading.Event()
        self._owner = ""
        self._owner_pid = 0
        self._owner_lock = threading.Lock()
        renew_in_child(self._after_fork)

    @property
    def owner(self) -> str:
        """The name this process's leases are held under (a new one in each process)."""
        pid = os.getpid()
        if self._owner_pid != pid:
            with self._owner_lock:
                if self._owner_pid != pid:
                    # A tag of its own: two executors of one process must not renew each other's leases.
                    self._owner = lease_owner(uuid.uuid4().hex[:12])
                    self._owner_pid = pid
        return self._owner

    def _after_fork(self) -> None:
        """Forget what belongs to the parent process (called in a forked child)."""
        self._owner_lock = threading.Lock()
        self._owner_pid = 0  # the child's leases get a name of their own
        stopped, self.stopping = self.stopping.is_set(), threading.Event()
        if stopped:
            self.stopping.set()
        try:
            # The parent's pooled connections must not be used by two processes.
            self.inbox.engine.dispose(close=False)
            self.inbox.webhook_engine.dispose(close=False)
        except Exception:  # pragma: no cover - never fatal for the child
            logger.exception("could not reset the database pool after fork")

    def notify(self, users: Iterable[str]) -> None:
        """Events were recorded for ``users``: get them handled."""
        raise NotImplementedError

    def start(self) -> None:
        """Start background threads, if this executor has any (idempotent)."""

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop taking work; wait up to ``timeout`` seconds for running handlers.

        :returns: whether no handler is still running.
        """
        self.stopping.set()
        return True

    def drain(self, user_id: str) -> int:
        """Handle ``user_id``'s unfinished events, one at a time, oldest first, if no one else is.

        The shared "drain one user" function: blocking, in the calling thread (``async def``
        bot code runs on the process's event loop meanwhile).  On shutdown it finishes the
        running event and starts no other.

        :returns: how many events were handled.
        """
        claimed = self.begin(user_id)
        handled = 0
        while claimed is not None:
            try:
                error = self._handle(claimed)
            except BaseException:  # KeyboardInterrupt, SystemExit: the lease must not outlive us
                self.inbox.release(user_id, self.owner)
                raise
            handled += 1
            claimed = self.advance(user_id, claimed, error)
        return handled

    def begin(self, user_id: str) -> Claimed | None:
        """Claim ``user_id``'s lease and take their oldest unfinished event.

        :returns: the event to handle now (its lease held by :attr:`owner`), or ``None``:
            nothing to do, another worker holds the user, or shutdown began.
        """
        if self.stopping.is_set():
            return None
        owner = self.owner
        # ``take`` gives the lease back itself when the user has no event left.
        claimed = self.inbox.take(user_id, owner, self.lease_seconds)
        if claimed is None:
            return None
        if self.stopping.is_set():  # shutdown began: leave it to the next worker
            self.putback(user_id, claimed)
            return None
        return claimed

    def advance(self, user_id: str, finished: Claimed, error: BaseException | None) -> Claimed | None:
        """Record ``finished``'s outcome and take the user's next event (one transaction).

        :returns: the next event, or ``None`` with the lease given back (nothing left, the lease
            was lost to another worker, or shutdown began).
        """
        if self.stopping.is_set():  # shutdown: finish this one, start no other
            self.set_aside(user_id, finished, error)
            return None
        owner = self.owner
        try:
            # ``next_event`` gives the lease back itself when it returns None.
            return self.inbox.next_event(user_id, owner, self.lease_seconds, finished=finished, error=error)
        except BaseException:
            self._release_quietly(user_id, owner)
            raise

    def set_aside(self, user_id: str, finished: Claimed, error: BaseException | None) -> bool:
        """Record ``finished``'s outcome and give the lease back without taking the next event,
        so that any worker may take the user up.

        :returns: whether the user has unfinished events left.
        """
        owner = self.owner
        try:
            self.inbox.finish(finished, error)
        except BaseException:
            self._release_quietly(user_id, owner)
            raise
        return self.inbox.release(user_id, owner)

    def putback(self, user_id: str, claimed: Claimed) -> None:
        """Give back an event taken by :meth:`begin` or :meth:`advance` but not started, and the lease."""
        try:
            self.inbox.putback(claimed)
        finally:
            self._release_quietly(user_id, self.owner)

    def _release_quietly(self, user_id: str, owner: str) -> None:
        try:
            self.inbox.release(user_id, owner)
        except Exception as exc:  # the lease expires anyway
            if is_unavailable(exc):  # an outage: reported once (dberrors.Outage)
                outage_for(self.inbox.engine).failed(exc)
                return
            logger.exception("could not give back the lease of user %s; it expires in %.0f s", user_id,
                             self.lease_seconds)

    def _handle(self, claimed: Claimed) -> BaseException | None:
        try:
            outcome = self.handle(claimed)
            return outcome if isinstance(outcome, BaseException) else None  # anything else is success
        except Exception as exc:  # the handler's errors are caught by ``handle``; this is a hook's or ours
            logger.exception("event %s of user %s could not be handled", claimed.event.key, claimed.event.sender_id)
            return exc

    def sweep(self) -> int:
        """Pick up events nobody is handling (missed wake-ups, expired leases, and all the work of
        an executor :attr:`fed_by_sweeps`); returns users woken.

        A dead worker's users (their leases expired) are taken up as many at once as there are
        free slots (:meth:`room`): nobody else is about to start them.  Of the users whose lease
        is free, most are queued in the process their webhook notified, so a sweep takes up only
        :data:`SWEEP_USERS` of them (more gained nothing in the bench, and two processes may then
        try the same users; see bench/ANALYSIS.md), unless sweeps are all this executor's work.
        Sets :attr:`sweep_more`.
        """
        room = self.room()
        users = self.inbox.ready_users(max(SWEEP_USERS, room) if self.fed_by_sweeps else SWEEP_USERS)
        expired = self.inbox.expired_users(room) if room > 0 and not self.fed_by_sweeps else []
        self.sweep_more = bool(expired) or (self.fed_by_sweeps and bool(users))
        users = list(dict.fromkeys([*users, *expired]))
        recorded = self.inbox.group_commit.writes  # the webhook's writes in this process
        acking, self._recorded = recorded != self._recorded, recorded
        if users:
            self.notify(users)
        elif (self.idle() and not acking and time.monotonic() >= self._wanting_until
              and self.inbox.waiting_elsewhere(self.owner)):
            # Another worker drains a backlog alone: ask it for some of its users, and sweep
            # again soon meanwhile, since those it gives up come back free.  Not while this
            # process answers webhooks: on SQLite its handlers' writes would take turns at the
            # write lock with the other process's acks, which its own acks go before.
            self.inbox.want_work(self.owner)
            self._wanting_until = time.monotonic() + self.poll_seconds
        if time.monotonic() < self._wanting_until:
            self.sweep_more = True
        return len(users)

    def idle(self) -> bool:
        """Whether this executor handles nothing now and could (for executors that have slots)."""
        return False

    def balance(self) -> int:
        """Give up some users to a worker that asked for work (:meth:`Inbox.want_work`), if this
        executor holds users; returns how many it will give up (for executors that have slots)."""
        return 0

    def leased_users(self) -> list[str]:
        """The users whose events this process is handling now (their leases are renewed)."""
        return []

    def room(self) -> int:
        """How many more users this process could start now, nothing of its own waiting (for
        executors that have slots)."""
        return 0

    def tick(self) -> None:
        """Called by the upkeep loop at each of its ticks (for executors that adjust themselves)."""

    def _upkeep(self) -> None:
        """The sweeper thread of executors that handle events in the background: renew the leases
        of :meth:`leased_users`, :meth:`sweep` every ``poll_seconds``, purge old events, until
        :attr:`stopping`."""
        # Renewing well inside the lease keeps it through a slow database or a busy moment; a
        # lease that lapses while its handler still runs lets another worker run the event too.
        tick = max(0.05, min(self.poll_seconds, self.lease_seconds / 3))
        next_renew = next_sweep = next_purge = swept = time.monotonic()
        next_prune = next_renew + PRUNE_JOURNAL_EVERY
        outage = outage_for(self.inbox.engine)
        backoff = tick
        while True:
            now = time.monotonic()
            try:
                if now >= next_renew:
                    next_renew = now + tick
                    self.tick()
                    self.balance()
                    users = self.leased_users()
                    if users:
                        # Only the users being handled: a lease left behind (its release failed in a
                        # database outage) must expire, or its user would wait as long as we are busy.
                        # Not a background write: with hundreds of handler threads queued for SQLite's
                        # write lock, a renewal behind them would let leases lapse (and events run twice).
                        self.inbox.renew(self.owner, self.lease_seconds, users)
                with background_writes():
                    if now >= next_sweep:
                        if self.sweep_more and self.room() <= 0 and now < swept + self.poll_seconds:
                            next_sweep = now + SWEEP_AGAIN  # no slot free yet for more
                        else:
                            self.sweep()  # work found: look again as soon as a slot is free
                            swept = now
                            next_sweep = now + (SWEEP_AGAIN if self.sweep_more else self.poll_seconds)
                    if now >= next_prune:
                        next_prune = now + PRUNE_JOURNAL_EVERY
                        self.inbox.prune_journal()
                    if now >= next_purge:
                        next_purge = now + PURGE_EVERY
                        self.inbox.purge(self.retention_seconds)
                backoff = tick
                pause = max(0.0, min(next_renew, next_sweep) - time.monotonic())
                outage.succeeded()
            except Exception as exc:
                pause = tick
                if is_unavailable(exc) or isinstance(exc, SchemaError):
                    # The database is down (or not upgraded): one line per try, at growing intervals,
                    # instead of a traceback every tick.  Events stay recorded; the webhook answers 503.
                    backoff = pause = min(backoff * 2, MAX_BACKOFF) if outage.down else backoff
                    next_sweep = now  # sweep as soon as it is back
                    outage.retry_failed(exc, pause)
                else:
                    logger.exception("inbox upkeep failed; retrying in %.1f s", tick)
            if self.stopping.wait(pause):
                return


class InlineExecutor(Executor):
    """Handles events inside the request, before the response (for tests and debugging)."""

    def notify(self, users: Iterable[str]) -> None:
        for user_id in users:
            self.drain(user_id)


class PollingExecutor(Executor):
    """Only records: a separate ``ampalibe worker`` process handles the events."""

    def notify(self, users: Iterable[str]) -> None:
        pass
