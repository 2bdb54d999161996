"""Executors: where and when recorded events are handled.

All share one loop (:meth:`Executor.drain`): claim a user's lease, handle their events oldest
first, release.  They differ in *when* it runs:

- :class:`InlineExecutor` — inside the request, before the 200 (tests, debugging);
- :class:`ThreadExecutor` — in a thread pool of the web worker, after the 200 (the default);
- :class:`PollingExecutor` — records only; a separate ``flask ampalibe worker`` process
  (a :class:`ThreadExecutor` driven by polling) handles the events.

The interface is small on purpose (``notify``, ``start``, ``shutdown``) so that a distributed
executor (Celery, …) can take its place.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from .inbox import Claimed, Inbox

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "PollingExecutor", "make_executor"]

logger = logging.getLogger(__name__)

Handle = Callable[[Claimed], "BaseException | None"]


class Executor:
    """Base class: runs :meth:`drain` for users that have events.

    :param inbox: where events are recorded.
    :param handle: runs one event; returns the handler's exception, if it raised.
    :param lease_seconds: how long a claimed user stays reserved without renewal.
    """

    def __init__(self, inbox: Inbox, handle: Handle, lease_seconds: float = 30.0, poll_seconds: float = 2.0,
                 retention_seconds: float = 7 * 86400.0) -> None:
        self.inbox = inbox
        self.handle = handle
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.retention_seconds = retention_seconds
        self.stopping = threading.Event()
        self.owner = ""
        self._new_owner()

    def _new_owner(self) -> None:
        self.owner = f"{socket.gethostname()[:48]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def notify(self, users: Iterable[str]) -> None:
        """Events were recorded for ``users``: get them handled."""
        raise NotImplementedError

    def start(self) -> None:
        """Start background threads, if this executor has any (idempotent)."""

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking work; wait up to ``timeout`` seconds for running handlers."""
        self.stopping.set()

    def drain(self, user_id: str) -> int:
        """Handle ``user_id``'s unfinished events, one at a time, oldest first, if no one else is.

        :returns: how many events were handled.
        """
        handled = 0
        while not self.stopping.is_set():
            if not self.inbox.claim(user_id, self.owner, self.lease_seconds):
                return handled  # another worker holds it; it re-checks for new events before leaving
            try:
                while not self.stopping.is_set():
                    claimed = self.inbox.next_event(user_id, self.owner, self.lease_seconds)
                    if claimed is None:
                        break
                    error = self.handle(claimed)
                    self.inbox.finish(claimed, error)
                    handled += 1
            finally:
                self.inbox.release(user_id, self.owner)
            # An event recorded while we held the lease may have found it taken: look once more.
            if not self.inbox.has_work(user_id):
                break
        return handled

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
    """Only records: a separate ``flask ampalibe worker`` process handles the events."""

    def notify(self, users: Iterable[str]) -> None:
        pass


class ThreadExecutor(Executor):
    """Handles events in a thread pool after the response; one user at a time, users in parallel.

    A background thread renews the leases this process holds, picks up abandoned work every
    ``poll_seconds`` and purges old handled events.  Threads start on first use in each process
    (never at import, and again after a fork).
    """

    def __init__(self, inbox: Inbox, handle: Handle, threads: int = 8, **kwargs: float) -> None:
        super().__init__(inbox, handle, **kwargs)
        self.threads = threads
        self._lock = threading.Lock()
        self._active: dict[str, bool] = {}  # user -> "notified again while running"
        self._futures: set[Future[None]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._sweeper: threading.Thread | None = None
        self._pid = 0

    def start(self) -> None:
        if self._pid == os.getpid() or self.stopping.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            if self._pid:  # forked: the parent's threads and owner id do not carry over
                self._new_owner()
                self._active.clear()
                self._futures.clear()
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ampalibe")
            self._sweeper = threading.Thread(target=self._sweep_loop, name="ampalibe-sweeper", daemon=True)
            self._sweeper.start()
            self._pid = os.getpid()

    def notify(self, users: Iterable[str]) -> None:
        self.start()
        with self._lock:
            if self._pool is None or self.stopping.is_set():
                return  # recorded; another worker (or the next start) handles it
            for user_id in users:
                if user_id in self._active:
                    self._active[user_id] = True
                    continue
                self._active[user_id] = False
                future = self._pool.submit(self._run, user_id)
                self._futures.add(future)
                future.add_done_callback(self._futures.discard)

    def _run(self, user_id: str) -> None:
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
        last_purge = 0.0
        while not self.stopping.wait(self.poll_seconds):
            try:
                self.inbox.renew(self.owner, self.lease_seconds)
                self.sweep()
                if time.monotonic() - last_purge > 600:
                    last_purge = time.monotonic()
                    self.inbox.purge(self.retention_seconds)
            except Exception:
                logger.exception("inbox sweep failed; retrying in %.1f s", self.poll_seconds)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Finish running handlers (up to ``timeout`` s); unstarted events stay recorded for others."""
        self.stopping.set()
        with self._lock:
            pool, futures = self._pool, list(self._futures)
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        wait(futures, timeout=timeout)

    def run_forever(self) -> None:
        """Poll for work until :meth:`shutdown` (the ``flask ampalibe worker`` loop)."""
        self.start()
        self.sweep()
        while not self.stopping.wait(self.poll_seconds):
            pass


def make_executor(kind: str, inbox: Inbox, handle: Handle, threads: int, lease_seconds: float,
                  poll_seconds: float, retention_seconds: float) -> Executor:
    """The executor named by ``AMPALIBE_EXECUTOR``."""
    kwargs = dict(lease_seconds=lease_seconds, poll_seconds=poll_seconds, retention_seconds=retention_seconds)
    if kind == "inline":
        return InlineExecutor(inbox, handle, **kwargs)
    if kind == "worker":
        return PollingExecutor(inbox, handle, **kwargs)
    return ThreadExecutor(inbox, handle, threads=threads, **kwargs)
