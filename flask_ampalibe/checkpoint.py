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
import os
import sqlite3
import threading
import time

__all__ = ["CHECKPOINT_EVERY", "IDLE_AFTER", "written"]

logger = logging.getLogger(__name__)

#: Seconds between two checkpoints of a file written lately.
CHECKPOINT_EVERY = 0.5
#: Seconds without a write after which a file's checkpoint connection is closed.
IDLE_AFTER = 5.0

_written: dict[str, float] = {}  # file -> when a transaction of this process last wrote it
_thread_pid = 0  # the process whose checkpoint thread runs (a forked child starts its own)
_lock = threading.Lock()


def written(path: str) -> None:
    """A write transaction of this process is starting on the SQLite file ``path``."""
    global _thread_pid
    _written[path] = time.monotonic()
    if _thread_pid != os.getpid():
        with _lock:
            if _thread_pid != os.getpid():
                _thread_pid = os.getpid()
                threading.Thread(target=_checkpoint_forever, name="ampalibe-checkpoint", daemon=True).start()


def _checkpoint_forever() -> None:
    conns: dict[str, sqlite3.Connection] = {}
    while True:
        time.sleep(CHECKPOINT_EVERY)
        now = time.monotonic()
        for path, last in list(_written.items()):
            conn = conns.get(path)
            try:
                if conn is None:
                    conn = conns[path] = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA busy_timeout=1000")
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # busy, or the file went away: the next turn tries again
                logger.debug("checkpoint of %s failed: %s", path, exc)
            if now - last > IDLE_AFTER and _written.get(path) == last:
                _written.pop(path, None)  # written again later: registered again
                if conn is not None:
                    conns.pop(path, None)
                    conn.close()
