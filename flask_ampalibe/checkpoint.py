"""SQLite's WAL checkpoints, off the write path: one thread per process.

In WAL mode SQLite copies the log back into the database file (a *checkpoint*, with an fsync)
whenever a commit grows the log past 1,000 pages, inside that ``COMMIT``: the writer that
happens to cross the mark holds the file's write lock (and every writer of every process waits
for it) while the checkpoint runs.  The library's connections turn that off
(``PRAGMA wal_autocheckpoint=0``).  Instead, every write transaction tells :func:`written`, and a
daemon thread of the process runs a ``PASSIVE`` checkpoint of each file written lately, every
:data:`CHECKPOINT_EVERY` seconds, on a connection of its own outside any transaction: it copies
what no reader still needs and never blocks the writers (nor they it).  A file nobody wrote for
:data:`IDLE_AFTER` seconds gets a last checkpoint and its connection is closed.

A ``PASSIVE`` checkpoint never starts the log over: SQLite does that when a writer begins after
a checkpoint copied the whole log, and under steady writes another writer has always added to it
first, so the ``-wal`` file would grow for as long as the load lasts (400-560 MB after one
minute of the benchmark).  Once it is over :data:`WAL_LIMIT`
bytes, the thread holds every writer of every process for a moment (ahead of the writers waiting
in :mod:`~flask_ampalibe.writequeue`) and runs a ``TRUNCATE`` checkpoint: the pages the last
``PASSIVE`` one left, then the log emptied (5-15 ms measured).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Callable, ContextManager

from .forks import renew_in_child

__all__ = ["CHECKPOINT_EVERY", "IDLE_AFTER", "WAL_LIMIT", "written"]

logger = logging.getLogger(__name__)

#: Seconds between two checkpoints of a file written lately.
CHECKPOINT_EVERY = 0.5
#: Seconds without a write after which a file's checkpoint connection is closed.
IDLE_AFTER = 5.0
#: Size of a ``-wal`` file above which it is emptied (see the module's docstring).
WAL_LIMIT = 32 * 1024 * 1024
#: Milliseconds the emptying checkpoint waits for readers of the log (the writers wait as long),
#: and seconds before it tries again when a reader kept it from emptying the log.
TRUNCATE_WAIT_MS, TRUNCATE_RETRY = 100, 5.0

#: Holds every writer of a file while entered; gives whether it could
#: (:meth:`flask_ampalibe.writequeue.WriteLocks.all_writers_held`).
HoldWriters = Callable[[], ContextManager[bool]]


class _Checkpointer:
    """The files this process wrote lately, and its checkpoint thread (started on the first write;
    a forked child starts its own, see :func:`~flask_ampalibe.forks.renew_in_child`)."""

    def __init__(self) -> None:
        self._reset()
        renew_in_child(self._reset)

    def _reset(self) -> None:
        self.written: dict[str, float] = {}  # file -> when a transaction of this process last wrote it
        self.holders: dict[str, HoldWriters] = {}
        self.empty_after: dict[str, float] = {}  # file -> when the log may be emptied again
        self._started = False
        self._lock = threading.Lock()

    def wrote(self, path: str, hold_writers: HoldWriters) -> None:
        self.written[path] = time.monotonic()
        if path not in self.holders:
            self.holders[path] = hold_writers
        if not self._started:
            with self._lock:
                if not self._started:
                    self._started = True
                    threading.Thread(target=self._run, name="ampalibe-checkpoint", daemon=True).start()

    def _run(self) -> None:
        conns: dict[str, sqlite3.Connection] = {}
        while True:
            time.sleep(CHECKPOINT_EVERY)
            now = time.monotonic()
            for path, last in list(self.written.items()):
                conn = conns.get(path)
                try:
                    if conn is None:
                        conn = conns[path] = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                        conn.execute("PRAGMA busy_timeout=1000")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if _size(path + "-wal") > WAL_LIMIT and now >= self.empty_after.get(path, 0.0):
                        self._empty_log(conn, path)
                except sqlite3.Error as exc:  # busy, or the file went away: the next turn tries again
                    logger.debug("checkpoint of %s failed: %s", path, exc)
                if now - last > IDLE_AFTER and self.written.get(path) == last:
                    self.written.pop(path, None)  # written again later: registered again
                    self.holders.pop(path, None)
                    self.empty_after.pop(path, None)
                    if conn is not None:
                        conns.pop(path, None)
                        conn.close()

    def _empty_log(self, conn: sqlite3.Connection, path: str) -> None:
        """Copy the rest of ``path``'s log into it and empty the log, every writer held meanwhile."""
        hold = self.holders.get(path)
        if hold is None:
            return
        with hold() as held:
            # Not if the writers did not let go in time, or another process emptied it meanwhile.
            if not held or _size(path + "-wal") <= WAL_LIMIT:
                return
            conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute("PRAGMA busy_timeout=1000")
        if busy:  # a reader kept its snapshot: do not hold the writers again at every turn
            self.empty_after[path] = time.monotonic() + TRUNCATE_RETRY
            logger.debug("could not empty the log of %s yet: a reader uses it", path)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


_checkpointer = _Checkpointer()


def written(path: str, hold_writers: HoldWriters) -> None:
    """A write transaction of this process is starting on the SQLite file ``path``;
    ``hold_writers()`` holds every writer of that file (of every process) while it is entered."""
    _checkpointer.wrote(path, hold_writers)
