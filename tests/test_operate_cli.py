"""The operational commands: ``worker``, ``inbox stats|failed|replay|purge``, ``db create``.

In-process tests run the click group on a copy of tests/gunicorn_bot/ (in the current folder,
as an operator would); one end-to-end test runs a real ``ampalibe worker`` process and stops
it with signals.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from flask_ampalibe.cli import cli
from flask_ampalibe.events import parse_body
from flask_ampalibe.extension import reset_default
from flask_ampalibe.engine import make_engine
from flask_ampalibe.testing import WebhookClient, message_event, page_body
from conftest import PROJECT_MODULES, SECRET, FakeClock
from test_delivery import STRAY, bot_settings, make_project, markers, project_env, project_inbox, wait_until


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, graph: Any) -> Iterator[Path]:
    """The test bot in the current folder, recording only (``AMPALIBE_EXECUTOR=worker``)."""
    folder = make_project(tmp_path / "bot")
    for key in list(os.environ):
        if key.startswith(STRAY):
            monkeypatch.delenv(key)
    for key, value in bot_settings(graph.url, AMPALIBE_EXECUTOR="worker").items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    reset_default()
    yield folder
    reset_default()
    for name in PROJECT_MODULES:
        sys.modules.pop(name, None)
    make_engine(f"sqlite:///{folder / 'bot.db'}").dispose()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _bot() -> tuple[Any, WebhookClient]:
    """The project's app (imported as the CLI does) and a client posting to its webhook."""
    from flask_ampalibe.cli import loader

    app = loader.load_app()
    return app.extensions["ampalibe"], WebhookClient(app.test_client(), SECRET)


def _invoke(runner: CliRunner, *args: str) -> Any:
    result = runner.invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_stats_counts_and_oldest_pending_age(project, runner):
    state, hook = _bot()
    state.inbox.clock = clock = FakeClock()
    hook.send_text("u", "one")
    hook.send_text("u", "boom")
    hook.send_text("v", "two")
    state.executor.drain("u")
    clock.advance(42)

    result = _invoke(runner, "inbox", "stats", "--json")
    assert result.exit_code == 0
    stats = json.loads(result.output)
    assert {k: stats[k] for k in ("received", "pending", "running", "done", "failed")} == {
        "received": 3, "pending": 1, "running": 0, "done": 1, "failed": 1}
    assert stats["oldest_pending_age"] == 42.0  # v's message, recorded 42 s ago

    text = _invoke(runner, "inbox", "stats").output
    assert "pending   1" in text and "failed    1" in text and "oldest unfinished event:" in text


def test_rejected_items_are_counted_and_listed_with_their_reason(project, runner):
    state, hook = _bot()
    bad = message_event("u", "hi")
    bad["recipient"] = "PAGE1"
    hook.post(message_event("u", "fine"), bad)
    stats = json.loads(_invoke(runner, "inbox", "stats", "--json").output)
    assert (stats["rejected"], stats["received"]) == (1, 2)
    assert "rejected  1" in _invoke(runner, "inbox", "stats").output
    listed = _invoke(runner, "inbox", "rejected").output
    assert "user u  message  recipient is not an object" in listed and "PAGE1" not in listed
    assert '"recipient":"PAGE1"' in _invoke(runner, "inbox", "rejected", "--body").output
    (row,) = json.loads(_invoke(runner, "inbox", "rejected", "--json").output)
    assert row["error"] == "recipient is not an object"
    assert "Deleted 0 handled events" in _invoke(runner, "inbox", "purge").output  # kept for the retention
    _invoke(runner, "inbox", "purge", "--days", "0")
    assert state.inbox.stats()["rejected"] == 0
    assert _invoke(runner, "inbox", "rejected").output.strip() == "No rejected items."


