"""The Celery executor with real parts: redis-server, ``celery worker`` processes, gunicorn.

Redis is a throwaway server started by the suite (tests/brokers.py), like MariaDB and
PostgreSQL.  Projects are copies of tests/gunicorn_bot/ (spec style, its handlers note each
run in ``markers.jsonl``) served by ``ampalibe run`` or gunicorn, with ``ampalibe worker
--celery`` processes; the Flask-native bot of tests/celery_bot/ runs under the plain
``celery -A celery_worker worker``.  Every process is stopped by the pid the test started.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from click.testing import CliRunner

import flask_ampalibe
from flask_ampalibe.celery_executor import QUEUE, CeleryExecutor
from flask_ampalibe.cli import cli
from flask_ampalibe.errors import ConfigurationError
from flask_ampalibe.inbox import Inbox
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store
from flask_ampalibe.testing import WebhookClient, message_event
from brokers import redis_server  # noqa: F401  (fixture)
from conftest import PROJECT_MODULES, SECRET, VERIFY
from dbservers import free_port
from test_delivery import Gunicorn, _Http, all_handled, make_project, markers, project_env, wait_until
from test_scheduler_gunicorn import TICKS

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Celery workers and gunicorn run on POSIX here")

HERE = Path(__file__).resolve().parent


# -- processes -----------------------------------------------------------------------------------
class Process:
    """A process started for a test, its output in a log file, stopped by its pid."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.argv, self.cwd, self.env, self.log = argv, cwd, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Process":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"{' '.join(self.argv[2:])} exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
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
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.returncode


class CeleryWorker(Process):
    """``ampalibe worker --celery`` in a project folder (or any argv), ready once Celery says so."""

    def start(self, timeout: float = 60.0) -> "CeleryWorker":
        super().start()
        wait_until(lambda: self.alive() and " ready." in self.output(), timeout, "the Celery worker to be ready")
        return self


class AmpalibeRun(Process):
    """``ampalibe run --port PORT`` in a project folder: one "host" of the bot."""

    def start(self, timeout: float = 60.0) -> "AmpalibeRun":
        super().start()
        self.url = wait_until(lambda: self.alive() and (m := re.search(r"Listening at: (http://\S+)", self.output()))
                              and m.group(1), timeout, "ampalibe run to listen")
        params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "ok"}

        def verified() -> bool:
            try:
                return self.alive() and requests.get(self.url + "/", params=params, timeout=5).text == "ok"
            except requests.RequestException:  # refused, or a worker still booting on a loaded machine
                return False

        wait_until(verified, timeout, "the webhook to answer")
        return self

    def hook(self) -> WebhookClient:
        return WebhookClient(_Http(self.url), SECRET)


class Web(Gunicorn):
    """test_delivery's gunicorn, whose start-up check also waits out a read timeout (a loaded machine)."""

    def _verified(self) -> bool:
        try:
            return super()._verified()
        except requests.RequestException:
            return False


class Cluster:
    """Web servers and Celery workers of one project; everything started is stopped at the end."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project, self.env = project, env
        self.processes: list[Process] = []

    def worker(self, threads: int = 4, *extra: str) -> CeleryWorker:
        n = len(self.processes)
        worker = CeleryWorker([sys.executable, "-m", "flask_ampalibe.cli", "worker", "--celery", "--threads",
                               str(threads), "--graceful-timeout", "10", *extra],
                              self.project, self.env, self.project / f"celery{n}.log")
        self.processes.append(worker)
        return worker.start()

    def run(self, workers: int = 2) -> AmpalibeRun:
        n = len(self.processes)
        server = AmpalibeRun([sys.executable, "-m", "flask_ampalibe.cli", "run", "--port", str(free_port()),
                              "--host", "127.0.0.1", "--workers", str(workers)],
                             self.project, self.env, self.project / f"run{n}.log")
        self.processes.append(server)
        return server.start()

    def gunicorn(self) -> Web:
        server = Web(self.project, self.env)
        self.processes.append(server)  # type: ignore[arg-type]  (same stop())
        return server.start(timeout=60)  # a loaded 2-core machine starts slowly

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=15)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in self.processes)


def settle(cluster: Cluster, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """:func:`wait_until`, with the processes' logs in the failure message."""
    try:
        return wait_until(predicate, timeout, what)
    except pytest.fail.Exception:
        pytest.fail(f"still waiting after {timeout} s for {what}; logs:\n{cluster.logs()}")


