"""The Prometheus endpoint: ``<dashboard path>metrics`` (``prometheus_client``, an optional extra).

Two kinds of figures:

- counters of this process (events recorded by the webhook, events finished by outcome, Graph
  errors by code), kept by ``prometheus_client``.  Under gunicorn every worker counts its own;
  with ``PROMETHEUS_MULTIPROC_DIR`` set (``flask_ampalibe.gunicorn_conf`` sets it) the endpoint
  adds up every worker's files, whichever worker answers the scrape;
- gauges read from the database at scrape time (events by status, backlog, age of the oldest
  unfinished event, last run of each scheduled job): the same in every worker, never added up.

Every name starts with ``ampalibe_``.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import ConfigurationError

__all__ = ["ProcessMetrics", "process_metrics", "require_prometheus", "exposition"]

_lock = threading.Lock()
_metrics: "ProcessMetrics | None" = None


def require_prometheus() -> Any:
    """``prometheus_client``, or a :class:`ConfigurationError` saying how to install it."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "AMPALIBE_METRICS_TOKEN (AMP_METRICS_TOKEN) is set, so the Prometheus endpoint needs "
            "prometheus_client: pip install 'flask_ampalibe[metrics]' (or unset the token)."
        ) from None
    return prometheus_client


@dataclass(eq=False)
class ProcessMetrics:
    """The counters of this process (one set per process, shared by its apps)."""

    received: Any
    handled: Any
    graph_errors: Any

    def collect(self) -> Iterator[Any]:
        for counter in (self.received, self.handled, self.graph_errors):
            yield from counter.collect()


def process_metrics() -> ProcessMetrics:
    """The process's counters, created on first use (not registered on the global registry)."""
    global _metrics
    with _lock:
        if _metrics is None:
            prom = require_prometheus()
            _metrics = ProcessMetrics(
                received=prom.Counter("ampalibe_events_received", "Events recorded by the webhook.",
                                      registry=None),
                handled=prom.Counter("ampalibe_events_handled", "Events finished, by outcome (done, failed).",
                                     ["outcome"], registry=None),
                graph_errors=prom.Counter("ampalibe_graph_errors", "Graph API requests that ended in an error, "
                                          "by Graph error code (or http_<status>, or the exception).",
                                          ["code"], registry=None),
            )
        return _metrics


class _InboxCollector:
    """Gauges read from the database when scraped."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from .queries import job_runs, status_counts

        counts, oldest = status_counts(self.state.store)
        now = time.time()
        by_status = GaugeMetricFamily("ampalibe_inbox_events", "Events in the inbox, by status.", labels=["status"])
        for status, count in sorted(counts.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily("ampalibe_inbox_backlog", "Events recorded and not yet handled (pending or running).",
                                value=counts.get("pending", 0) + counts.get("running", 0))
        yield GaugeMetricFamily("ampalibe_inbox_oldest_pending_age_seconds",
                                "Age of the oldest event not yet handled (0 when none).",
                                value=max(0.0, now - oldest) if oldest else 0.0)
        last = GaugeMetricFamily("ampalibe_job_last_run_timestamp_seconds",
                                 "When each scheduled job last ran (Unix time).", labels=["job"])
        for job in job_runs(self.state):
            if job["ran_at"]:
                last.add_metric([job["name"]], job["ran_at"])
        yield last


def exposition(state: Any) -> tuple[bytes, str]:
    """The text Prometheus scrapes, and its content type."""
    prom = require_prometheus()
    from prometheus_client import multiprocess

    registry = prom.CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"):
        process_metrics()  # this worker's files exist even before its first event
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(process_metrics())
    registry.register(_InboxCollector(state))
    return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