def test_failed_lists_errors_and_replay_puts_them_back(project, runner):
    state, hook = _bot()
    hook.send_text("u", "boom")
    hook.send_text("v", "boom")
    state.executor.drain("u")
    state.executor.drain("v")
    failed = state.inbox.failed()
    assert len(failed) == 2

    listed = _invoke(runner, "inbox", "failed").output
    assert "RuntimeError: boom: the handler failed on purpose" in listed and "Traceback" not in listed
    assert f"#{failed[0]['id']}" in listed and "user u" in listed and "user v" in listed
    assert "Traceback" in _invoke(runner, "inbox", "failed", "--traceback").output
    assert {row["user_id"] for row in json.loads(_invoke(runner, "inbox", "failed", "--json").output)} == {"u", "v"}

    one = _invoke(runner, "inbox", "replay", str(failed[0]["id"]))
    assert one.exit_code == 0 and "Back in the queue" in one.output
    assert state.inbox.stats()["pending"] == 1
    assert _invoke(runner, "inbox", "replay", "--all").exit_code == 0
    assert state.inbox.stats()["pending"] == 2 and state.inbox.failed() == []
    assert _invoke(runner, "inbox", "failed").output.strip() == "No failed events."


@pytest.mark.parametrize("args, message", [
    ([], "or --all"),
    (["7", "--all"], "or --all"),
    (["12345"], "No failed event has id 12345"),
])
def test_replay_refuses_what_it_cannot_do(project, runner, args, message):
    result = _invoke(runner, "inbox", "replay", *args)
    assert result.exit_code != 0 and message in result.output


