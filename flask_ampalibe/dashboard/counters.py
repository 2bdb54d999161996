"""The few counts the inbox does not keep by itself, kept cheaply.

- Events recorded and finished (by outcome): only as Prometheus counters, in memory (in the
  ``PROMETHEUS_MULTIPROC_DIR`` files under gunicorn), when the metrics endpoint is on.  The
  dashboard does not need them: it derives its rates from the inbox rows' own timestamps.
- Graph API errors by code: in memory, in per-minute buckets, and written to the ``amp_meta``
  table (one row per process and minute that had errors, ``graph_errors:<minute>:<host:pid>``)
  at most once every :attr:`Counters.flush_seconds`, so every worker's errors reach the
  dashboard.  Rows older than :data:`KEEP_MINUTES` are deleted by the next write.

Nothing here writes to the database on the path of an event that succeeds.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from typing import Any, Callable

from sqlalchemy import select

from ..engine import read_only
from ..storage import Store, upsert
from ..tables import meta

__all__ = ["Counters", "KEEP_MINUTES"]

logger = logging.getLogger(__name__)

#: Minutes of Graph error buckets kept (in memory and in ``amp_meta``).
KEEP_MINUTES = 120
_PREFIX = "graph_errors:"


class Counters:
    """Counts of one process for one app: told by the inbox and the Graph client.

    :param store: where Graph error buckets are written.
    :param metrics: the Prometheus counters (:func:`flask_ampalibe.dashboard.metrics.process_metrics`),
        or ``None`` when the metrics endpoint is off.
    :param clock: seconds since the epoch (tests shift it).
    :param flush_seconds: how long Graph error counts may wait in memory before being written.
    """

    def __init__(self, store: Store, metrics: Any = None, clock: Callable[[], float] = time.time,
                 flush_seconds: float = 10.0) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._graph: dict[int, Counter[str]] = {}
        self._dirty: set[int] = set()
        self._timer: threading.Timer | None = None
        self._pid = os.getpid()
        self._outcomes: dict[str, Any] = {}  # prometheus children by label: labels() costs more than inc()

    @property
    def owner(self) -> str:
        """This process, as written in the bucket rows: ``host:pid``."""
        return f"{socket.gethostname()[:24]}:{os.getpid()}"

    # -- told by the inbox and the Graph client -------------------------------------------------
    def recorded(self, count: int) -> None:
        """``count`` events were recorded by the webhook."""
        if self.metrics is not None:
            self.metrics.received.inc(count)

    def finished(self, outcome: str) -> None:
        """An event was handled (``done``) or given up (``failed``)."""
        if self.metrics is not None:
            child = self._outcomes.get(outcome)
            if child is None:
                child = self._outcomes[outcome] = self.metrics.handled.labels(outcome)
            child.inc()

    def graph_error(self, code: str) -> None:
        """A Graph request ended in error ``code``."""
        if self.metrics is not None:
            self.metrics.graph_errors.labels(code).inc()
        minute = int(self.clock() // 60)
        with self._lock:
            self._forked()
            self._graph.setdefault(minute, Counter())[code] += 1
            self._dirty.add(minute)
            if self._timer is None:
                self._timer = threading.Timer(self.flush_seconds, self._flush_quietly)
                self._timer.daemon = True
                self._timer.start()

    def _forked(self) -> None:
        if self._pid != os.getpid():  # the parent's counts are the parent's to write
            self._pid = os.getpid()
            self._graph.clear()
            self._dirty.clear()
            self._timer = None

    # -- writing and reading the buckets ------------------------------------------------------
    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.exception("could not write the Graph error counts; they stay in this process's memory")

    def close(self) -> None:
        """Write what is still in memory now (the process is stopping), without raising."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._flush_quietly()

    def flush(self) -> None:
        """Write the buckets counted since the last write (and delete expired rows)."""
        with self._lock:
            self._forked()
            self._timer = None
            dirty = {m: dict(self._graph[m]) for m in self._dirty if m in self._graph}
            self._dirty.clear()
            oldest = int(self.clock() // 60) - KEEP_MINUTES
            for minute in [m for m in self._graph if m < oldest]:
                del self._graph[minute]
        if not dirty:
            return
        owner = self.owner
        self.store.ensure()
        with self.store.engine.begin() as conn:
            for minute, codes in dirty.items():
                upsert(conn, meta, {"name": f"{_PREFIX}{minute}:{owner}", "value": _encode(codes)}, ["name"])
            expired = [name for name in conn.execute(select(meta.c.name).where(meta.c.name.like(_PREFIX + "%")))
                       .scalars() if _minute_of(name) < oldest]
            if expired:
                conn.execute(meta.delete().where(meta.c.name.in_(expired)))

    def graph_errors(self, since_minute: int) -> dict[int, Counter[str]]:
        """Graph errors by minute (since epoch) and code, from every process, since ``since_minute``.

        This process's counts come from memory (they may not be written yet), the others' from
        ``amp_meta``.
        """
        me = self.owner
        out: dict[int, Counter[str]] = {}
        self.store.ensure()
        with read_only(self.store.engine) as conn:
            rows = conn.execute(select(meta.c.name, meta.c.value).where(meta.c.name.like(_PREFIX + "%"))).all()
        for name, value in rows:
            minute = _minute_of(name)
            if minute < since_minute or name.endswith(":" + me):
                continue
            try:
                codes = json.loads(value)
            except ValueError:
                continue
            out.setdefault(minute, Counter()).update({str(k): int(v) for k, v in codes.items()})
        with self._lock:
            self._forked()
            for minute, codes in self._graph.items():
                if minute >= since_minute:
                    out.setdefault(minute, Counter()).update(codes)
        return out


def _minute_of(name: str) -> int:
    try:
        return int(name[len(_PREFIX):].split(":", 1)[0])
    except ValueError:
        return -1


def _encode(codes: dict[str, int]) -> str:
    """The counts as JSON within ``amp_meta.value``'s 191 characters (the rarest codes give way)."""
    kept = dict(sorted(codes.items(), key=lambda item: -item[1]))
    text = json.dumps(kept, separators=(",", ":"))
    while len(text) > 191 and kept:
        kept.popitem()
        text = json.dumps(kept, separators=(",", ":"))
    return text
