"""The operator's dashboard and the Prometheus endpoint.

Off unless configured: the pages need ``AMPALIBE_DASHBOARD_PASSWORD`` (``AMP_DASHBOARD_PASSWORD``
in ``.env``), the endpoint ``AMPALIBE_METRICS_TOKEN`` (``AMP_METRICS_TOKEN``); both live under
``AMPALIBE_DASHBOARD_PATH`` (default ``/_ampalibe/``).  :func:`init_dashboard` is called by
:meth:`flask_ampalibe.Ampalibe.init_app`; it registers the Blueprint (:mod:`.views`) and hooks
the counters (:mod:`.counters`) into the inbox and the Graph client.

Pages: overview (charts of the last hour), pending (per user), failed (replay, discard), jobs,
users (search by PSID, forget).  See the README, "Dashboard and metrics".
"""
from __future__ import annotations

from typing import Any

from flask import Flask

from .counters import Counters

__all__ = ["init_dashboard", "Counters"]


def init_dashboard(app: Flask, state: Any) -> bool:
    """Register the dashboard on ``app`` when a password or a metrics token is set.

    :returns: whether it was registered.
    :raises ConfigurationError: when a metrics token is set but ``prometheus_client`` is missing.
    """
    settings = state.settings
    if not settings.dashboard_password and not settings.metrics_token:
        return False
    metrics = None
    if settings.metrics_token:
        from .metrics import process_metrics
        metrics = process_metrics()
    state.counters = Counters(state.store, metrics)
    state.inbox.counters = state.counters
    state.chat.on_error = state.counters.graph_error
    from .views import bp
    app.register_blueprint(bp, url_prefix=settings.dashboard_path.rstrip("/"))
    return True