def celery_env(graph_url: str, broker: str, **extra: str) -> dict[str, str]:
    """The test bot's environment with the Celery executor, set as a project's .env would."""
    values = dict(AMP_EXECUTOR="celery", AMP_CELERY_BROKER_URL=broker, AMPALIBE_CELERY_REQUEUE_SECONDS="2")
    values.update(extra)
    return project_env(graph_url, **values)


@pytest.fixture
def broker(redis_server: Any) -> Iterator[Any]:
    redis_server.reset()
    yield redis_server
    redis_server.reset()


@pytest.fixture
def cluster(tmp_path: Path, graph: Any, broker: Any) -> Iterator[Callable[..., Cluster]]:
    """``cluster(**env)``: a fresh copy of the test bot with the Celery executor (SQLite unless told)."""
    made: list[Cluster] = []

    def make(**env: str) -> Cluster:
        project = make_project(tmp_path / f"bot{len(made)}")
        found = Cluster(project, celery_env(graph.url, broker.url, **env))
        made.append(found)
        return found

    yield make
    for found in made:
        found.stop()
        make_engine(f"sqlite:///{found.project / 'bot.db'}").dispose()


def inbox_of(cluster: Cluster, url: str | None = None) -> Inbox:
    return Inbox(Store(make_engine(url or f"sqlite:///{cluster.project / 'bot.db'}")))


def queued(redis: Any) -> int:
    return int(redis.command("LLEN", QUEUE).lstrip(b":"))


# -- configuration ---------------------------------------------------------------------------------
def test_celery_executor_needs_a_broker_url(app, router):
    app.config.update(AMPALIBE_EXECUTOR="celery")
    with pytest.raises(ConfigurationError, match="AMPALIBE_CELERY_BROKER_URL .*redis://"):
        flask_ampalibe.Ampalibe(app, router=router)


def test_unknown_executor_names_celery_among_the_choices(app, router):
    app.config.update(AMPALIBE_EXECUTOR="rq")
    with pytest.raises(ConfigurationError, match="'celery'"):
        flask_ampalibe.Ampalibe(app, router=router)


def test_amp_executor_in_dotenv_works_with_a_conf_py_that_does_not_read_it(monkeypatch, graph, broker, tmp_path):
    from flask_ampalibe.extension import reset_default

    class Configuration:  # an older scaffolded conf.py: no EXECUTOR, no CELERY_BROKER_URL
        ACCESS_TOKEN, VERIF_TOKEN, APP_SECRET = "token", VERIFY, SECRET
        GRAPH_URL = graph.url
        DATABASE_URL = f"sqlite:///{tmp_path / 'bot.db'}"

    monkeypatch.setenv("AMP_EXECUTOR", "celery")  # as load_dotenv puts .env in the environment
    monkeypatch.setenv("AMP_CELERY_BROKER_URL", broker.url)
    reset_default()
    try:
        bot = flask_ampalibe.init(Configuration())
        executor = bot.app.extensions["ampalibe"].executor
        assert isinstance(executor, CeleryExecutor) and executor.broker_url == broker.url
        assert flask_ampalibe.celery_app() is executor.celery
        conf = executor.celery.conf
        assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    finally:
        reset_default()


def test_celery_app_refuses_an_app_with_another_executor(app, ext):
    with pytest.raises(ConfigurationError, match="AMPALIBE_EXECUTOR=celery"):
        flask_ampalibe.celery_app(app)