def test_replay_all_with_nothing_to_replay_is_not_an_error(project, graph):
    """A cron job running `inbox replay --all` must not fail when all is well (the real CLI)."""
    env = dict(os.environ)
    done = subprocess.run([sys.executable, "-m", "flask_ampalibe.cli", "inbox", "replay", "--all"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "No failed events to replay."), done.stderr


def test_purge_deletes_handled_events_older_than_the_retention(project, runner):
    state, hook = _bot()
    hook.send_text("u", "one")
    hook.send_text("u", "boom")
    hook.send_text("v", "waiting")
    state.executor.drain("u")
    assert "Deleted 0 handled events" in _invoke(runner, "inbox", "purge").output  # default: 7 days
    assert "Deleted 1 handled event (or rejected item) finished" in _invoke(runner, "inbox", "purge", "--days", "0").output
    stats = state.inbox.stats()
    assert (stats["done"], stats["failed"], stats["pending"]) == (0, 1, 1)


def test_db_create_makes_the_tables(project, runner):
    result = _invoke(runner, "db", "create")
    assert result.exit_code == 0 and "bot.db" in result.output
    state, _ = _bot()
    assert {"amp_inbox", "amp_lease", "amp_user", "amp_temp"} <= set(inspect(state.store.engine).get_table_names())


def test_a_flask_native_app_is_found_through_flask_app(tmp_path, monkeypatch, runner):
    (tmp_path / "native.py").write_text(
        "from flask import Flask\n"
        "import flask_ampalibe\n"
        "app = Flask(__name__)\n"
        "app.config.update(AMPALIBE_APP_SECRET='s', AMPALIBE_ACCESS_TOKEN='t',\n"
        f"                  AMPALIBE_DATABASE_URL='sqlite:///{tmp_path / 'native.db'}', AMPALIBE_EXECUTOR='worker')\n"
        "flask_ampalibe.Ampalibe(app, router=flask_ampalibe.Router())\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FLASK_APP", "native:app")
    try:
        result = _invoke(runner, "inbox", "stats", "--json")
    finally:
        sys.modules.pop("native", None)
    assert result.exit_code == 0 and json.loads(result.output)["received"] == 0


def test_commands_outside_a_project_say_what_to_do(tmp_path, monkeypatch, runner):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLASK_APP", raising=False)
    for args in (["inbox", "stats"], ["worker"], ["db", "create"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and "No core.py" in result.output and "FLASK_APP" in result.output


# -- a real worker process ---------------------------------------------------------------------------
@contextmanager
def _worker(project: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``ampalibe worker`` process in ``project``, killed on the way out if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask_ampalibe.cli", "worker", "--graceful-timeout", "20"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(timeout=5)
    return proc.returncode, output.decode(errors="replace")


def test_worker_process_handles_events_and_stops_gracefully(tmp_path, graph):
    project = make_project(tmp_path / "bot")
    env = project_env(graph.url, AMPALIBE_EXECUTOR="worker")
    inbox = project_inbox(project)
    base = int(time.time() * 1000)

    def record(*items: dict) -> None:
        inbox.record(parse_body(page_body(*items)))

    # The web side (AMPALIBE_EXECUTOR=worker) only records; the worker finds the events by polling.
    record(message_event("u", "first", timestamp=base), message_event("u", "slow 2 second", timestamp=base + 1),
           message_event("u", "third", timestamp=base + 2), message_event("v", "hello", timestamp=base))
    with _worker(project, env) as proc:
        wait_until(lambda: any(m["cmd"] == "slow 2 second" for m in markers(project)), 20, "the slow handler to start")
        record(message_event("u", "fourth", timestamp=base + 3))
        code, output = _stop(proc, signal.SIGTERM)
    assert code == 0, output
    assert "Stopping: waiting up to 20 s" in output and "Stopped." in output
    assert inbox.store.get_temp("u", "seen") == ["first", "slow 2 second"]  # the running one finished
    assert inbox.store.get_temp("v", "seen") == ["hello"]
    assert inbox.stats()["pending"] == 2  # "third" and "fourth" wait for the next worker

    with _worker(project, env) as proc:  # the next worker takes them over; Ctrl-C stops it
        wait_until(lambda: inbox.stats()["done"] == 5, 20, "the next worker to handle the rest")
        code, output = _stop(proc, signal.SIGINT)
    assert code == 0, output
    assert inbox.store.get_temp("u", "seen") == ["first", "slow 2 second", "third", "fourth"]
    assert graph.sent_texts("u") == ["first", "slow 2 second", "third", "fourth"]
    assert not any(m["redelivered"] for m in markers(project))


def test_worker_process_takes_up_users_as_fast_as_its_slots_free_up(tmp_path, graph):
    # Only its sweeps give ``ampalibe worker`` work.  Once a sweep finds users it sweeps again as
    # soon as a slot is free: with AMPALIBE_POLL_SECONDS=30, a sweep of 100 users per poll would
    # leave 200 of these 300 users waiting for half a minute.
    project = make_project(tmp_path / "bot")
    env = project_env(graph.url, AMPALIBE_EXECUTOR="worker", AMPALIBE_POLL_SECONDS="30")
    inbox = project_inbox(project)
    inbox.record(parse_body(page_body(*[message_event(f"u{n}", f"hi {n}") for n in range(300)])))
    with _worker(project, env) as proc:
        wait_until(lambda: inbox.stats()["done"] == 300, 20, "the worker to handle all 300 users")
        code, output = _stop(proc, signal.SIGTERM)
    assert code == 0, output
    finished = [m["user"] for m in markers(project) if m["phase"] == "finished"]
    assert sorted(finished) == sorted(f"u{n}" for n in range(300))  # each once
    assert all(graph.sent_texts(f"u{n}") == [f"hi {n}"] for n in range(300))


@pytest.mark.parametrize("setting, expected", [("", 50000), ("20000", 20000), ("0", None)])
def test_worker_process_sets_the_garbage_collectors_threshold(tmp_path, graph, setting, expected):
    if expected is None:  # AMPALIBE_GC_THRESHOLD=0: a fresh interpreter's own threshold
        fresh = subprocess.run([sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"],
                               capture_output=True, text=True, timeout=30)
        expected = int(fresh.stdout)
    project = make_project(tmp_path / "bot")
    env = project_env(graph.url, AMPALIBE_EXECUTOR="worker", **({"AMPALIBE_GC_THRESHOLD": setting} if setting else {}))
    project_inbox(project).record(parse_body(page_body(message_event("u", "gc"))))
    with _worker(project, env) as proc:
        wait_until(lambda: graph.sent_texts("u"), 20, "the worker's reply")
        code, output = _stop(proc, signal.SIGTERM)
    assert code == 0, output
    assert graph.sent_texts("u") == [f"gc {expected}"]
