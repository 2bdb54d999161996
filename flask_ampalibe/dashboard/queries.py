"""What the dashboard pages show, read from the bot's tables (no Flask here).

Rates are derived from the inbox rows' own timestamps (``received_at``, ``finished_at``), so
the hot path writes nothing for the dashboard.  The figures of the last hour are as good as the
rows: handled events purged within the hour (retention under an hour) no longer count, and an
event replayed within the hour counts once more when it is handled again.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func, or_, select

from ..engine import read_only
from ..inbox import DONE, FAILED, PENDING, RUNNING
from ..storage import Store
from ..tables import inbox, jobs, leases, temps, users

__all__ = ["status_counts", "overview", "pending_users", "failed_events", "rejected_events", "user_detail",
           "recent_users",
           "job_runs", "summary"]

_UNFINISHED = (PENDING, RUNNING)


#: Statuses counted on every page and scrape: the small sets.  Handled events (``done``) are the
#: bulk of the table; counting them all would cost a scan per page, so they are counted per minute
#: in :func:`overview` and by the Prometheus counters instead.
COUNTED = (PENDING, RUNNING, FAILED, "rejected")
#: How long before the charts' hour an event may have been received and still count in them.
LOOKBACK_SECONDS = 3600.0


def status_counts(store: Store) -> tuple[dict[str, int], float | None]:
    """Events by status, but for ``done`` (see :data:`COUNTED`), and the ``received_at`` of the
    oldest unfinished event.  Both read ranges of the ``(status, received_at)`` index."""
    store.ensure()
    with read_only(store.engine) as conn:
        counts = {str(s): int(n) for s, n in conn.execute(
            select(inbox.c.status, func.count()).where(inbox.c.status.in_(COUNTED)).group_by(inbox.c.status)).all()}
        oldest = conn.execute(select(func.min(inbox.c.received_at)).where(inbox.c.status.in_(_UNFINISHED))).scalar()
    for status in (PENDING, RUNNING, FAILED):
        counts.setdefault(status, 0)
    return counts, oldest


def _minutes(conn: Any, column: Any, origin: float) -> Any:
    """The whole minutes from ``origin`` to ``column``, in SQL (``origin`` is before the values)."""
    expr = (column - origin) / 60
    if conn.dialect.name == "sqlite":  # CAST truncates in SQLite (rounds elsewhere); floor() may be missing
        return cast(expr, Integer)
    return func.floor(expr)


def overview(store: Store, counters: Any = None, now: float | None = None, minutes: int = 60) -> dict[str, Any]:
    """Per-minute series of the last ``minutes`` minutes (the last one is the current, partial one).

    One grouped query over the events received since :data:`LOOKBACK_SECONDS` before the window
    (a range of the ``(status, received_at)`` index) and the unfinished ones, counted by status,
    minute received and minute finished; the series are added up from those groups.

    :returns: ``times`` (end of each minute, the last is ``now``), ``received`` (events recorded,
        i.e. acknowledged), ``done`` (handled), ``failed``, ``backlog`` (unfinished events at the end
        of each minute), ``oldest_age`` (seconds the oldest unfinished event had waited then),
        ``graph_errors`` (code -> per-minute counts), and the current ``counts`` and ``oldest_age_now``.
    """
    now = time.time() if now is None else now
    first_minute = math.floor(now / 60) - minutes + 1
    start = first_minute * 60.0
    origin = start - LOOKBACK_SECONDS - 60.0
    shift = int((start - origin) // 60)  # minute index of ``start`` counted from ``origin``
    ends = [min(now, start + 60.0 * (i + 1)) for i in range(minutes)]
    counts, oldest = status_counts(store)
    with read_only(store.engine) as conn:
        rb, fb = _minutes(conn, inbox.c.received_at, origin), _minutes(conn, inbox.c.finished_at, origin)
        groups = conn.execute(
            select(inbox.c.status, rb, fb, func.count(), func.min(inbox.c.received_at))
            .where(or_(and_(inbox.c.status.in_((DONE, FAILED)), inbox.c.received_at >= origin + 60),
                       inbox.c.status.in_(_UNFINISHED)))
            .group_by(inbox.c.status, rb, fb)).all()
    received = [0] * minutes
    finished = {DONE: [0] * minutes, FAILED: [0] * minutes}
    backlog = [0] * minutes
    first_seen: list[float | None] = [None] * minutes
    for status, r, f, n, min_received in groups:
        unfinished = status in _UNFINISHED  # (a replayed event counts as waiting since it was received)
        r = int(r) - shift if r is not None and float(min_received) >= origin else -1
        f = int(f) - shift if f is not None and not unfinished else None
        n = int(n)
        if 0 <= r < minutes:
            received[r] += n
        if f is not None and 0 <= f < minutes:
            finished[status][f] += n
        # Waiting at the end of minute i: received by then (minute <= i), not finished by then.
        for i in range(max(r, 0), minutes):
            if not unfinished and f is not None and f <= i:
                break
            backlog[i] += n
            if first_seen[i] is None or min_received < first_seen[i]:
                first_seen[i] = float(min_received)
    oldest_age = [round(max(0.0, end - first), 1) if first is not None else 0.0
                  for end, first in zip(ends, first_seen)]
    graph: dict[str, list[int]] = {}
    if counters is not None:
        for minute, codes in counters.graph_errors(first_minute).items():
            i = minute - first_minute
            if 0 <= i < minutes:
                for code, n in codes.items():
                    graph.setdefault(code, [0] * minutes)[i] += n
    return {
        "now": now, "times": ends, "received": received, "done": finished[DONE], "failed": finished[FAILED],
        "backlog": backlog, "oldest_age": oldest_age, "graph_errors": dict(sorted(graph.items())),
        "counts": counts, "oldest_age_now": round(now - oldest, 1) if oldest else 0.0,
    }


def pending_users(store: Store, limit: int = 200, now: float | None = None) -> list[dict[str, Any]]:
    """Users with unfinished events, the longest waiting first: counts, lag, lease, attempts."""
    now = time.time() if now is None else now
    store.ensure()
    running = func.sum(case((inbox.c.status == RUNNING, 1), else_=0))
    with read_only(store.engine) as conn:
        rows = conn.execute(
            select(inbox.c.user_id, func.count().label("events"), running.label("running"),
                   func.min(inbox.c.received_at).label("oldest"), func.max(inbox.c.attempts).label("attempts"),
                   leases.c.owner, leases.c.expires_at)
            .select_from(inbox.outerjoin(leases, leases.c.user_id == inbox.c.user_id))
            .where(inbox.c.status.in_(_UNFINISHED))
            .group_by(inbox.c.user_id, leases.c.owner, leases.c.expires_at)
            .order_by(func.min(inbox.c.received_at)).limit(limit)
        ).all()
    out = []
    for r in rows:
        held = r.owner is not None and (r.expires_at or 0) > now
        out.append({"user_id": r.user_id, "events": int(r.events), "running": int(r.running or 0),
                    "lag": round(now - r.oldest, 1), "attempts": int(r.attempts or 0),
                    "owner": r.owner if held else None,
                    "lease_left": round(r.expires_at - now, 1) if held else None,
                    "lease_expired": r.owner is not None and not held})
    return out


def failed_events(store: Store, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """The failed events, newest first, with their traceback and body; and how many there are."""
    store.ensure()
    with read_only(store.engine) as conn:
        total = conn.execute(select(func.count()).where(inbox.c.status == FAILED)).scalar() or 0
        rows = conn.execute(
            select(inbox.c.id, inbox.c.event_key, inbox.c.user_id, inbox.c.kind, inbox.c.attempts, inbox.c.error,
                   inbox.c.received_at, inbox.c.finished_at, inbox.c.body)
            .where(inbox.c.status == FAILED).order_by(inbox.c.id.desc()).limit(limit)).all()
    return [{**r._mapping, "body": _pretty(r.body), "summary": summary(r.body)} for r in rows], int(total)


def rejected_events(store: Store, limit: int = 20) -> tuple[list[dict[str, Any]], int]:
    """Webhook items kept as ``rejected`` at reception (never handled), newest first, with their
    reason; and how many there are."""
    store.ensure()
    with read_only(store.engine) as conn:
        total = conn.execute(select(func.count()).where(inbox.c.status == "rejected")).scalar() or 0
        rows = conn.execute(
            select(inbox.c.id, inbox.c.event_key, inbox.c.user_id, inbox.c.kind, inbox.c.error, inbox.c.received_at,
                   inbox.c.body)
            .where(inbox.c.status == "rejected").order_by(inbox.c.id.desc()).limit(limit)).all()
    return [{**r._mapping, "body": _pretty(r.body)} for r in rows], int(total)


def recent_users(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """The users who wrote last, newest first."""
    store.ensure()
    with read_only(store.engine) as conn:
        rows = conn.execute(select(users.c.user_id, users.c.action, users.c.lang, users.c.last_use)
                            .order_by(users.c.last_use.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def user_detail(store: Store, user_id: str, events: int = 20) -> dict[str, Any] | None:
    """Everything kept about ``user_id`` (``None`` when nothing is)."""
    store.ensure()
    with read_only(store.engine) as conn:
        row = conn.execute(select(users.c.action, users.c.action_args, users.c.lang, users.c.last_use)
                           .where(users.c.user_id == user_id)).first()
        temp = conn.execute(select(temps.c.key, temps.c.value).where(temps.c.user_id == user_id)
                            .order_by(temps.c.key)).all()
        last = conn.execute(select(inbox.c.id, inbox.c.kind, inbox.c.status, inbox.c.attempts, inbox.c.received_at,
                                   inbox.c.finished_at, inbox.c.body)
                            .where(inbox.c.user_id == user_id).order_by(inbox.c.id.desc()).limit(events)).all()
    if row is None and not temp and not last:
        return None
    return {
        "user_id": user_id,
        "action": row.action if row else None,
        "action_args": row.action_args if row else None,
        "lang": row.lang if row else None,
        "last_use": row.last_use if row else None,
        "temps": [{"key": k, "value": _clip(v, 300)} for k, v in temp],
        "events": [{**{k: v for k, v in e._mapping.items() if k != "body"}, "summary": summary(e.body)} for e in last],
    }


def job_runs(state: Any) -> list[dict[str, Any]]:
    """The scheduled jobs of the app: cron, time zone, last run (slot, process) and next run."""
    from ..scheduler import jobs as registered

    store = state.store
    store.ensure()
    with read_only(store.engine) as conn:
        rows = {r.name: r for r in conn.execute(select(jobs.c.name, jobs.c.slot, jobs.c.owner, jobs.c.ran_at)).all()}
    out = []
    for job in registered(state.router):
        row = rows.pop(job.name, None)
        out.append({"name": job.name, "cron": job.cron.expr, "tz": str(job.tz), "registered": True,
                    **_last(row), "next_run": job.next_run()})
    for name, row in sorted(rows.items()):
        out.append({"name": name, "cron": None, "tz": None, "registered": False, **_last(row), "next_run": None})
    return out


def _last(row: Any) -> dict[str, Any]:
    if row is None or row.slot is None or row.slot < 0:
        return {"last_slot": None, "ran_at": None, "owner": None}
    return {"last_slot": datetime.fromtimestamp(row.slot * 60, timezone.utc), "ran_at": row.ran_at,
            "owner": row.owner}


def summary(body: str | None) -> str:
    """What an event said, in one line: a message's text, a postback's payload, or its kind."""
    try:
        item = json.loads(body or "null")
    except ValueError:
        return ""
    if isinstance(item, dict) and isinstance(item.get("raw"), dict):
        item = item["raw"]  # the inbox keeps {"kind", "page_id", "standby", "raw": <webhook item>}
    if not isinstance(item, dict):
        return ""
    message = item.get("message")
    if isinstance(message, dict):
        if "quick_reply" in message and isinstance(message["quick_reply"], dict):
            return _clip(str(message["quick_reply"].get("payload", "")), 200)
        if "text" in message:
            return _clip(str(message["text"]), 200)
        if message.get("attachments"):
            return f"[{len(message['attachments'])} attachment(s)]"
    postback = item.get("postback")
    if isinstance(postback, dict):
        return _clip(str(postback.get("payload", "")), 200)
    keys = [k for k in item if k not in ("sender", "recipient", "timestamp")]
    return f"[{', '.join(sorted(keys))}]" if keys else ""


def _pretty(body: str | None) -> str:
    try:
        return json.dumps(json.loads(body or "null"), indent=2, ensure_ascii=False, sort_keys=True)
    except ValueError:
        return body or ""


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def graph_totals(series: dict[str, list[int]]) -> Counter[str]:
    """Total errors by code over a series of :func:`overview`."""
    return Counter({code: sum(values) for code, values in series.items()})
