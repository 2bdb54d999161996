"""The dashboard's Blueprint: pages, actions, the Prometheus endpoint, and their guards.

Every page, action and static file asks for HTTP Basic credentials
(``AMPALIBE_DASHBOARD_USER`` / ``AMPALIBE_DASHBOARD_PASSWORD``) and answers 404 while no
password is set.  Actions are POSTs carrying a CSRF token (signed with a key derived from the
password, valid a day); a POST without a valid one is refused with 400, one from another origin
with 403.  Each action is logged (warning level, logger ``flask_ampalibe.dashboard``) with the
operator's name and address.  The Prometheus endpoint ``metrics`` has its own bearer token.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response as BaseResponse

from . import queries
from .charts import line_chart

__all__ = ["bp"]

logger = logging.getLogger("flask_ampalibe.dashboard")

bp = Blueprint("ampalibe_dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")

CSRF_MAX_AGE = 86400
#: What an action's redirect may say (by code, so a link cannot make the page say anything else).
DONE_MESSAGES = {
    "replayed": "{n} failed event(s) put back in the queue.",
    "discarded": "{n} failed event(s) deleted.",
    "forgotten": "User {user} forgotten: {n} row(s) deleted.",
}


def _state() -> Any:
    return current_app.extensions["ampalibe"]


def _text(body: str, status: int, **headers: str) -> Response:
    return Response(body, status=status, mimetype="text/plain", headers=headers)


# -- guards -------------------------------------------------------------------------------------
@bp.before_request
def _authenticate() -> Response | None:
    settings = _state().settings
    if request.endpoint == "ampalibe_dashboard.metrics":
        return None  # its own bearer token
    password = settings.dashboard_password
    if not password:
        return _text("Not Found", 404)
    user = str(settings.dashboard_user or "admin")
    auth = request.authorization
    given_user = (auth.username or "") if auth is not None and auth.type == "basic" else ""
    given_password = (auth.password or "") if auth is not None and auth.type == "basic" else ""
    same_user = hmac.compare_digest(given_user.encode(), user.encode())
    same_password = hmac.compare_digest(given_password.encode(), str(password).encode())
    if not (same_user and same_password):
        return _text("Unauthorized: the ampalibe dashboard needs its user name and password.", 401,
                     **{"WWW-Authenticate": 'Basic realm="ampalibe dashboard", charset="UTF-8"'})
    g.ampalibe_operator = user
    if request.method == "POST":
        _check_origin()
        _check_csrf()
    return None


@bp.before_request
def _settle() -> None:
    """What the webhook recorded in its journal counts as pending on every page (see
    :meth:`~flask_ampalibe.inbox.Inbox.settle`); after authentication, so a stranger moves nothing."""
    _state().inbox.settle()


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _serializer() -> URLSafeTimedSerializer:
    settings = _state().settings
    base = f"{settings.dashboard_password}\0{settings.app_secret or settings.access_token or ''}"
    key = hashlib.sha256(b"flask_ampalibe dashboard csrf:" + base.encode()).hexdigest()
    return URLSafeTimedSerializer(key, salt="ampalibe-dashboard-csrf")


def csrf_token() -> str:
    """A token for the forms of this page (checked on every POST)."""
    return _serializer().dumps(g.get("ampalibe_operator", ""))


def _check_csrf() -> None:
    token = request.form.get("csrf_token", "")
    try:
        ok = _serializer().loads(token, max_age=CSRF_MAX_AGE) == g.ampalibe_operator
    except BadSignature:
        ok = False
    if not ok:
        logger.warning("dashboard: %s's %s %s refused: missing or stale CSRF token (from %s)",
                       g.ampalibe_operator, request.method, request.path, request.remote_addr)
        abort(_text("Bad Request: this action needs the form's CSRF token; reload the page and try again.", 400))


def _check_origin() -> None:
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        abort(_text("Forbidden: cross-origin action.", 403))


def _audit(what: str, *args: Any) -> None:
    logger.warning("dashboard: %s " + what + " (from %s)", g.ampalibe_operator, *args, request.remote_addr)


@bp.app_template_global("ampalibe_csrf_token")
def _csrf_global() -> str:
    return csrf_token()


def _page(template: str, **context: Any) -> str:
    done = request.args.get("done")
    message = None
    if done in DONE_MESSAGES:
        message = DONE_MESSAGES[done].format(n=request.args.get("n", "?"), user=request.args.get("user", "?"))
    counts, _ = queries.status_counts(_state().store)
    return render_template(f"ampalibe_dashboard/{template}", message=message, counts=counts,
                           bot=current_app.name, **context)


# -- pages --------------------------------------------------------------------------------------
@bp.get("/")
def overview() -> str:
    """Health at a glance: counts and charts of the last hour."""
    state = _state()
    data = queries.overview(state.store, getattr(state, "counters", None))
    times = data["times"]
    graph = data["graph_errors"] or {}
    charts = [
        line_chart("rates", "Events per minute: acknowledged (recorded), handled, failed", times,
                   {"acknowledged": data["received"], "handled": data["done"], "failed": data["failed"]}),
        line_chart("backlog", "Backlog: events recorded and not yet handled", times, {"backlog": data["backlog"]}),
        line_chart("oldest", "Age of the oldest unfinished event", times, {"oldest age": data["oldest_age"]},
                   unit="s"),
        line_chart("graph", "Graph API errors per minute, by code", times,
                   graph or {"errors": [0] * len(times)}),
    ]
    totals = queries.graph_totals(graph)
    return _page("overview.html", data=data, charts=charts, graph_totals=totals.most_common())


@bp.get("/pending")
def pending() -> str:
    """Users with events waiting or running: lag, lease owner, attempts."""
    return _page("pending.html", rows=queries.pending_users(_state().store))


@bp.get("/failed")
def failed() -> str:
    """Failed events with their traceback and body; replay or discard them."""
    rows, total = queries.failed_events(_state().store)
    rejected, rejected_total = queries.rejected_events(_state().store)
    return _page("failed.html", rows=rows, total=total, rejected=rejected, rejected_total=rejected_total)


@bp.get("/jobs")
def jobs() -> str:
    """Scheduled jobs: last and next run."""
    return _page("jobs.html", jobs=queries.job_runs(_state()))


@bp.get("/users")
def users() -> str:
    """Search a user by PSID; without one, the users who wrote last."""
    psid = request.args.get("psid", "").strip()
    detail = queries.user_detail(_state().store, psid) if psid else None
    recent = [] if psid else queries.recent_users(_state().store)
    return _page("users.html", psid=psid, user=detail, recent=recent)


# -- actions ------------------------------------------------------------------------------------
def _event_id() -> int | None:
    """The ``event_id`` of the form (``None`` for "all"), or 400."""
    value = request.form.get("event_id", "")
    if value == "all":
        return None
    if not value.isdigit():
        abort(_text("Bad Request: event_id must be an event's id or 'all'.", 400))
    return int(value)


@bp.post("/failed/replay")
def replay() -> BaseResponse:
    """Put one failed event (``event_id``) or all of them (``event_id=all``) back in the queue."""
    state = _state()
    event_id = _event_id()
    before = queries.status_counts(state.store)[0]["failed"] if event_id is None else 1
    user_ids = state.inbox.replay(event_id)
    count = before if user_ids else 0
    _audit("replayed failed event %s (users %s)", "all" if event_id is None else event_id, ", ".join(user_ids))
    if user_ids:
        state.executor.notify(user_ids)
    return redirect(url_for(".failed", done="replayed", n=count), 303)


@bp.post("/failed/discard")
def discard() -> BaseResponse:
    """Delete one failed event (``event_id``) or all of them (``event_id=all``)."""
    event_id = _event_id()
    count = _state().inbox.discard(event_id)
    _audit("discarded failed event %s (%s deleted)", "all" if event_id is None else event_id, count)
    return redirect(url_for(".failed", done="discarded", n=count), 303)


@bp.post("/users/forget")
def forget() -> BaseResponse:
    """Delete a user's state, temporary data, pages and events."""
    psid = request.form.get("psid", "").strip()
    if not psid:
        abort(_text("Bad Request: which user? (psid is missing)", 400))
    deleted = _state().store.forget_user(psid)
    _audit("forgot user %s (%s)", psid, ", ".join(f"{t}: {n}" for t, n in deleted.items()))
    return redirect(url_for(".users", done="forgotten", n=sum(deleted.values()), user=psid), 303)


# -- Prometheus -----------------------------------------------------------------------------------
@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus text format; 404 unless ``AMPALIBE_METRICS_TOKEN`` is set, 401 without it."""
    from .metrics import exposition

    state = _state()
    token = state.settings.metrics_token
    if not token:
        return _text("Not Found", 404)
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), str(token).encode()):
        return _text("Unauthorized", 401, **{"WWW-Authenticate": 'Bearer realm="ampalibe metrics"'})
    body, content_type = exposition(state)
    return Response(body, status=200, content_type=content_type)


# -- template filters -----------------------------------------------------------------------------
@bp.app_template_filter("ampalibe_time")
def _time_filter(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


@bp.app_template_filter("ampalibe_iso")
def _iso_filter(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@bp.app_template_filter("ampalibe_age")
def _age_filter(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
