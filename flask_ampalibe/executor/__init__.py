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

from ..config import DEFAULT_MAX_CONCURRENCY, Settings
from ..inbox import Inbox
from .base import PURGE_EVERY, Executor, Handle, InlineExecutor, PollingExecutor
from .threads import ThreadExecutor

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "PollingExecutor", "make_executor", "thread_executor",
           "DEFAULT_MAX_CONCURRENCY", "Handle", "PURGE_EVERY"]


def make_executor(inbox: Inbox, handle: Handle, settings: Settings,
                  on_worker_ready: Callable[[], None] | None = None) -> Executor:
    """The executor that ``settings.executor`` (``AMPALIBE_EXECUTOR``) names, configured by
    ``settings``; ``on_worker_ready`` is the Celery executor's."""
    kind = settings.executor
    if kind == "celery":
        from ..celery_executor import CeleryExecutor  # Celery is an optional extra

        return CeleryExecutor(inbox, handle, broker_url=str(settings.celery_broker_url),
                              requeue_seconds=settings.celery_requeue_seconds, on_worker_ready=on_worker_ready,
                              **_timings(settings))
    if kind == "inline":
        return InlineExecutor(inbox, handle, **_timings(settings))
    if kind == "worker":
        return PollingExecutor(inbox, handle, **_timings(settings))
    return thread_executor(inbox, handle, settings)


def thread_executor(inbox: Inbox, handle: Handle, settings: Settings, threads: int | None = None,
                    fed_by_sweeps: bool = False) -> ThreadExecutor:
    """A :class:`ThreadExecutor` configured by ``settings`` (``threads``: instead of
    ``AMPALIBE_MAX_CONCURRENCY``; ``fed_by_sweeps``: for ``ampalibe worker``)."""
    return ThreadExecutor(inbox, handle, max_concurrency=threads or settings.max_concurrency,
                          fed_by_sweeps=fed_by_sweeps, gc_threshold=settings.gc_threshold,
                          nice=settings.handler_nice, **_timings(settings))


def _timings(settings: Settings) -> dict[str, Any]:
    return dict(lease_seconds=settings.lease_seconds, poll_seconds=settings.poll_seconds,
                retention_seconds=settings.retention_days * 86400)
