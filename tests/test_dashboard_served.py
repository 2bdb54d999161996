"""The dashboard in a real headless Chromium, and the Prometheus endpoint under real gunicorn.

The bot (tests/dashboard_bot/) is served by ``gunicorn -c python:flask_ampalibe.gunicorn_conf``
with two workers, as in tests/test_delivery.py.  The browser is Debian's ``chromium`` driven by
Selenium through Debian's ``chromium-driver`` (tests/run.sh installs both); nothing is downloaded.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from flask_ampalibe.testing import message_event
from conftest import TEMPLATE
from test_delivery import Gunicorn, project_env, project_inbox, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gunicorn runs on POSIX only")

BOT = Path(__file__).resolve().parent / "dashboard_bot"
PASSWORD = "dash-pass-1"
TOKEN = "metrics-token-1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


def make_bot(folder: Path) -> Path:
    shutil.copytree(BOT, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(TEMPLATE / "conf.py", folder / "conf.py")
    return folder


@pytest.fixture
def serve(tmp_path: Path, graph: Any) -> Iterator[Any]:
    servers: list[Gunicorn] = []

    def start(**env: str) -> Gunicorn:
        project = make_bot(tmp_path / f"bot{len(servers)}")
        server = Gunicorn(project, project_env(graph.url, **env))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (Debian's) under Selenium, with a fresh profile."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: tests/run.sh installs them")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    # Our own log file, closed here: selenium 4.11 opens /dev/null for the driver's log and never closes it.
    with open(tmp_path / "chromedriver.log", "wb") as log:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=log), options=options)
        driver.set_page_load_timeout(30)
        driver.implicitly_wait(10)  # after a click, find_element waits for the next page
        try:
            yield driver
        finally:
            driver.quit()


def log_in(driver: Any, user: str = "admin", password: str = PASSWORD) -> None:
    """Send HTTP Basic credentials with every request of the browser (as after the login prompt)."""
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}})


def test_operator_sees_a_failed_event_replays_it_and_sees_it_handled(serve: Any, browser: Any, graph: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    server = serve(AMP_DASHBOARD_PASSWORD=PASSWORD)
    inbox = project_inbox(server.project)
    hook = server.hook()
    script = '<script>document.title="pwned";window.pwned=1</script><b>bold</b>'
    graph.fail_next(400, {"code": 551}, count=1, match=lambda r: r.recipient == "u-graph")
    hook.send_text("u-ok", "hello")
    hook.send_text("u-xss", script)
    hook.send_text("u-graph", "refused by graph")
    hook.send_text("u-flaky", "flaky one")
    wait_until(lambda: inbox.stats()["failed"] == 1 and inbox.stats()["done"] == 3, 20, "the events to be handled")
    base = server.url + "/_ampalibe/"

    # Without credentials: refused (Chromium keeps the login prompt; its scripts see the 401s).
    browser.get(base)
    assert "Overview" not in browser.page_source and "flaky" not in browser.page_source
    browser.get(server.url + "/asset/none")  # a page of the same origin outside the dashboard
    statuses = browser.execute_script(
        "return Promise.all(arguments[0].map(u => fetch(u, {credentials: 'omit'}).then(r => r.status)))",
        [base + page for page in ("", "pending", "failed", "jobs", "users", "static/dashboard.js")])
    assert statuses == [401] * 6

    log_in(browser)
    browser.get(base)
    assert browser.find_element(By.ID, "failed-total").text == "1"
    charts = {c.get_attribute("data-chart"): c for c in browser.find_elements(By.CSS_SELECTOR, "svg.chart")}
    assert set(charts) == {"rates", "backlog", "oldest", "graph"}
    assert float(charts["rates"].get_attribute("data-total")) == 4 + 3 + 1
    for chart in charts.values():  # drawn: a visible box with a line of 60 points
        assert chart.size["width"] > 300 and chart.size["height"] > 60
        points = chart.find_element(By.CSS_SELECTOR, "polyline.series").get_attribute("points").split()
        assert len(points) == 60
    rates = charts["rates"].find_element(By.CSS_SELECTOR, 'polyline[data-series="acknowledged"]')
    heights = [float(point.split(",")[1]) for point in rates.get_attribute("points").split()]
    assert min(heights) < 12 + 134 - 1  # a point above the x axis: the minute(s) of the posts

    # The failed event: its traceback and body, then Replay once the bug is fixed.
    browser.find_element(By.LINK_TEXT, "Failed 1").click()
    event = browser.find_element(By.CSS_SELECTOR, "article.event")
    assert "RuntimeError: flaky: this handler fails until the file 'fixed' exists" in event.text
    assert "u-flaky" in event.text
    event_id = event.get_attribute("id").split("-")[1]
    (server.project / "fixed").write_text("")
    event.find_element(By.XPATH, ".//button[text()='Replay']").click()
    assert "1 failed event(s) put back in the queue." in browser.find_element(By.ID, "message").text
    wait_until(lambda: inbox.stats()["failed"] == 0 and inbox.stats()["done"] == 4, 20, "the replayed event")
    browser.get(base + "users?psid=u-flaky")
    rows = browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.status").text for r in rows] == ["done"]
    assert rows[0].find_element(By.TAG_NAME, "td").text == event_id
    assert graph.sent_texts("u-flaky") == ["ok: flaky one"]

    # A message text with <script> shows as text and runs nothing.
    browser.get(base + "users")
    browser.find_element(By.ID, "psid").send_keys("u-xss")
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    text_cell = browser.find_element(By.CSS_SELECTOR, "#events td.text")
    assert text_cell.text == script
    assert browser.execute_script("return window.pwned") is None
    assert browser.title != "pwned"
    assert browser.execute_script("return document.querySelectorAll('#events td.text b').length") == 0

    # An action without its CSRF token is refused, and changes nothing.
    # (the bug is fixed: break it again for a new failure)
    (server.project / "fixed").unlink()
    hook.send_text("u-flaky2", "flaky two")
    wait_until(lambda: inbox.stats()["failed"] == 1, 20, "the second failure")
    browser.get(base + "failed")
    browser.execute_script("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    browser.find_element(By.XPATH, "//article//button[text()='Discard']").click()
    WebDriverWait(browser, 10).until(expected_conditions.alert_is_present()).accept()  # "Delete ... for good?"
    wait_until(lambda: "CSRF" in browser.find_element(By.TAG_NAME, "body").text, 10, "the refusal")
    assert inbox.stats()["failed"] == 1

    # The Graph error was counted by the worker that sent; whichever worker serves the overview
    # shows it once that worker has written its count (within 10 s).
    def graph_chart_total() -> float:
        browser.get(base)
        return float(browser.find_element(By.CSS_SELECTOR, 'svg[data-chart="graph"]').get_attribute("data-total"))

    wait_until(lambda: graph_chart_total() == 1, 30, "the Graph error on the overview")
    assert browser.find_element(By.ID, "graph-errors").text.splitlines()[1:] == ["551 1"]


def _metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_prometheus_counts_add_up_across_two_gunicorn_workers(serve: Any, graph: Any, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = serve(AMP_METRICS_TOKEN=TOKEN, AMP_DASHBOARD_PASSWORD="", TMPDIR=str(tmp), AMP_WORKERS="2")
    inbox = project_inbox(server.project)
    [folder] = list(tmp.glob("ampalibe-prometheus-*"))  # made by on_starting in the master
    url = server.url + "/_ampalibe/metrics"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(server.url + "/_ampalibe/", timeout=10).status_code == 404  # no password: no pages

    def post_all(users: list[str]) -> None:
        hooks = [server.hook() for _ in range(4)]  # one connection per post: both workers take some

        def post(n: int) -> None:
            for user in users[n::4]:
                hooks[n].post(message_event(user, "flaky" if user.endswith("0") else "hi"))

        threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    def scrape() -> str:
        res = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/plain")
        return res.text

    graph.fail_next(400, {"code": 10}, count=3, match=lambda r: r.recipient in ("p01", "p02", "p03"))
    post_all([f"p{n:02d}" for n in range(40)])
    wait_until(lambda: inbox.stats()["done"] + inbox.stats()["failed"] == 40, 30, "every event handled")
    pids = {p.name.split("_")[-1] for p in folder.glob("counter_*.db")}
    assert len(pids) == 2, pids  # one file per worker
    for _ in range(4):  # whichever worker answers, the same sums
        text = scrape()
        assert _metric(text, "ampalibe_events_received_total") == 40
        assert _metric(text, "ampalibe_events_handled_total", '{outcome="done"}') == 36
        assert _metric(text, "ampalibe_events_handled_total", '{outcome="failed"}') == 4
        assert _metric(text, "ampalibe_graph_errors_total", '{code="10"}') == 3
        assert _metric(text, "ampalibe_inbox_events", '{status="failed"}') == 4
        assert _metric(text, "ampalibe_inbox_backlog") == 0

    # New workers (HUP): the old workers' counts still count, the new ones add to them.
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(server.booted()) >= 4, 30, "the new workers")
    post_all([f"q{n:02d}" for n in range(10)])
    wait_until(lambda: inbox.stats()["done"] + inbox.stats()["failed"] == 50, 30, "every event handled")
    text = scrape()
    assert _metric(text, "ampalibe_events_received_total") == 50
    assert _metric(text, "ampalibe_events_handled_total", '{outcome="done"}') == 45
    assert _metric(text, "ampalibe_events_handled_total", '{outcome="failed"}') == 5
    server.stop()
    assert not folder.exists()  # on_exit removed the folder it made
