"""The CPU priority of the threads that run handlers (``AMPALIBE_HANDLER_NICE``).

A web worker runs two kinds of threads: gunicorn's request threads, which record an event and send
the 200, and the executor's threads, which run the handlers after it. On a machine whose cores are
busy, the kernel shares them out among every runnable thread alike, so hundreds of handler threads
take the CPU from the few that acknowledge.  On Linux each thread has a nice value of its own: the
executor's threads raise theirs (lower their priority) when they start, so the kernel runs request
threads first and gives the handlers what is left, and the whole of a core when nothing else wants
it.  Nothing else changes: a handler is not made slower while the CPU is free.

A thread starts with the nice value of the thread that starts it, and raising it again needs a
privilege (``CAP_SYS_NICE``) most processes lack: the library's own threads that must keep the
process's priority (the SQLite checkpoint, the executor's sweeper) are started before any handler
runs, by the app's set-up and the executor's start.  Elsewhere than Linux, nice values belong to
processes, so nothing is changed there.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["lower", "NICE_MAX"]

logger = logging.getLogger(__name__)

#: The highest nice value (the lowest priority) Linux has.
NICE_MAX = 19

_SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "setpriority")


def lower(increment: int) -> int:
    """Give the calling thread the nice value of the process's main thread plus ``increment``
    (at most 19), unless it has a higher one already; return the thread's nice value.

    ``0``, or a system whose nice values are per process, changes nothing.  A thread that
    cannot change it (a sandbox that forbids it) keeps its priority and logs why at debug level.
    """
    if not _SUPPORTED:
        return 0
    current = _own()
    target = min(NICE_MAX, _process() + increment)
    if increment <= 0 or current >= target:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), target)
    except OSError as exc:  # pragma: no cover - seccomp or a similar sandbox
        logger.debug("could not lower the priority of %s: %s", threading.current_thread().name, exc)
        return current
    return target


def _process() -> int:
    """The main thread's nice value (on Linux its thread id is the process id)."""
    return os.getpriority(os.PRIO_PROCESS, os.getpid())


def _own() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
