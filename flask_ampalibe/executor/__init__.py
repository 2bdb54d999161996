"""Executors: where and when recorded events are handled.

All share the same steps: claim a user's lease and take their oldest event
(:meth:`Executor.begin`), handle it, record the outcome and take the next one
(:meth:`Executor.advance`) until none is left.  :meth:`Executor.drain` runs those steps for one
user in the calling thread: it is *the* "drain one user" function an executor built on another
mechanism (Celery, …) calls.  The executors differ in *where and when* the steps run:

- :class:`InlineExecutor` — inside the request, before the 200 (tests, debugging);
- :class:`ThreadExecutor` — in the web worker after the 200 (the default): elastic threads and,
  for ``async def`` bots, the process's event loop, up to ``max_concurrency`` events at once;
- :class:`PollingExecutor` — records only; a separate ``ampalibe worker`` process
  (a :class:`ThreadExecutor` driven by polling) handles the events.

The interface is small on purpose — :meth:`~Executor.notify` (users), :meth:`~Executor.start`,
:meth:`~Executor.shutdown` — so that a distributed executor can take its place.  The Celery executor
(:class:`flask_ampalibe.celery_executor.CeleryExecutor`, ``AMPALIBE_EXECUTOR=celery``) sends a Celery
task per user, whose workers run :meth:`Executor.drain`.

Executors survive ``fork()`` (gunicorn's ``preload_app``, multiprocessing): the child gets its
own lease owner name, fresh locks, no inherited threads, and does not reuse the parent's
database connections.
"""
from __future__ import annotations

from typing import Any, Callable

from ..config import DEFAULT_GC_THRESHOLD, DEFAULT_MAX_CONCURRENCY
from ..inbox import Inbox
from .base import PURGE_EVERY, Executor, Handle, InlineExecutor, PollingExecutor
from .threads import ThreadExecutor

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "PollingExecutor", "make_executor",
           "DEFAULT_MAX_CONCURRENCY", "Handle", "PURGE_EVERY"]


def make_executor(kind: str, inbox: Inbox, handle: Handle, threads: int, lease_seconds: float,
                  poll_seconds: float, retention_seconds: float, broker_url: str | None = None,
                  requeue_seconds: float = 30.0, on_worker_ready: Callable[[], None] | None = None,
                  gc_threshold: int = DEFAULT_GC_THRESHOLD) -> Executor:
    """The executor named by ``AMPALIBE_EXECUTOR``; ``threads`` is ``AMPALIBE_MAX_CONCURRENCY``;
    ``broker_url``, ``requeue_seconds`` and ``on_worker_ready`` are the Celery executor's,
    ``gc_threshold`` (``AMPALIBE_GC_THRESHOLD``) the thread executor's."""
    kwargs: dict[str, Any] = dict(lease_seconds=lease_seconds, poll_seconds=poll_seconds,
                                  retention_seconds=retention_seconds)
    if kind == "celery":
        from ..celery_executor import CeleryExecutor  # Celery is an optional extra

        return CeleryExecutor(inbox, handle, broker_url=str(broker_url), requeue_seconds=requeue_seconds,
                              on_worker_ready=on_worker_ready, **kwargs)
    if kind == "inline":
        return InlineExecutor(inbox, handle, **kwargs)
    if kind == "worker":
        return PollingExecutor(inbox, handle, **kwargs)
    return ThreadExecutor(inbox, handle, max_concurrency=threads, gc_threshold=gc_threshold, **kwargs)
