"""Executors: where and when recorded events are handled.

All share one loop (:meth:`Executor.drain`): claim a user's lease, handle their events oldest
first, release.  They differ in *when* it runs:

- :class:`InlineExecutor` — inside the request, before the 200 (tests, debugging);
- :class:`ThreadExecutor` — in a thread pool of the web worker, after the 200 (the default);
- :class:`PollingExecutor` — records only; a separate ``ampalibe worker`` process
  (a :class:`ThreadExecutor` driven by polling) handles the events.

The interface is small on purpose (``notify``, ``start``, ``shutdown``) so that a distributed
executor (Celery, …) can take its place.

Executors survive ``fork()`` (gunicorn's ``preload_app``, multiprocessing): the child gets its
own lease owner name, fresh locks, no inherited threads, and does not reuse the parent's
database connections.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from .engine import background_writes
from .inbox import Claimed, Inbox

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "PollingExecutor", "make_executor"]

logger = logging.getLogger(__name__)

Handle = Callable[[Claimed], "BaseException | None"]

#: Seconds between two purges of handled events older than the retention.
PURGE_EVERY = 600.0

_executors: "weakref.WeakSet[Executor]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Runs in the child right after fork(), when it has a single thread: nothing can hold the
    # locks being replaced.
    for executor in list(_executors):
        executor._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Executor:
    """Base class: runs :meth:`drain` for users that have events.

    :param inbox: where events are recorded.
    :param handle: runs one event; returns the handler's exception, if it raised.
    :param lease_seconds: how long a claimed user stays reserved without renewal.
    :param poll_seconds: how often abandoned work is looked for (thread and worker executors).
    :param retention_seconds: how long handled events are kept.
    """

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
        _executors.add(self)

    @property
    def owner(self) -> str:
        """The name this process's leases are held under (a new one in each process)."""
        pid = os.getpid()
        if self._owner_pid != pid:
            with self._owner_lock:
                if self._owner_pid != pid:
                    self._owner = f"{socket.gethostname()[:48]}:{pid}:{uuid.uuid4().hex[:12]}"
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

        :returns: how many events were handled.
        """
        if self.stopping.is_set():
            return 0
        owner = self.owner
        # ``take`` and ``next_event`` give the lease back themselves when the user has no event
        # left (None); other exits (shutdown, a database error) release it here.  A holder that
        # lost its lease stops: the new holder handles what is left.
        claimed = self.inbox.take(user_id, owner, self.lease_seconds)
        if claimed is None:
            return 0  # nothing to do, or another worker holds the user
        handled = 0
        try:
            if self.stopping.is_set():  # shutdown began: leave it to the next worker
                self.inbox.putback(claimed)
                return handled
            while True:
                error = self._handle(claimed)
                handled += 1
                if self.stopping.is_set():  # shutdown: finish this one, start no other
                    self.inbox.finish(claimed, error)
                    return handled
                claimed = self.inbox.next_event(user_id, owner, self.lease_seconds, finished=claimed, error=error)
                if claimed is None:
                    owner = ""  # released (or lost) inside next_event
                    return handled
        finally:
            if owner:
                self.inbox.release(user_id, owner)

    def _handle(self, claimed: Claimed) -> BaseException | None:
        try:
            return self.handle(claimed)
        except Exception as exc:  # the handler's errors are caught by ``handle``; this is a hook's or ours
            logger.exception("event %s of user %s could not be handled", claimed.event.key, claimed.event.sender_id)
            return exc

    def sweep(self) -> int:
        """Pick up events nobody is handling (missed wake-ups, expired leases); returns users woken."""
        users = self.inbox.ready_users()
        if users:
            self.notify(users)
        return len(users)


class InlineExecutor(Executor):
    """Handles events inside the request, before the response (for tests and debugging)."""

    def notify(self, users: Iterable[str]) -> None:
        for user_id in users:
            self.drain(user_id)


class PollingExecutor(Executor):
    """Only records: a separate ``ampalibe worker`` process handles the events."""

    def notify(self, users: Iterable[str]) -> None:
        pass


class ThreadExecutor(Executor):
    """Handles events in a thread pool after the response; one user at a time, users in parallel.

    A background thread renews the leases this process holds (every third of
    ``lease_seconds``, so a handler may run longer than the lease), picks up abandoned work
    every ``poll_seconds`` and purges old handled events.  Threads start on first use in each
    process (never at import, and again after a fork), or with :meth:`start`.

    :param threads: how many handlers run at once in this process.
    """

    def __init__(self, inbox: Inbox, handle: Handle, threads: int = 8, **kwargs: float) -> None:
        super().__init__(inbox, handle, **kwargs)
        self.threads = threads
        self._reset()

    def _reset(self) -> None:
        # Reentrant: a future that is already done runs its done-callback (which takes the lock)
        # inside ``add_done_callback``, under the lock ``notify`` holds.
        self._lock = threading.RLock()
        self._active: dict[str, bool] = {}  # user -> "notified again while running"
        self._futures: set[Future[None]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._sweeper: threading.Thread | None = None

    def _after_fork(self) -> None:
        super()._after_fork()
        self._reset()  # the parent's threads do not exist in the child

    def start(self) -> None:
        if self._pool is not None or self.stopping.is_set():
            return
        with self._lock:
            if self._pool is not None or self.stopping.is_set():
                return
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ampalibe")
            self._sweeper = threading.Thread(target=self._sweep_loop, name="ampalibe-sweeper", daemon=True)
            self._sweeper.start()

    def notify(self, users: Iterable[str]) -> None:
        self.start()
        with self._lock:
            if self._pool is None or self.stopping.is_set():
                return  # recorded; another worker (or the next start) handles it
            for user_id in users:
                if user_id in self._active:
                    self._active[user_id] = True
                    continue
                try:
                    future = self._pool.submit(self._run, user_id)
                except RuntimeError:  # the interpreter is exiting: the events stay recorded for others
                    logger.info("not handling events of user %s here: this process is exiting", user_id)
                    return
                self._active[user_id] = False
                self._futures.add(future)
                future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(self, user_id: str) -> None:
        with background_writes():  # the webhook's writes go first
            self._drain_while_notified(user_id)

    def _drain_while_notified(self, user_id: str) -> None:
        while True:
            try:
                self.drain(user_id)
            except Exception:
                logger.exception("could not handle events of user %s; they stay recorded and will be retried", user_id)
            with self._lock:
                if self._active.get(user_id) and not self.stopping.is_set():
                    self._active[user_id] = False
                    continue
                self._active.pop(user_id, None)
                return

    def _sweep_loop(self) -> None:
        with background_writes():
            self._upkeep()

    def _upkeep(self) -> None:
        # Renewing well inside the lease keeps it through a slow database or a busy moment; a
        # lease that lapses while its handler still runs lets another worker run the event too.
        tick = max(0.05, min(self.poll_seconds, self.lease_seconds / 3))
        next_sweep = next_purge = time.monotonic()
        while True:
            now = time.monotonic()
            try:
                if self._active:
                    self.inbox.renew(self.owner, self.lease_seconds)
                if now >= next_sweep:
                    next_sweep = now + self.poll_seconds
                    self.sweep()
                if now >= next_purge:
                    next_purge = now + PURGE_EVERY
                    self.inbox.purge(self.retention_seconds)
            except Exception:
                logger.exception("inbox upkeep failed; retrying in %.1f s", tick)
            if self.stopping.wait(tick):
                return

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Finish running handlers (up to ``timeout`` s); unstarted events stay recorded for others.

        :returns: whether every handler finished in time.  Those still running keep their
            lease until it expires; their events are then handled again (``redelivered=True``).
        """
        self.stopping.set()
        with self._lock:
            pool, futures = self._pool, list(self._futures)
        if pool is None:
            return True
        pool.shutdown(wait=False, cancel_futures=True)
        # Only the futures that were not cancelled: ``wait`` never counts a future cancelled by
        # ``shutdown(cancel_futures=True)`` as done, and would always sit out the whole timeout.
        _, running = wait([f for f in futures if not f.cancelled()], timeout=timeout)
        if running:
            logger.warning("%s bot handler(s) still running after %.1f s; their events will be handled again "
                           "once their lease expires", len(running), timeout)
        return not running


def make_executor(kind: str, inbox: Inbox, handle: Handle, threads: int, lease_seconds: float,
                  poll_seconds: float, retention_seconds: float) -> Executor:
    """The executor named by ``AMPALIBE_EXECUTOR``."""
    kwargs = dict(lease_seconds=lease_seconds, poll_seconds=poll_seconds, retention_seconds=retention_seconds)
    if kind == "inline":
        return InlineExecutor(inbox, handle, **kwargs)
    if kind == "worker":
        return PollingExecutor(inbox, handle, **kwargs)
    return ThreadExecutor(inbox, handle, threads=threads, **kwargs)
