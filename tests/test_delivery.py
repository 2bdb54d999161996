"""Delivery guarantees with real gunicorn processes: many workers, crashes, graceful stops.

Each test serves tests/gunicorn_bot/ (copied into a temporary folder with the template's
``conf.py``) with ``gunicorn -c python:flask_ampalibe.gunicorn_conf core:app``: two gthread
workers, one file SQLite database in WAL mode, a FakeGraph on loopback.  The server binds
port 0 and the test reads the port from gunicorn's log.  Every wait is bounded, and every
process is stopped by the pid the test started.

The last section checks the executor's edge cases in one process (lease renewal, shutdown,
poison events, fork).
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import gunicorn
import pytest
import requests

from flask_ampalibe.events import parse_body
from flask_ampalibe.executor import InlineExecutor, ThreadExecutor
from flask_ampalibe.inbox import Claimed, Inbox
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store
from flask_ampalibe.tables import inbox as inbox_table
from flask_ampalibe.testing import WebhookClient, message_event, page_body
from conftest import SECRET, TEMPLATE, TOKEN, VERIFY

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gunicorn runs on POSIX only")

BOT = Path(__file__).resolve().parent / "gunicorn_bot"
#: gunicorn 25.1+ opens a control socket shared by every gunicorn of the user: not ours to take.
GUNICORN_FLAGS = ["--no-control-socket"] if gunicorn.version_info >= (25, 1) else []


# -- helpers (tests/test_operate_cli.py uses them too) ------------------------------------------
def make_project(folder: Path) -> Path:
    """A copy of tests/gunicorn_bot/ with the project template's conf.py."""
    shutil.copytree(BOT, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(TEMPLATE / "conf.py", folder / "conf.py")
    return folder


#: Settings of the environment that a bot process must not inherit from the test run.
STRAY = ("AMP_", "AMPALIBE_", "DB_", "GUNICORN_", "ADAPTER", "DATABASE_URL", "FLASK_APP")


def bot_settings(graph_url: str, **extra: str) -> dict[str, str]:
    """The environment variables that configure the test bot (its conf.py reads them)."""
    values = dict(AMP_ACCESS_TOKEN=TOKEN, AMP_VERIF_TOKEN=VERIFY, AMP_APP_SECRET=SECRET, AMP_GRAPH_URL=graph_url,
                  ADAPTER="SQLITE", DB_FILE="bot.db", AMP_HOST="127.0.0.1", AMP_PORT="0", AMP_WORKERS="2",
                  AMPALIBE_LEASE_SECONDS="2", AMPALIBE_POLL_SECONDS="0.3", PYTHONUNBUFFERED="1")
    values.update(extra)
    return values


def project_env(graph_url: str, **extra: str) -> dict[str, str]:
    """The whole environment of a bot process: this one's without stray settings, plus the bot's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRAY)}
    env.update(bot_settings(graph_url, **extra))
    return env


def project_inbox(project: Path) -> Inbox:
    """The inbox of the project's database, read from this process."""
    return Inbox(Store(make_engine(f"sqlite:///{project / 'bot.db'}")))


def markers(project: Path) -> list[dict[str, Any]]:
    """What the bot's handlers noted (tests/gunicorn_bot/core.py), complete lines only."""
    try:
        text = (project / "markers.jsonl").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {timeout} s for {what}")
        time.sleep(0.05)


def all_handled(inbox: Inbox, count: int) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        stats = inbox.stats()
        return stats if stats["done"] + stats["failed"] >= count and not stats["pending"] + stats["running"] else None

    return check


class _Http:
    """What :class:`WebhookClient` needs (``post(path, data=, headers=)``) over real HTTP.

    One connection per post, so a graceful stop never waits for an idle kept-alive one.
    """

    def __init__(self, base: str) -> None:
        self.base = base

    def post(self, path: str, data: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(self.base + path, data=data, headers=headers, timeout=30)


class Gunicorn:
    """``gunicorn -c python:flask_ampalibe.gunicorn_conf core:app`` serving ``project``."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project = project
        self.env = env
        self.log = project / "gunicorn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._log_start = 0

    def start(self, timeout: float = 20.0) -> "Gunicorn":
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "python:flask_ampalibe.gunicorn_conf", *GUNICORN_FLAGS,
                 "core:app"],
                cwd=self.project, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        found = wait_until(lambda: self._alive() and re.search(r"Listening at: (http://\S+)", self.output()),
                           timeout, "gunicorn to listen")
        self.url = found.group(1)
        workers = int(self.env["AMP_WORKERS"])
        wait_until(lambda: self._alive() and len(self.booted()) >= workers, timeout, "the workers to boot")
        wait_until(lambda: self._alive() and self._verified(), timeout, "the webhook to answer")
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
        return True

    def _verified(self) -> bool:
        params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "ok"}
        try:
            return requests.get(self.url + "/", params=params, timeout=5).text == "ok"
        except requests.ConnectionError:
            return False

    def output(self) -> str:
        """What gunicorn logged since this start."""
        with open(self.log, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def booted(self) -> list[int]:
        """Pids of the workers booted since this start."""
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.output())]

    def hook(self) -> WebhookClient:
        """Posts signed webhook bodies to this server."""
        return WebhookClient(_Http(self.url), SECRET)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        """Send ``sig`` to the master and wait for it; SIGKILL the process group if it hangs."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        try:  # workers left behind (the master was killed): the group is ours (start_new_session)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.returncode


@pytest.fixture
def served(tmp_path: Path, graph: Any) -> Iterator[Callable[..., Gunicorn]]:
    """``served(**env)`` starts gunicorn on a fresh copy of the test bot; all are stopped at the end."""
    servers: list[Gunicorn] = []
    engines = []

    def serve(project: Path | None = None, **env: str) -> Gunicorn:
        if project is None:
            project = make_project(tmp_path / f"bot{len(servers)}")
            engines.append(f"sqlite:///{project / 'bot.db'}")
        server = Gunicorn(project, project_env(graph.url, **env))
        servers.append(server)
        return server.start()

    yield serve
    for server in servers:
        server.stop(timeout=10)
    for url in engines:
        make_engine(url).dispose()


# -- a) many users at once, across workers -------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "sqlite-journal", "mariadb", "postgresql"])
def test_many_users_on_two_workers_each_list_complete_in_order_without_duplicates(served, graph, backend, request):
    journal = "1" if backend == "sqlite-journal" else "0"
    if backend in ("mariadb", "postgresql"):  # the database server, emptied
        db_server = request.getfixturevalue(f"{backend}_server")
        db_server.reset()
        server = served(DATABASE_URL=db_server.url)
        inbox = Inbox(Store(make_engine(db_server.url)))
    else:
        server = served(AMPALIBE_WEBHOOK_JOURNAL=journal)
        inbox = project_inbox(server.project)
    project = server.project
    users = [f"u{n:02d}" for n in range(20)]
    per_user = 15
    base = int(time.time() * 1000)
    events = {u: [message_event(u, f"{u} m{i:02d}", mid=f"mid.{u}.{i}", timestamp=base + 10 * i)
                  for i in range(per_user)] for u in users}
    rng = random.Random(20240601)
    redeliver = {(u, i) for u, i in rng.sample([(u, i) for u in users for i in range(per_user)], 30)}
    statuses: list[int] = []
    redeliveries: queue.Queue[dict | None] = queue.Queue()

    def post_for(mine: list[str], seed: int, start: int, end: int) -> None:
        # Each user's messages go out in order (as Meta sends them), several users per thread.
        # Now and then two of a user's messages share a body in reverse order, as after a
        # failure; some bodies carry several users.
        hook, pick = server.hook(), random.Random(seed)
        position = dict.fromkeys(mine, start)
        while any(i < end for i in position.values()):
            chunks = []
            for u in mine:
                i = position[u]
                if i < end:
                    take = 2 if i + 1 < end and pick.random() < 0.2 else 1
                    chunks.append(list(reversed(events[u][i:i + take])))
                    position[u] += take
            bodies = [sum(chunks, [])] if pick.random() < 0.5 else chunks
            for items in bodies:
                statuses.append(hook.post(*items).status_code)
                for item in items:
                    u, i = item["sender"]["id"], int(item["message"]["mid"].rsplit(".", 1)[1])
                    if (u, i) in redeliver:
                        redeliveries.put(item)

    def redeliver_loop() -> None:
        hook = server.hook()
        while (item := redeliveries.get()) is not None:
            statuses.append(hook.post(item).status_code)

    redeliverer = threading.Thread(target=redeliver_loop)
    redeliverer.start()
    senders: list[threading.Thread] = []
    # Two waves: the first starts both workers' executors (whose first sweep may take up every
    # user recorded so far); in the second every user's lease is free, so each worker takes up
    # the users whose messages it receives first.
    for start, end in ((0, 5), (5, per_user)):
        wave = [threading.Thread(target=post_for, args=(users[n::5], n, start, end)) for n in range(5)]
        for thread in wave:
            thread.start()
        for thread in wave:
            thread.join(60)
        senders += wave
        wait_until(all_handled(inbox, len(users) * end), 45, "the wave to be handled")
    redeliveries.put(None)
    redeliverer.join(60)
    assert not any(t.is_alive() for t in [*senders, redeliverer])
    assert len(statuses) >= len(users) * per_user // 4 + len(redeliver) and set(statuses) == {200}

    if backend.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(project / "bot.db")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (project / "bot.db-webhook").exists() == (journal == "1")  # the webhook's own file, or none
    stats = wait_until(all_handled(inbox, len(users) * per_user), 45, "every event to be handled")
    assert stats["done"] == stats["received"] == len(users) * per_user and stats["failed"] == 0

    store = inbox.store
    for u in users:
        expected = [f"{u} m{i:02d}" for i in range(per_user)]
        assert store.get_temp(u, "seen") == expected
        assert graph.sent_texts(u) == expected
    finished = [m for m in markers(project) if m["phase"] == "finished"]
    assert len(finished) == len(users) * per_user
    assert not any(m["redelivered"] for m in finished)
    assert len({m["pid"] for m in finished}) >= 2, "both workers should have handled events"


#: The environment that makes tests/gunicorn_bot's handler plain or ``async def``.
KINDS = {"plain": {}, "async": {"BOT_ASYNC": "1"}}


# -- b) a worker killed mid-handler ----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_sigkilled_worker_event_is_handled_again_by_another_and_finishes_once(served, kind):
    server = served(**KINDS[kind])
    project = server.project
    assert server.hook().send_text("victim", "slow 3 kill-me").status_code == 200
    started = wait_until(lambda: [m for m in markers(project) if m["phase"] == "started"], 15, "the handler to start")
    victim = started[0]["pid"]
    assert started[0]["redelivered"] is False and victim in server.booted()
    os.kill(victim, signal.SIGKILL)

    inbox = project_inbox(project)
    # The lease (2 s) is renewed while the 3 s handler runs, so only the death frees it.
    wait_until(all_handled(inbox, 1), 30, "another worker to handle the event")
    runs = [m for m in markers(project) if m["cmd"] == "slow 3 kill-me"]
    assert [(m["phase"], m["redelivered"]) for m in runs] == [
        ("started", False), ("started", True), ("finished", True)]
    assert runs[1]["pid"] != victim and runs[2]["pid"] == runs[1]["pid"]
    with inbox.engine.connect() as conn:
        (row,) = conn.execute(inbox_table.select()).all()
    assert row.status == "done" and row.attempts == 2
    assert inbox.store.get_temp("victim", "seen") == ["slow 3 kill-me"]


@pytest.mark.parametrize("kind", KINDS)
def test_state_changed_before_a_worker_is_sigkilled_is_not_kept_and_the_redelivery_sees_the_old_state(served, kind):
    # The handler adds one to a counter, then the worker dies in its sleep: the change commits
    # with the event, so it died with it, and the counter ends one higher, not two.
    server = served(**KINDS[kind])
    project = server.project
    inbox = project_inbox(project)
    inbox.store.set_temp("victim", "count", 41)
    assert server.hook().send_text("victim", "count slow 3 kill-me").status_code == 200
    counted = wait_until(lambda: [m for m in markers(project) if m["phase"] == "counted"], 15, "the handler to count")
    assert inbox.store.get_temp("victim", "count") == 41  # not committed while the handler runs
    os.kill(counted[0]["pid"], signal.SIGKILL)

    wait_until(all_handled(inbox, 1), 30, "another worker to handle the event")
    runs = [(m["phase"], m["redelivered"]) for m in markers(project)]
    assert runs == [("started", False), ("counted", False), ("started", True), ("counted", True), ("finished", True)]
    assert inbox.store.get_temp("victim", "count") == 42
    assert inbox.stats()["done"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_sigkilled_mid_burst_loses_nothing_and_redelivers_only_the_running_event(served, kind):
    # The worker reads several of the user's events at once; it dies on the third, with three
    # more read but not started: another worker handles the third again and the rest once, in order.
    server = served(**KINDS[kind])
    project = server.project
    base = int(time.time() * 1000)
    texts = ["m0", "m1", "slow 3 kill-me", "m3", "m4", "m5"]
    items = [message_event("burst", text, timestamp=base + n) for n, text in enumerate(texts)]
    assert server.hook().post(*items).status_code == 200
    started = wait_until(lambda: [m for m in markers(project) if m["cmd"] == texts[2]], 15, "the third to start")
    victim = started[0]["pid"]
    os.kill(victim, signal.SIGKILL)

    inbox = project_inbox(project)
    wait_until(all_handled(inbox, len(texts)), 30, "another worker to handle the rest")
    assert inbox.store.get_temp("burst", "seen") == texts
    finished = [(m["cmd"], m["redelivered"]) for m in markers(project) if m["phase"] == "finished"]
    assert finished == [("m0", False), ("m1", False), (texts[2], True), ("m3", False), ("m4", False), ("m5", False)]
    assert inbox.stats()["done"] == len(texts)


# -- c) graceful stop ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_finishes_running_handler_and_leaves_the_rest_for_the_next_start(served, kind):
    server = served(**KINDS[kind])
    project = server.project
    base = int(time.time() * 1000)
    items = [message_event("u", text, timestamp=base + n) for n, text in enumerate(["slow 2 first", "second", "third"])]
    assert server.hook().post(*items).status_code == 200
    wait_until(lambda: any(m["phase"] == "started" for m in markers(project)), 15, "the slow handler to start")

    assert server.stop(signal.SIGTERM) == 0
    phases = [(m["phase"], m["cmd"]) for m in markers(project)]
    assert phases == [("started", "slow 2 first"), ("finished", "slow 2 first")]
    inbox = project_inbox(project)
    stats = inbox.stats()
    assert (stats["done"], stats["pending"], stats["running"]) == (1, 2, 0)

    served(project, **KINDS[kind])  # the next start picks them up without any new webhook
    wait_until(all_handled(inbox, 3), 20, "the next server to handle what was left")
    assert inbox.store.get_temp("u", "seen") == ["slow 2 first", "second", "third"]
    assert not any(m["redelivered"] for m in markers(project))


# -- d) the ack does not wait for handlers ---------------------------------------------------------
def test_webhook_answers_while_every_handler_thread_is_busy(served):
    server = served(AMPALIBE_MAX_CONCURRENCY="2")  # 2 workers x 2 handlers at once
    project = server.project
    hook = server.hook()
    for n in range(6):
        assert hook.send_text(f"busy{n}", "gate open.flag busy").status_code == 200
    wait_until(lambda: sum(m["phase"] == "started" for m in markers(project)) >= 4, 15,
               "all four handler threads to be busy")

    for n in range(10):  # every handler thread is blocked at the gate: only the ack path can answer
        assert hook.send_text(f"quick{n}", "hello").status_code == 200
    assert not any(m["user"].startswith("quick") for m in markers(project))
    inbox = project_inbox(project)
    assert inbox.stats()["pending"] >= 10

    (project / "open.flag").touch()
    wait_until(all_handled(inbox, 16), 20, "every event to be handled once the gate opens")
    for n in range(10):
        assert inbox.store.get_temp(f"quick{n}", "seen") == ["hello"]


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_gunicorn_workers_tune_the_threads_that_handle_events(served, graph, kind):
    # The garbage collector: a loaded worker's collections stopped all its threads for 0.1 s and
    # more (bench/ANALYSIS.md).  AMPALIBE_HANDLER_NICE's default (Linux: nice values are per
    # thread there only): the kernel runs the request threads (the acks) first.
    server = served(**({"BOT_ASYNC": "1"} if kind == "async def" else {}))
    hook = server.hook()
    base = os.getpriority(os.PRIO_PROCESS, 0)  # gunicorn's processes start with this test's
    expected = {"g": "gc 50000"}
    if sys.platform.startswith("linux"):
        expected["n"] = f"nice {min(19, base + 19)}"
    command = {"g": "gc", "n": "nice"}
    for prefix in expected:
        for n in range(4):  # spread over both workers
            assert hook.send_text(f"{prefix}{n}", command[prefix]).status_code == 200
    wait_until(lambda: all(graph.sent_texts(f"{p}{n}") for p in expected for n in range(4)), 20, "the replies")
    for prefix, reply in expected.items():
        assert all(graph.sent_texts(f"{prefix}{n}") == [reply] for n in range(4))


# -- the executor's edge cases, in one process -----------------------------------------------------
@pytest.fixture
def local_inbox(tmp_path: Path) -> Iterator[Inbox]:
    """An inbox on a file SQLite database of its own."""
    url = f"sqlite:///{tmp_path / 'local.db'}"
    yield Inbox(Store(make_engine(url)))
    make_engine(url).dispose()


def record(inbox: Inbox, *items: dict) -> list[str]:
    return inbox.record(parse_body(page_body(*items)))


def test_lease_is_renewed_while_a_handler_outlives_it_even_with_slow_polling(local_inbox):
    # Renewal used to ride on the poll interval: with poll_seconds above lease_seconds the lease
    # lapsed under a running handler and another worker ran the same user's events meanwhile.
    started, release = threading.Event(), threading.Event()

    def handle(claimed: Claimed) -> None:
        started.set()
        release.wait(10)

    executor = ThreadExecutor(local_inbox, handle, threads=1, lease_seconds=0.6, poll_seconds=30)
    try:
        executor.notify(record(local_inbox, message_event("u", "long")))
        assert started.wait(10)
        deadline = time.monotonic() + 1.5  # well past the lease
        while time.monotonic() < deadline:
            assert not local_inbox.claim("u", "other-worker", 0.6), "the lease lapsed under a running handler"
            time.sleep(0.1)
        release.set()
    finally:
        release.set()
        assert executor.shutdown(10)
    assert local_inbox.stats()["done"] == 1


def test_shutdown_finishes_the_running_handler_and_starts_nothing_else(local_inbox):
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def handle(claimed: Claimed) -> None:
        ran.append(claimed.event.raw["message"]["text"])
        started.set()
        release.wait(10)

    executor = ThreadExecutor(local_inbox, handle, threads=1, lease_seconds=5, poll_seconds=30)
    base = int(time.time() * 1000)
    users = record(local_inbox, message_event("u", "first", timestamp=base),
                   message_event("u", "second", timestamp=base + 1), message_event("v", "other", timestamp=base))
    executor.notify(users)
    assert started.wait(10)
    threading.Timer(0.3, release.set).start()
    assert executor.shutdown(10) is True
    assert len(ran) == 1
    stats = local_inbox.stats()
    assert (stats["done"], stats["pending"], stats["running"]) == (1, 2, 0)
    assert sorted(local_inbox.ready_users()) == ["u", "v"]  # leases released: the next worker takes over


def test_shutdown_reports_handlers_it_could_not_wait_for(local_inbox):
    started, release = threading.Event(), threading.Event()
    executor = ThreadExecutor(local_inbox, lambda claimed: started.set() or release.wait(10), threads=1)
    executor.notify(record(local_inbox, message_event("u", "stuck")))
    assert started.wait(10)
    try:
        assert executor.shutdown(0.1) is False
    finally:
        release.set()


def test_an_event_whose_workers_always_die_is_failed_after_max_attempts(local_inbox):
    base = int(time.time() * 1000)
    record(local_inbox, message_event("u", "poison", timestamp=base), message_event("u", "next", timestamp=base + 1))
    for attempt in range(local_inbox.max_attempts):  # each worker dies: its lease simply expires
        assert local_inbox.claim("u", f"dead{attempt}", 0.0)
        assert local_inbox.next_event("u", f"dead{attempt}", 0.0).event.raw["message"]["text"] == "poison"
    seen: list[str] = []
    InlineExecutor(local_inbox, lambda claimed: seen.append(claimed.event.raw["message"]["text"])).drain("u")
    assert seen == ["next"]
    (failed,) = local_inbox.failed()
    assert failed["attempts"] == local_inbox.max_attempts and "Given up" in failed["error"]


def test_an_error_outside_the_handler_fails_the_event_without_blocking_the_user(local_inbox):
    def handle(claimed: Claimed) -> None:
        if claimed.event.raw["message"]["text"] == "bad":
            raise RuntimeError("a before_receive hook raised")

    base = int(time.time() * 1000)
    record(local_inbox, message_event("u", "bad", timestamp=base), message_event("u", "good", timestamp=base + 1))
    assert InlineExecutor(local_inbox, handle).drain("u") == 2
    stats = local_inbox.stats()
    assert (stats["done"], stats["failed"]) == (1, 1)
    assert "a before_receive hook raised" in local_inbox.failed()[0]["error"]


def test_a_late_outcome_does_not_overwrite_the_one_recorded(local_inbox):
    record(local_inbox, message_event("u", "x"))
    assert local_inbox.claim("u", "slow-worker", 0.0)
    first = local_inbox.next_event("u", "slow-worker", 0.0)
    assert local_inbox.claim("u", "next-worker", 5)  # the first lease lapsed
    second = local_inbox.next_event("u", "next-worker", 5)
    assert second.redelivered
    local_inbox.finish(second)
    local_inbox.finish(first, RuntimeError("the first attempt failed late"))
    assert local_inbox.stats()["done"] == 1 and local_inbox.failed() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_holds_leases_under_its_own_name(local_inbox):
    # With gunicorn's preload_app the executor is built in the master, before the fork: each
    # worker must hold leases under its own name, or two workers would both "hold" one user.
    handled: list[int] = []
    executor = ThreadExecutor(local_inbox, lambda claimed: handled.append(os.getpid()), threads=1)
    local_inbox.store.ensure()
    parent_owner = executor.owner
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's cleanup
        try:
            executor.notify(record(local_inbox, message_event("child", "hi")))
            deadline = time.monotonic() + 10
            while not handled and time.monotonic() < deadline:
                time.sleep(0.02)
            executor.shutdown(10)
            report = {"owner": executor.owner, "handled_here": handled == [os.getpid()]}
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 20)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the forked child did not report within 20 s")
        report = json.loads(os.read(read_end, 4096) or b"{}")
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert report.get("handled_here") is True
    assert report["owner"] != parent_owner and report["owner"].split(":")[1] == str(pid)
    assert executor.owner == parent_owner and local_inbox.stats()["done"] == 1
