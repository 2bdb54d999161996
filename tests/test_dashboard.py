"""The dashboard and the Prometheus endpoint through Flask's test client (the browser and
gunicorn tests are in test_dashboard_browser.py)."""
from __future__ import annotations

import base64
import dataclasses
import logging
import re
from typing import Any, Iterator

import pytest
from flask import Flask

import flask_ampalibe
from flask_ampalibe.dashboard.counters import Counters
from flask_ampalibe.engine import make_engine
from flask_ampalibe.errors import ConfigurationError
from flask_ampalibe.inbox import Inbox
from flask_ampalibe.storage import Store
from flask_ampalibe.tables import meta
from flask_ampalibe.testing import WebhookClient
from conftest import SECRET

PASSWORD = "s3cret-pass"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
METRICS = "metrics-token"


def _get(client: Any, path: str, **kwargs: Any) -> tuple[int, str]:
    with client.get(path, **kwargs) as res:
        return res.status_code, res.get_data(as_text=True)


@pytest.fixture
def dash(app: Flask, router: flask_ampalibe.Router) -> Iterator[Any]:
    """An app with the dashboard and metrics on, and a bot whose handler fails on 'boom'."""
    app.config.update(AMPALIBE_DASHBOARD_PASSWORD=PASSWORD, AMPALIBE_METRICS_TOKEN=METRICS)
    ext = flask_ampalibe.Ampalibe(app, router=router)

    @ext.command("/")
    def main(sender_id: str, cmd: str, **extends: Any) -> None:
        if "boom" in cmd:
            raise RuntimeError(f"boom for {cmd}")
        ext.query.set_temp(sender_id, "last", str(cmd))
        ext.chat.send_text(sender_id, "ok")

    yield app
    app.extensions["ampalibe"].executor.shutdown(timeout=5)


@pytest.fixture
def dclient(dash: Flask) -> Any:
    return dash.test_client()


@pytest.fixture
def dhook(dclient: Any) -> WebhookClient:
    return WebhookClient(dclient, SECRET)


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the page has no CSRF token"
    return found.group(1)


# -- off, auth ---------------------------------------------------------------------------------------
def test_off_without_password_or_token(client: Any) -> None:
    for path in ("/_ampalibe/", "/_ampalibe/failed", "/_ampalibe/metrics", "/_ampalibe/static/dashboard.css"):
        assert _get(client, path, headers=AUTH)[0] == 404


def test_pages_404_when_only_metrics_is_on(app: Flask, router: flask_ampalibe.Router) -> None:
    app.config["AMPALIBE_METRICS_TOKEN"] = METRICS
    flask_ampalibe.Ampalibe(app, router=router)
    client = app.test_client()
    assert _get(client, "/_ampalibe/", headers=AUTH)[0] == 404
    assert _get(client, "/_ampalibe/metrics", headers={"Authorization": f"Bearer {METRICS}"})[0] == 200
    app.extensions["ampalibe"].executor.shutdown(timeout=5)


@pytest.mark.parametrize("path", ["/_ampalibe/", "/_ampalibe/pending", "/_ampalibe/failed", "/_ampalibe/jobs",
                                  "/_ampalibe/users?psid=x", "/_ampalibe/static/dashboard.js"])
def test_every_page_asks_for_credentials(dclient: Any, path: str) -> None:
    status, _ = _get(dclient, path)
    assert status == 401
    with dclient.get(path) as res:
        assert res.headers["WWW-Authenticate"].startswith("Basic ")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
    assert _get(dclient, path, headers=wrong)[0] == 401
    other_user = {"Authorization": "Basic " + base64.b64encode(f"root:{PASSWORD}".encode()).decode()}
    assert _get(dclient, path, headers=other_user)[0] == 401
    assert _get(dclient, path, headers=AUTH)[0] == 200


def test_actions_need_credentials_before_anything(dclient: Any, dhook: WebhookClient) -> None:
    dhook.send_text("u1", "boom")
    assert dclient.post("/_ampalibe/failed/replay", data={"event_id": "all"}).status_code == 401
    assert dclient.post("/_ampalibe/users/forget", data={"psid": "u1"}).status_code == 401


def test_user_name_and_path_are_configurable(app: Flask, router: flask_ampalibe.Router) -> None:
    app.config.update(AMPALIBE_DASHBOARD_PASSWORD="pw", AMPALIBE_DASHBOARD_USER="ops",
                      AMPALIBE_DASHBOARD_PATH="ops/board")
    flask_ampalibe.Ampalibe(app, router=router)
    client = app.test_client()
    ops = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}
    assert _get(client, "/ops/board/", headers=ops)[0] == 200
    assert _get(client, "/_ampalibe/", headers=ops)[0] == 404
    app.extensions["ampalibe"].executor.shutdown(timeout=5)