def test_ampalibe_worker_celery_refuses_another_executor(tmp_path, monkeypatch, graph):
    from flask_ampalibe.extension import reset_default

    project = make_project(tmp_path / "bot")
    for key, value in project_env(graph.url, AMPALIBE_EXECUTOR="worker").items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith(("AMP_EXECUTOR", "AMP_CELERY"))]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    reset_default()
    try:
        result = CliRunner().invoke(cli, ["worker", "--celery"])
    finally:
        reset_default()
        for name in PROJECT_MODULES:
            sys.modules.pop(name, None)
    assert result.exit_code == 1
    assert "needs the Celery executor, and this bot's is 'worker'" in result.output
    assert "AMP_EXECUTOR=celery" in result.output


# -- the webhook records, then enqueues; the plain `celery -A module worker` way ------------------
def test_webhook_records_then_enqueues_and_a_celery_worker_of_an_app_factory_handles(
        tmp_path, graph, broker, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMP_", "AMPALIBE_"))}
    env.update(BOT_INSTANCE=str(tmp_path / "instance"), BOT_GRAPH_URL=graph.url, BOT_BROKER_URL=broker.url,
               BOT_DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}", PYTHONUNBUFFERED="1")
    for key, value in env.items():
        if key.startswith("BOT_"):
            monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(HERE / "celery_bot"))
    import botapp

    app = botapp.create_app()
    state = app.extensions["ampalibe"]
    hook = WebhookClient(app.test_client(), SECRET)
    try:
        base = int(time.time() * 1000)
        for i in range(5):
            assert hook.post(message_event("ana", f"m{i}", timestamp=base + i)).status_code == 200
        assert hook.post(message_event("bob", "slow 3", timestamp=base)).status_code == 200
        # Recorded before the 200, handled by nobody yet: the tasks wait in Redis.
        assert state.inbox.stats()["pending"] == 6
        wait_until(lambda: queued(broker) >= 2, 10, "the tasks to be sent")
        assert graph.sent_texts() == []

        worker = CeleryWorker([sys.executable, "-m", "celery", "-A", "celery_worker", "worker", "--pool", "threads",
                               "--concurrency", "4", "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
                              HERE / "celery_bot", env, tmp_path / "celery.log")
        try:
            worker.start()
            wait_until(all_handled(state.inbox, 6), 60, "the Celery worker to handle every event")
            stats = state.inbox.stats()
            assert (stats["done"], stats["failed"]) == (6, 0)
            texts = graph.sent_texts("ana")
            assert [t.split()[2] for t in texts] == [f"m{i}" for i in range(5)]
            assert {t.split()[0] for t in texts} == {str(worker.pid)}, "the worker process handled them"
            # bob's handler took 3 s with a 2 s lease: renewed by the worker, so it ran once.
            assert [t.split(" ", 1)[1] for t in graph.sent_texts("bob")] == ["False slow 3"]
            assert "flask_ampalibe.drain" in worker.output()  # `celery worker` lists the task
        finally:
            worker.stop()
    finally:
        state.shutdown(5)
        sys.modules.pop("botapp", None)


# -- async def and slow handlers -------------------------------------------------------------------
def test_async_def_and_slow_handlers_in_a_celery_worker(cluster):
    bot = cluster(BOT_ASYNC="1")  # tests/gunicorn_bot's handler is then an async def
    web = bot.gunicorn()
    worker = bot.worker(threads=4)
    hook = web.hook()
    base = int(time.time() * 1000)
    users = [f"a{n}" for n in range(4)]
    for i in range(3):  # the first message of a0 takes 3 s: longer than the 2 s lease
        for u in users:
            text = "slow 3 long" if (u, i) == ("a0", 0) else f"{u} m{i}"
            assert hook.post(message_event(u, text, timestamp=base + i)).status_code == 200
    inbox = inbox_of(bot)
    settle(bot, all_handled(inbox, 12), 60, "every event to be handled")
    assert inbox.store.get_temp("a0", "seen") == ["slow 3 long", "a0 m1", "a0 m2"]
    for u in users[1:]:
        assert inbox.store.get_temp(u, "seen") == [f"{u} m{i}" for i in range(3)]
    runs = markers(bot.project)
    assert len(runs) == 24 and not any(m["redelivered"] for m in runs)  # renewed: never run twice
    assert {m["pid"] for m in runs} == {worker.pid}
    # The other users did not wait for the slow one.
    slow_end = next(m["time"] for m in runs if m["cmd"] == "slow 3 long" and m["phase"] == "finished")
    assert all(m["time"] < slow_end for m in runs if m["user"] != "a0" and m["phase"] == "finished")


# -- failures ---------------------------------------------------------------------------------------
def test_sigkilled_celery_worker_event_runs_again_redelivered_on_another(cluster):
    bot = cluster()
    web = bot.gunicorn()
    first = bot.worker(threads=2)
    second = bot.worker(threads=2)
    hook = web.hook()
    base = int(time.time() * 1000)
    assert hook.post(message_event("victim", "gate go kill-me", timestamp=base),
                     message_event("victim", "after", timestamp=base + 1)).status_code == 200
    started = settle(bot, lambda: [m for m in markers(bot.project) if m["phase"] == "started"], 40,
                     "the handler to start")
    victim = started[0]["pid"]
    assert victim in (first.pid, second.pid) and started[0]["redelivered"] is False
    os.kill(victim, signal.SIGKILL)
    (bot.project / "go").touch()

    inbox = inbox_of(bot)
    settle(bot, all_handled(inbox, 2), 60, "another worker to handle the event again")
    runs = [(m["phase"], m["cmd"], m["redelivered"]) for m in markers(bot.project)]
    assert runs == [("started", "gate go kill-me", False),
                    ("started", "gate go kill-me", True), ("finished", "gate go kill-me", True),
                    ("started", "after", False), ("finished", "after", False)], runs
    survivor = {m["pid"] for m in markers(bot.project)[1:]}
    assert survivor == {first.pid, second.pid} - {victim}
    assert inbox.store.get_temp("victim", "seen") == ["gate go kill-me", "after"]


def test_redis_restart_mid_load_loses_nothing_and_the_webhook_keeps_answering(cluster, broker):
    bot = cluster()
    web = bot.gunicorn()
    workers = [bot.worker(threads=4), bot.worker(threads=4)]
    users, per_user = [f"r{n:02d}" for n in range(20)], 10
    statuses: list[int] = []
    restarted = threading.Event()

    def post() -> None:
        hook, base = web.hook(), int(time.time() * 1000)
        for i in range(per_user):
            if i == per_user // 2:
                restarted.wait(30)  # half before the restart, the rest while Redis is (or was) down
            for u in users:
                statuses.append(hook.post(message_event(u, f"{u} m{i}", timestamp=base + i)).status_code)

    sender = threading.Thread(target=post)
    sender.start()
    time.sleep(0.5)
    broker.stop_now()  # every queued and unacknowledged task is gone with it
    restarted.set()
    time.sleep(2)
    broker.start_again()
    sender.join(60)
    assert not sender.is_alive()
    assert len(statuses) == len(users) * per_user and set(statuses) == {200}

    inbox = inbox_of(bot)
    stats = settle(bot, all_handled(inbox, len(users) * per_user), 90, "every event to be handled after the restart")
    assert stats["done"] == len(users) * per_user, bot.logs()
    for u in users:
        assert inbox.store.get_temp(u, "seen") == [f"{u} m{i}" for i in range(per_user)]
    # Some were recorded while Redis was down: their tasks could not be sent, the sweeper sent them.
    assert "could not send the Celery task" in web.output()
    finished = Counter((m["cmd"], m["redelivered"]) for m in markers(bot.project) if m["phase"] == "finished")
    assert all(count == 1 for (cmd, redelivered), count in finished.items() if not redelivered)
    # Celery 5.7's worker sometimes stops for good when Redis goes away under running tasks
    # ("Unrecoverable error"); ampalibe worker --celery then starts it again in the same process.
    assert all(worker.alive() for worker in workers)


#: Appended to the test bot's core.py: a Celery consumer step (Celery's public bootsteps API) that
#: fails the consumer's next start once the file ``crash-once`` exists in the project (and removes
#: it), as Celery itself sometimes fails when the broker connection comes back.
CRASH_ONCE_STEP = """
from celery import bootsteps


class CrashOnce(bootsteps.StartStopStep):
    def start(self, consumer):
        flag = os.path.join(HERE, "crash-once")
        if os.path.exists(flag):
            os.remove(flag)
            raise RuntimeError("a consumer step failed on purpose")


ampalibe.celery_app().steps["consumer"].add(CrashOnce)
"""


def test_celery_worker_that_stops_on_an_error_is_started_again_and_sigterm_still_stops_it(cluster, broker):
    bot = cluster()
    with open(bot.project / "core.py", "a", encoding="utf-8") as core:
        core.write(CRASH_ONCE_STEP)
    web = bot.gunicorn()
    worker = bot.worker(threads=2)
    hook = web.hook()
    base = int(time.time() * 1000)
    assert hook.post(message_event("u", "before", timestamp=base)).status_code == 200
    inbox = inbox_of(bot)
    settle(bot, all_handled(inbox, 1), 60, "the first event to be handled")

    (bot.project / "crash-once").touch()
    broker.stop_now()  # the consumer starts again when the broker is back: and fails
    time.sleep(1)
    broker.start_again()
    settle(bot, lambda: "starting it again in 1 s" in worker.output(), 60, "the worker to say it starts again")
    assert "Unrecoverable error: RuntimeError('a consumer step failed on purpose')" in worker.output()
    settle(bot, lambda: worker.alive() and worker.output().count(" ready.") == 2, 60, "Celery to be ready again")

    assert hook.post(message_event("u", "after", timestamp=base + 1)).status_code == 200
    settle(bot, all_handled(inbox, 2), 60, "the event sent after the restart to be handled")
    assert inbox.store.get_temp("u", "seen") == ["before", "after"]
    assert {m["pid"] for m in markers(bot.project)} == {worker.pid}  # the same process, started again

    assert worker.stop(signal.SIGTERM, timeout=30) == 0  # a requested stop is not restarted
    assert worker.output().count("starting it again") == 1


def test_postgresql_down_webhook_answers_503_then_recovers(cluster, postgresql_server):
    postgresql_server.reset()
    bot = cluster(DATABASE_URL=postgresql_server.url)
    web = bot.gunicorn()
    bot.worker(threads=2)
    hook = web.hook()
    assert hook.send_text("p", "before").status_code == 200
    inbox = inbox_of(bot, postgresql_server.url)
    settle(bot, all_handled(inbox, 1), 60, "the first event to be handled")
    inbox.engine.dispose()

    down = message_event("p", "while down")
    postgresql_server._shutdown()
    try:
        assert hook.post(down).status_code == 503  # Facebook retries it
    finally:
        postgresql_server._launch()
    # Facebook's retry, and a new message, once the database is back.
    wait_until(lambda: hook.post(down).status_code == 200, 30, "the webhook to answer 200 again")
    assert hook.send_text("p", "after").status_code == 200
    settle(bot, all_handled(inbox, 3), 60, "the events to be handled after the restart")
    assert inbox.store.get_temp("p", "seen") == ["before", "while down", "after"]
    inbox.engine.dispose()


# -- scheduled jobs ---------------------------------------------------------------------------------
JOB = '''

@ampalibe.schedule("* * * * *")
def every_minute(when):
    mark("job", "scheduler", when.isoformat(), False)
'''


def test_scheduled_job_runs_once_per_slot_across_celery_and_web_workers(cluster):
    bot = cluster()
    with open(bot.project / "core.py", "a", encoding="utf-8") as core:
        core.write(TICKS + JOB)
    workers = [bot.worker(threads=1), bot.worker(threads=1)]
    # No web server yet: the Celery workers run the scheduler themselves.
    job = settle(bot, lambda: [m for m in markers(bot.project) if m["phase"] == "job"], 40, "the job to run")
    assert job[0]["pid"] in {w.pid for w in workers}
    web = bot.gunicorn()  # more processes tick the same minute as they start: they must lose the claim
    booted = set(web.booted())
    assert booted
    settle(bot, lambda: booted <= {m["pid"] for m in markers(bot.project) if m["phase"] == "tick"}, 40,
           "the web workers' first scheduler ticks")
    runs = Counter(m["cmd"] for m in markers(bot.project) if m["phase"] == "job")
    assert runs and set(runs.values()) == {1}, runs


# -- two hosts, three Celery workers, one PostgreSQL, one Redis -----------------------------------
USERS = int(os.environ.get("AMP_TEST_CELERY_USERS", "200"))
PER_USER = 20


def test_two_hosts_three_celery_workers_every_message_once_in_order(cluster, graph, postgresql_server):
    postgresql_server.reset()
    bot = cluster(DATABASE_URL=postgresql_server.url, AMPALIBE_CELERY_REQUEUE_SECONDS="10")
    hosts = [bot.run(workers=2), bot.run(workers=2)]
    workers = [bot.worker(threads=4) for _ in range(3)]
    users = [f"h{n:03d}" for n in range(USERS)]
    base = int(time.time() * 1000)
    rng = random.Random(13)
    sent: list[dict] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def post_round(i: int, chunk: list[str], host: AmpalibeRun) -> None:
        # Message i of each user, in bodies of 10 events (Meta batches), to one host or the other.
        hook = host.hook()
        for start in range(0, len(chunk), 10):
            items = [message_event(u, f"{u} m{i:02d}", mid=f"mid.{u}.{i}", timestamp=base + 10 * i)
                     for u in chunk[start:start + 10]]
            with lock:  # one earlier message redelivered per body of 10: 10 % (ignored by its mid)
                again = [rng.choice(sent)] if sent else []
                sent.extend(items)
            status = hook.post(*items, *again).status_code
            with lock:
                statuses.append(status)

    for i in range(PER_USER):  # a user's message i+1 is posted once message i was answered 200
        rng.shuffle(users)
        chunks = [users[n::4] for n in range(4)]
        threads = [threading.Thread(target=post_round, args=(i, chunk, hosts[(i + n) % 2]))
                   for n, chunk in enumerate(chunks)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert set(statuses) == {200} and len(statuses) >= USERS * PER_USER // 10

    inbox = inbox_of(bot, postgresql_server.url)
    total = USERS * PER_USER
    stats = settle(bot, all_handled(inbox, total), 300, "every message to be handled")
    assert (stats["received"], stats["done"], stats["failed"]) == (total, total, 0), bot.logs()
    for u in users:
        expected = [f"{u} m{i:02d}" for i in range(PER_USER)]
        assert inbox.store.get_temp(u, "seen") == expected
        assert graph.sent_texts(u) == expected
    runs: dict[str, list[bool]] = defaultdict(list)
    for m in markers(bot.project):
        if m["phase"] == "started":
            runs[m["cmd"]].append(m["redelivered"])
    assert len(runs) == total
    unflagged = {cmd: flags for cmd, flags in runs.items() if flags.count(False) != 1 or flags[0]}
    assert not unflagged, f"run twice without redelivered=True: {unflagged}"
    handled_by = Counter(m["pid"] for m in markers(bot.project) if m["phase"] == "finished")
    assert set(handled_by) <= {w.pid for w in workers}
    assert len(handled_by) == 3, f"every Celery worker should take part: {handled_by}"
    inbox.engine.dispose()
