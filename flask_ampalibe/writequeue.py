"""SQLite's write queue: the writers of every process that share a database file take turns.

SQLite lets one writer in at a time and makes the others sleep in its busy handler, with a
back-off of 1 ms growing to 100 ms.  Here the threads of a process queue on a lock
(:class:`TurnLock`, the webhook's writes first) and the processes on a kernel lock of the file
``<db>-writelock`` (:class:`WriteLocks`), which hands the turn over as soon as a writer commits.
The engines (:mod:`flask_ampalibe.engine`) make their SQLite connections queue here.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .forks import renew_in_child

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite's busy handler only
    fcntl = None  # type: ignore[assignment]

__all__ = ["TurnLock", "WriteLocks", "YIELD_SECONDS"]

logger = logging.getLogger(__name__)


#: How long a thread waits for its process's SQLite write lock before leaving it to SQLite's busy
#: handler (a thread that opens a write transaction inside another one must not hang).
_WRITE_LOCK_TIMEOUT = 30.0
#: The longest a background (executor's) writer lets waiting foreground (webhook's) writers go first.
YIELD_SECONDS = 0.05


class TurnLock:
    """A process's turn at an SQLite file's write lock, foreground writers first.

    ``threading.Lock`` is not fair: a thread that holds the GIL takes a lock just released before
    the thread woken for it has run, so the executor's steps could pass the webhook's write again
    and again, and the ack would wait.  Here a background writer (the executor's, see
    :func:`~flask_ampalibe.engine.background_writes`) waits while a foreground one waits, up to
    :data:`YIELD_SECONDS`; the checkpoint that empties the log (``first``) goes before all.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent = 0  # foreground writers waiting
        self._first = 0  # writers waiting to go before all others
        #: Threads waiting for the lock now (foreground and background).
        self.waiting = 0

    def locked(self) -> bool:
        return self._held

    @property
    def urgent(self) -> bool:
        """Whether a foreground writer waits."""
        return self._urgent > 0

    def acquire(self, background: bool = False, timeout: float = _WRITE_LOCK_TIMEOUT, first: bool = False) -> bool:
        """:param first: go before every waiting writer (the checkpoint that empties the log)."""
        with self._cond:
            if not self._held and not self._first and not (background and self._urgent):
                self._held = True
                return True
            self.waiting += 1
            try:
                if first:
                    self._first += 1
                    try:
                        free = self._cond.wait_for(lambda: not self._held, timeout)
                    finally:
                        self._first -= 1
                elif background:
                    yield_until = time.monotonic() + YIELD_SECONDS
                    free = self._cond.wait_for(lambda: not self._held and not self._first and (
                        not self._urgent or time.monotonic() >= yield_until), timeout)
                else:
                    self._urgent += 1
                    try:
                        free = self._cond.wait_for(lambda: not self._held and not self._first, timeout)
                    finally:
                        self._urgent -= 1
            finally:
                self.waiting -= 1
            if free:
                self._held = True
            return free

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


class WriteLocks:
    """The per-process locks of one SQLite engine; a forked child gets new ones (a thread of the
    parent may have held them at the fork, and that thread does not exist in the child).

    :param path: where the processes sharing a database file queue for it (``<db>-writelock``,
        POSIX record locks: the kernel wakes the next writer as soon as one commits, where
        SQLite's busy handler would sleep 1-100 ms); ``None`` for in-memory databases.

    The processes take turns: the kernel does not hand a record lock to the process woken for it
    (the one that just unlocked may take it again first), so a writer announces that it waits
    (a shared lock on byte 1) while it waits for the write lock (byte 0), and a process lets such
    a waiter go first (it waits for byte 1 exclusively) before it takes byte 0.  Two busy workers
    alternate, and a worker's webhook never waits behind a run of the other's transactions.  A
    foreground (webhook) writer also holds byte 2 while it waits, so a transaction doing the
    executor's work can tell an ack that waits from another worker's executor (:meth:`others_waiting`).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.database = path[:-len("-writelock")] if path is not None else None  # the database file
        self._reset()
        renew_in_child(self._reset)

    def _reset(self) -> None:
        self.write = TurnLock()
        #: Background threads queue here first: only one of them at a time competes with the
        #: webhook's threads for :attr:`write`, so the ack waits less (see engine.background_writes).
        self.background_gate = threading.Lock()
        self._fd: int | None = None  # opened on first use in each process
        self._file_ok = fcntl is not None and self.path is not None

    def lock_file(self, foreground: bool = True) -> bool:
        """Wait for the other processes' writers (call with :attr:`write` held).

        :param foreground: a webhook's write (not the executor's): announced as such
            while it waits.
        """
        if not self._file_ok or self.path is None:
            return False
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fd = self._fd
            _lock(fd, fcntl.LOCK_EX, 1)  # after the writers that announced themselves
            _lock(fd, fcntl.LOCK_SH, 1)  # announce this one (a lock's type changes at once)
            if foreground:
                _lock(fd, fcntl.LOCK_SH, 2)  # ... as a webhook's write
            try:
                _lock(fd, fcntl.LOCK_EX, 0)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 2, 1)
            return True
        except OSError as exc:  # read-only folder, no lock support: SQLite's busy handler only
            logger.warning("no inter-process write queue for SQLite (%s); relying on its busy timeout", exc)
            self._file_ok = False
            return False

    def others_waiting(self, foreground: bool = False) -> bool:
        """Whether a foreground writer of this process, or a writer of another process, waits for
        the write lock (call with it held).

        :param foreground: only another process's foreground (webhook) writers count.
        """
        if self.write.urgent:
            return True
        if self._fd is None or not self._file_ok:
            return False
        byte = 2 if foreground else 1  # held (shared) by another process's waiters while they wait
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
        except OSError:
            return True
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, byte)
        return False

    def unlock_file(self) -> None:
        if self._fd is None:  # lock_file did not lock
            return
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)
        except OSError:  # pragma: no cover - released with the process anyway
            logger.exception("could not release the SQLite write queue lock")

    @contextmanager
    def all_writers_held(self) -> Iterator[bool]:
        """Hold every writer of every process, ahead of those waiting; yields whether it could."""
        if not self.write.acquire(first=True):
            yield False
            return
        locked = self.lock_file(foreground=True)  # the other processes' executors commit sooner
        try:
            yield True
        finally:
            if locked:
                self.unlock_file()
            self.write.release()


def _lock(fd: int, mode: int, byte: int) -> None:
    """``fcntl.lockf`` of one byte, waiting for it.

    The kernel's deadlock check sees processes, not threads: with two files locked this way (a
    database and its webhook journal, see :mod:`flask_ampalibe.journal`), a thread of one
    process holding the first while another of its threads waits for the second, and another
    process the other way round, looks like a deadlock (``EDEADLK``), though neither holder
    waits for anything.  It clears as soon as one of them commits: wait and try again (for up
    to :data:`_WRITE_LOCK_TIMEOUT`; then the error is raised, and SQLite's busy handler is left).
    """
    give_up = time.monotonic() + _WRITE_LOCK_TIMEOUT
    while True:
        try:
            fcntl.lockf(fd, mode, 1, byte)
            return
        except OSError as exc:
            if exc.errno != errno.EDEADLK or time.monotonic() > give_up:
                raise
            time.sleep(DEADLOCK_PAUSE)


#: Seconds between two tries of a file lock the kernel refused as a (false) deadlock.
DEADLOCK_PAUSE = 0.0005
