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
minute of the benchmark).  Once it is over :data:`WAL_LIMIT` bytes, the thread holds every
writer of every process for a moment (ahead of the writers waiting in
:mod:`~flask_ampalibe.writequeue`) and runs a ``TRUNCATE`` checkpoint: the pages the last
``PASSIVE`` one left, then the log emptied (5-15 ms measured).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

from .forks import renew_in_child
from .writequeue import WriteLocks

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


class _File:
    """A database file this process wrote lately."""

    __slots__ = ("queue", "last_write", "empty_after")

    def __init__(self, queue: WriteLocks) -> None:
        self.queue = queue  # its write queue: holds every writer while the log is emptied
        self.last_write = time.monotonic()
        self.empty_after = 0.0  # when the log may be emptied again (a reader kept it busy)


class _Checkpointer:
    """The files this process wrote lately, and its checkpoint thread (started on the first write;
    a forked child starts its own, see :func:`~flask_ampalibe.forks.renew_in_child`)."""

    def __init__(self) -> None:
        self._reset()
        renew_in_child(self._reset)

    def _reset(self) -> None:
        self.files: dict[str, _File] = {}
        self._started = False
        self._lock = threading.Lock()

    def wrote(self, path: str, queue: WriteLocks) -> None:
        known = self.files.get(path)
        if known is None:
            self.files[path] = _File(queue)
        else:
            known.last_write = time.monotonic()
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
            for path, file in list(self.files.items()):
                last = file.last_write
                conn = conns.get(path)
                try:
                    if conn is None:
                        conn = conns[path] = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                        conn.execute("PRAGMA busy_timeout=1000")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if _size(path + "-wal") > WAL_LIMIT and now >= file.empty_after:
                        _empty_log(conn, path, file)
                except sqlite3.Error as exc:  # busy, or the file went away: the next turn tries again
                    logger.debug("checkpoint of %s failed: %s", path, exc)
                if now - last > IDLE_AFTER and file.last_write == last:
                    self.files.pop(path, None)  # written again later: registered again
                    if conn is not None:
                        conns.pop(path, None)
                        conn.close()


def _empty_log(conn: sqlite3.Connection, path: str, file: _File) -> None:
    """Copy the rest of ``path``'s log into it and empty the log, every writer held meanwhile."""
    with file.queue.all_writers_held() as held:
        # Not if the writers did not let go in time, or another process emptied it meanwhile.
        if not held or _size(path + "-wal") <= WAL_LIMIT:
            return
        conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.execute("PRAGMA busy_timeout=1000")
    if busy:  # a reader kept its snapshot: do not hold the writers again at every turn
        file.empty_after = time.monotonic() + TRUNCATE_RETRY
        logger.debug("could not empty the log of %s yet: a reader uses it", path)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


_checkpointer = _Checkpointer()


def written(path: str, queue: WriteLocks) -> None:
    """A write transaction of this process is starting on the SQLite file ``path``, whose writers
    (of every process) queue in ``queue``."""
    _checkpointer.wrote(path, queue)