def test_dashboard_path_cannot_be_the_root(app: Flask, router: flask_ampalibe.Router) -> None:
    app.config.update(AMPALIBE_DASHBOARD_PASSWORD="pw", AMPALIBE_DASHBOARD_PATH="/")
    with pytest.raises(ConfigurationError, match="AMPALIBE_DASHBOARD_PATH"):
        flask_ampalibe.Ampalibe(app, router=router)


# -- pages -------------------------------------------------------------------------------------------
def test_failed_page_shows_traceback_and_body_and_replays(dclient: Any, dhook: WebhookClient, dash: Flask,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    dhook.send_text("u1", "boom now")
    status, page = _get(dclient, "/_ampalibe/failed", headers=AUTH)
    assert status == 200
    assert "RuntimeError: boom for boom now" in page and "Traceback" in page
    assert "&#34;text&#34;: &#34;boom now&#34;" in page or "&quot;text&quot;: &quot;boom now&quot;" in page
    event_id = re.search(r'id="event-(\d+)"', page).group(1)
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.dashboard"):
        res = dclient.post("/_ampalibe/failed/replay", data={"event_id": event_id, "csrf_token": csrf(page)},
                           headers=AUTH)
    assert res.status_code == 303 and "done=replayed" in res.headers["Location"]
    assert any("admin replayed failed event " + event_id in r.getMessage() for r in caplog.records)
    # Inline executor: the replayed event ran again (and failed again: the handler still raises).
    inbox: Inbox = dash.extensions["ampalibe"].inbox
    failed = inbox.failed()
    assert [str(f["id"]) for f in failed] == [event_id] and failed[0]["attempts"] == 1
    status, page = _get(dclient, "/_ampalibe/failed?done=replayed&n=1", headers=AUTH)
    assert "1 failed event(s) put back in the queue." in page


def test_discard_one_and_all(dclient: Any, dhook: WebhookClient, dash: Flask) -> None:
    for n in range(3):
        dhook.send_text(f"u{n}", "boom")
    _, page = _get(dclient, "/_ampalibe/failed", headers=AUTH)
    ids = re.findall(r'id="event-(\d+)"', page)
    assert len(ids) == 3
    token = csrf(page)
    res = dclient.post("/_ampalibe/failed/discard", data={"event_id": ids[0], "csrf_token": token}, headers=AUTH)
    assert res.status_code == 303
    inbox: Inbox = dash.extensions["ampalibe"].inbox
    assert sorted(str(f["id"]) for f in inbox.failed()) == sorted(ids[1:])
    res = dclient.post("/_ampalibe/failed/discard", data={"event_id": "all", "csrf_token": token}, headers=AUTH)
    assert res.status_code == 303 and "n=2" in res.headers["Location"]
    assert inbox.failed() == []
    assert dclient.post("/_ampalibe/failed/discard", data={"event_id": "x1", "csrf_token": token},
                        headers=AUTH).status_code == 400


def test_actions_without_or_with_a_bad_csrf_token_are_refused(dclient: Any, dhook: WebhookClient, dash: Flask,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    dhook.send_text("u1", "boom")
    inbox: Inbox = dash.extensions["ampalibe"].inbox
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.dashboard"):
        for data in ({"event_id": "all"}, {"event_id": "all", "csrf_token": "forged"}):
            res = dclient.post("/_ampalibe/failed/replay", data=data, headers=AUTH)
            assert res.status_code == 400 and b"CSRF" in res.data
            assert dclient.post("/_ampalibe/failed/discard", data=data, headers=AUTH).status_code == 400
    assert len(inbox.failed()) == 1
    res = dclient.post("/_ampalibe/users/forget", data={"psid": "u1"}, headers=AUTH)
    assert res.status_code == 400
    assert any("refused: missing or stale CSRF token" in r.getMessage() for r in caplog.records)
    # A token signed for another password does not pass either.
    _, page = _get(dclient, "/_ampalibe/failed", headers=AUTH)
    token = csrf(page)
    state = dash.extensions["ampalibe"]
    state.settings = dataclasses.replace(state.settings, dashboard_password="changed")
    changed = {"Authorization": "Basic " + base64.b64encode(b"admin:changed").decode()}
    assert dclient.post("/_ampalibe/failed/replay", data={"event_id": "all", "csrf_token": token},
                        headers=changed).status_code == 400


def test_cross_origin_action_is_refused(dclient: Any, dhook: WebhookClient) -> None:
    dhook.send_text("u1", "boom")
    _, page = _get(dclient, "/_ampalibe/failed", headers=AUTH)
    res = dclient.post("/_ampalibe/failed/replay", data={"event_id": "all", "csrf_token": csrf(page)},
                       headers={**AUTH, "Origin": "https://evil.example"})
    assert res.status_code == 403


def test_user_page_escapes_texts_and_forgets(dclient: Any, dhook: WebhookClient, dash: Flask,
                                             caplog: pytest.LogCaptureFixture) -> None:
    text = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    dhook.send_text("<b>psid</b>", text)
    status, page = _get(dclient, "/_ampalibe/users", query_string={"psid": "<b>psid</b>"}, headers=AUTH)
    assert status == 200
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>psid</b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&lt;b&gt;psid&lt;/b&gt;" in page
    with dclient.get("/_ampalibe/users", headers=AUTH) as res:
        assert "script-src 'self'" in res.headers["Content-Security-Policy"]
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.dashboard"):
        res = dclient.post("/_ampalibe/users/forget", data={"psid": "<b>psid</b>", "csrf_token": csrf(page)},
                           headers=AUTH)
    assert res.status_code == 303
    assert any("admin forgot user <b>psid</b>" in r.getMessage() for r in caplog.records)
    store: Store = dash.extensions["ampalibe"].store
    assert store.get_user("<b>psid</b>") == (None, {}, None) and store.get_temp("<b>psid</b>", "last") is None
    status, page = _get(dclient, "/_ampalibe/users", query_string={"psid": "<b>psid</b>"}, headers=AUTH)
    assert "Nothing is kept about" in page


def test_user_page_shows_action_lang_temps_and_events(dclient: Any, dhook: WebhookClient, dash: Flask) -> None:
    dhook.send_text("u7", "hello")
    state = dash.extensions["ampalibe"]
    state.store.set_action("u7", "/ask_name", {"step": 2})
    state.query.set_lang("u7", "fr")
    _, page = _get(dclient, "/_ampalibe/users?psid=u7", headers=AUTH)
    assert "/ask_name" in page and "fr" in page and "last" in page and "&#34;hello&#34;" in page
    assert re.search(r'status-done">done<', page)
    _, listing = _get(dclient, "/_ampalibe/users", headers=AUTH)
    assert 'psid=u7' in listing


def test_pending_page_lists_users_with_lag_and_lease(dash: Flask, dclient: Any) -> None:
    from flask_ampalibe.events import parse_body
    from flask_ampalibe.testing import message_event, page_body

    inbox: Inbox = dash.extensions["ampalibe"].inbox
    inbox.record(parse_body(page_body(message_event("w1", "one"), message_event("w1", "two"))))
    inbox.record(parse_body(page_body(message_event("w2", "three"))))
    assert inbox.take("w2", "host-a:123", 30) is not None
    _, page = _get(dclient, "/_ampalibe/pending", headers=AUTH)
    rows = re.findall(r"<tr><td><a[^>]*>(w\d)</a></td>\s*<td>(\d+)</td><td>(\d+)</td>", page)
    assert sorted(rows) == [("w1", "2", "0"), ("w2", "1", "1")]
    assert "host-a:123" in page


def test_with_the_webhook_journal_the_pages_show_what_it_holds(app: Flask, router: flask_ampalibe.Router) -> None:
    # Recorded in the journal and not yet moved (the web side only records here): the page moves
    # it into the inbox before it reads.
    app.config.update(AMPALIBE_DASHBOARD_PASSWORD=PASSWORD, AMPALIBE_WEBHOOK_JOURNAL=True, AMPALIBE_EXECUTOR="worker")
    flask_ampalibe.Ampalibe(app, router=router)
    router.command("/")(lambda sender_id, cmd, **extends: None)
    client = app.test_client()
    try:
        assert app.extensions["ampalibe"].inbox.journal is not None
        assert WebhookClient(client, SECRET).send_text("w1", "one").status_code == 200
        _, page = _get(client, "/_ampalibe/pending", headers=AUTH)
        rows = re.findall(r"<tr><td><a[^>]*>(w\d)</a></td>\s*<td>(\d+)</td><td>(\d+)</td>", page)
        assert rows == [("w1", "1", "0")]
    finally:
        app.extensions["ampalibe"].executor.shutdown(timeout=5)


def test_jobs_page_lists_last_and_next_runs(dash: Flask, dclient: Any, router: flask_ampalibe.Router) -> None:
    from flask_ampalibe.scheduler import schedule, scheduler_for

    @schedule("*/5 * * * *", name="digest", router=router)
    def digest() -> None:
        pass

    _, page = _get(dclient, "/_ampalibe/jobs", headers=AUTH)
    assert "digest" in page and "never" in page
    assert scheduler_for(dash).tick(1_800_000_000.0) == ["digest"]
    _, page = _get(dclient, "/_ampalibe/jobs", headers=AUTH)
    assert "2027-01-15 08:00" in page  # the slot of 1_800_000_000 (a multiple of 5 minutes), UTC


def test_overview_charts_have_the_last_hours_data(dclient: Any, dhook: WebhookClient, graph: Any) -> None:
    dhook.send_text("u1", "hello")
    dhook.send_text("u2", "boom")
    graph.fail_next(400, {"code": 551}, count=1)
    dhook.send_text("u3", "hi")
    status, page = _get(dclient, "/_ampalibe/", headers=AUTH)
    assert status == 200
    totals = dict(re.findall(r'data-chart="(\w+)" data-total="([\d.]+)"', page))
    assert float(totals["rates"]) == 3 + 2 + 1  # acknowledged, handled, failed
    assert float(totals["graph"]) == 1
    assert re.search(r'<td>551</td><td>1</td>', page)
    assert 'id="failed-total">1<' in page


# -- counts --------------------------------------------------------------------------------------------
def test_overview_series_from_row_timestamps(tmp_path: Any) -> None:
    """Backlog and oldest-age series rebuilt from received_at / finished_at, minute by minute."""
    from flask_ampalibe.dashboard.queries import overview
    from flask_ampalibe.tables import inbox as inbox_table

    store = Store(make_engine(f"sqlite:///{tmp_path / 'o.db'}"))
    store.ensure()
    now = 1_800_000_000.0 + 20  # 20 s into a minute
    rows = [  # (received minutes ago, finished minutes ago or None, status)
        (10.5, 9.5, "done"), (10.5, 5.5, "done"), (3.5, None, "pending"), (2.5, 1.5, "failed"), (0.2, None, "running"),
    ]
    with store.engine.begin() as conn:
        for n, (rec, fin, status) in enumerate(rows):
            conn.execute(inbox_table.insert().values(
                event_key=f"k{n}", user_id="u", kind="message", timestamp=n, body="{}", status=status, attempts=1,
                received_at=now - rec * 60, finished_at=None if fin is None else now - fin * 60))
    data = overview(store, now=now, minutes=15)
    assert sum(data["received"]) == 5 and sum(data["done"]) == 2 and sum(data["failed"]) == 1
    assert data["backlog"][-1] == 2  # pending + running now
    # 10.5 min ago two arrived; one finished 9.5 min ago, the other 5.5 min ago.
    minute_end = lambda ago: data["times"].index(max(t for t in data["times"] if t <= now - ago * 60))  # noqa: E731
    assert data["backlog"][minute_end(10)] == 2
    assert data["backlog"][minute_end(7)] == 1
    assert data["backlog"][minute_end(4.9)] == 0
    assert data["oldest_age"][minute_end(7)] == pytest.approx(data["times"][minute_end(7)] - (now - 10.5 * 60))
    assert data["oldest_age"][-1] == pytest.approx(3.5 * 60)
    assert data["oldest_age_now"] == pytest.approx(3.5 * 60)


class Elsewhere(Counters):
    """The counters of another process."""

    owner = "elsewhere:1"  # type: ignore[assignment]


def test_graph_errors_are_shared_between_processes_through_rare_writes(tmp_path: Any) -> None:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'g.db'}"))
    clock = [1_800_000_000.0]
    store.ensure()
    mine = Counters(store, clock=lambda: clock[0], flush_seconds=3600)
    for code in ("551", "551", "613"):
        mine.graph_error(code)
    with store.engine.connect() as conn:  # nothing written yet: counted in memory
        assert conn.execute(meta.select().where(meta.c.name.like("graph_errors:%"))).all() == []
    other = Elsewhere(store, clock=lambda: clock[0])
    assert other.graph_errors(0) == {}  # another process: not written yet
    mine.flush()
    with store.engine.connect() as conn:
        rows = conn.execute(meta.select().where(meta.c.name.like("graph_errors:%"))).all()
    assert len(rows) == 1 and rows[0].name.startswith(f"graph_errors:{int(clock[0] // 60)}:")
    # Another process reads the row; this one reads its memory, not the row as well.
    assert dict(other.graph_errors(0)[int(clock[0] // 60)]) == {"551": 2, "613": 1}
    assert dict(mine.graph_errors(0)[int(clock[0] // 60)]) == {"551": 2, "613": 1}
    # Old buckets go: from memory and, at the next write, from the table.
    clock[0] += 3 * 3600
    mine.graph_error("1")
    mine.flush()
    with store.engine.connect() as conn:
        names = [r.name for r in conn.execute(meta.select().where(meta.c.name.like("graph_errors:%"))).all()]
    assert len(names) == 1 and names[0].startswith(f"graph_errors:{int(clock[0] // 60)}:")


# -- Prometheus --------------------------------------------------------------------------------------
def _metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_endpoint_token_and_counts(dclient: Any, dhook: WebhookClient, graph: Any) -> None:
    assert _get(dclient, "/_ampalibe/metrics")[0] == 401
    assert _get(dclient, "/_ampalibe/metrics", headers={"Authorization": "Bearer nope"})[0] == 401
    assert _get(dclient, "/_ampalibe/metrics", headers=AUTH)[0] == 401  # the dashboard's password is not the token
    bearer = {"Authorization": f"Bearer {METRICS}"}
    _, before = _get(dclient, "/_ampalibe/metrics", headers=bearer)
    dhook.send_text("m1", "hello")
    dhook.send_text("m2", "boom")
    graph.fail_next(400, {"code": 10}, count=1)
    dhook.send_text("m3", "hi")
    status, after = _get(dclient, "/_ampalibe/metrics", headers=bearer)
    assert status == 200

    def delta(name: str, labels: str = "") -> float:
        return _metric(after, name, labels) - _metric(before, name, labels)

    assert delta("ampalibe_events_received_total") == 3
    assert delta("ampalibe_events_handled_total", '{outcome="done"}') == 2
    assert delta("ampalibe_events_handled_total", '{outcome="failed"}') == 1
    assert delta("ampalibe_graph_errors_total", '{code="10"}') == 1
    assert _metric(after, "ampalibe_inbox_events", '{status="failed"}') == 1
    assert _metric(after, "ampalibe_inbox_backlog") == 0
    assert "ampalibe_inbox_oldest_pending_age_seconds 0.0" in after
    assert all(line.startswith(("#", "ampalibe_")) for line in after.splitlines() if line)


def test_metrics_token_without_prometheus_client_says_what_to_install(app: Flask, router: flask_ampalibe.Router,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from flask_ampalibe.dashboard import metrics

    monkeypatch.setattr(metrics, "_metrics", None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    app.config["AMPALIBE_METRICS_TOKEN"] = "t"
    with pytest.raises(ConfigurationError, match=r"flask_ampalibe\[metrics\]"):
        flask_ampalibe.Ampalibe(app, router=router)


def test_dashboard_comes_with_the_blueprint_registered_by_hand(app: Flask) -> None:
    app.config["AMPALIBE_DASHBOARD_PASSWORD"] = PASSWORD
    app.register_blueprint(flask_ampalibe.bp)
    client = app.test_client()
    assert _get(client, "/_ampalibe/users", headers=AUTH)[0] == 200
    assert _get(client, "/_ampalibe/users")[0] == 401
    app.extensions["ampalibe"].executor.shutdown(timeout=5)


def test_failed_page_lists_items_rejected_at_reception(dash: Flask, dclient: Any) -> None:
    """Items the webhook keeps as ``rejected`` (with their reason) are listed, escaped, without actions."""
    from flask_ampalibe.tables import inbox as inbox_table

    store: Store = dash.extensions["ampalibe"].store
    store.ensure()
    with store.engine.begin() as conn:
        conn.execute(inbox_table.insert().values(
            event_key="r1", user_id="", kind="unknown", timestamp=0, body='{"raw": "<i>odd</i>"}', status="rejected",
            attempts=0, error="entry 0: <messaging> is not a list", received_at=1_800_000_000.0))
    _, page = _get(dclient, "/_ampalibe/failed", headers=AUTH)
    assert 'id="rejected-' in page and "entry 0: &lt;messaging&gt; is not a list" in page
    assert "&lt;i&gt;odd&lt;/i&gt;" in page and "<i>odd" not in page


def test_graph_errors_still_in_memory_are_written_when_the_app_shuts_down(dash: Flask, graph: Any) -> None:
    """A worker that stops within the 10 s write delay does not take its Graph error counts with it."""
    state = dash.extensions["ampalibe"]
    graph.fail_next(400, {"code": 551}, count=1)
    state.chat.send_text("z1", "hello")
    state.store.ensure()
    with state.store.engine.connect() as conn:
        assert conn.execute(meta.select().where(meta.c.name.like("graph_errors:%"))).all() == []
    state.shutdown(timeout=5)
    assert dict(Elsewhere(state.store).graph_errors(0).popitem()[1]) == {"551": 1}
