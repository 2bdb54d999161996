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
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time

from .forks import renew_in_child

__all__ = ["CHECKPOINT_EVERY", "IDLE_AFTER", "written"]

logger = logging.getLogger(__name__)

#: Seconds between two checkpoints of a file written lately.
CHECKPOINT_EVERY = 0.5
#: Seconds without a write after which a file's checkpoint connection is closed.
IDLE_AFTER = 5.0

class _Checkpointer:
    """The files this process wrote lately, and its checkpoint thread (started on the first write;
    a forked child starts its own, see :func:`~flask_ampalibe.forks.renew_in_child`)."""

    def __init__(self) -> None:
        self._reset()
        renew_in_child(self._reset)

    def _reset(self) -> None:
        self.written: dict[str, float] = {}  # file -> when a transaction of this process last wrote it
        self._started = False
        self._lock = threading.Lock()

    def wrote(self, path: str) -> None:
        self.written[path] = time.monotonic()
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
                except sqlite3.Error as exc:  # busy, or the file went away: the next turn tries again
                    logger.debug("checkpoint of %s failed: %s", path, exc)
                if now - last > IDLE_AFTER and self.written.get(path) == last:
                    self.written.pop(path, None)  # written again later: registered again
                    if conn is not None:
                        conns.pop(path, None)
                        conn.close()


_checkpointer = _Checkpointer()


def written(path: str) -> None:
    """A write transaction of this process is starting on the SQLite file ``path``."""
    _checkpointer.wrote(path)
