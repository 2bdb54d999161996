"""The ``ampalibe`` command line.

In-process tests pass the group explicitly (``runner.invoke(cli, [...])``); the end-to-end
tests at the bottom start real processes (``ampalibe run``, ``ampalibe run --dev``,
``gunicorn core:app``) on a free loopback port and talk to them over HTTP, with the bot's
replies going to a fake Graph API.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import py_compile
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from click.testing import CliRunner
from dotenv import dotenv_values

import flask_ampalibe
from flask_ampalibe.cli import cli
from flask_ampalibe.cli import loader
from flask_ampalibe.testing import FakeGraph

SKELETON = [
    ".env", ".gitignore", "assets/private/.gitkeep", "assets/public/.gitkeep", "conf.py", "core.py",
    "gunicorn.conf.py", "langs.json", "requirements.txt",
]
AMP_KEYS = (
    "AMP_ACCESS_TOKEN", "AMP_VERIF_TOKEN", "AMP_APP_SECRET", "AMP_ALLOW_UNSIGNED", "AMP_URL", "AMP_HOST",
    "AMP_PORT", "AMP_WORKERS", "AMP_GRAPH_URL", "AMP_GRAPH_VERSION", "ADAPTER", "DB_FILE", "DATABASE_URL",
    "GUNICORN_CMD_ARGS", "FLASK_DEBUG", "FLASK_APP", "WERKZEUG_RUN_MAIN", "WERKZEUG_SERVER_FD",
)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting of the machine running the tests leaks into them."""
    for key in AMP_KEYS:
        monkeypatch.delenv(key, raising=False)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- help, version ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["create"], ["init"], ["env"], ["lang"], ["run"], ["version"]])
def test_help_everywhere(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith(f"flask_ampalibe {flask_ampalibe.__version__} (Flask ")


# -- create -----------------------------------------------------------------------------------

def test_create_writes_the_skeleton(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["create", str(tmp_path / "mybot")])
    assert result.exit_code == 0, result.output
    project = tmp_path / "mybot"
    assert files_under(project) == SKELETON
    assert "cd " in result.output and "ampalibe run" in result.output
    for name in ("conf.py", "core.py", "gunicorn.conf.py"):
        py_compile.compile(str(project / name), doraise=True)
    json.loads((project / "langs.json").read_text())
    env = dotenv_values(project / ".env")
    assert set(env) >= {
        "AMP_ACCESS_TOKEN", "AMP_VERIF_TOKEN", "AMP_APP_SECRET", "AMP_ALLOW_UNSIGNED", "AMP_URL", "ADAPTER",
        "DB_FILE", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DATABASE_URL", "AMP_HOST",
        "AMP_PORT", "AMP_WORKERS", "AMP_GRAPH_URL", "AMP_GRAPH_VERSION",
    }
    assert len(env["AMP_VERIF_TOKEN"]) >= 24  # a random verify token, ready to give Facebook
    assert f"flask_ampalibe>={flask_ampalibe.__version__}" in (project / "requirements.txt").read_text()
    assert ".env" in (project / ".gitignore").read_text().splitlines()


def test_every_template_file_is_packaged_and_tracked() -> None:
    """Each skeleton file matches a package_data glob of setup.cfg and is not ignored by git
    (a real .gitignore among the templates once hid the template .env from git)."""
    import configparser
    import glob
    import shutil

    root = Path(flask_ampalibe.__file__).parent
    templates = sorted(
        p.relative_to(root).as_posix() for p in (root / "templates" / "project").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    setup_cfg = root.parent / "setup.cfg"
    if not setup_cfg.exists():
        pytest.skip("not a source checkout")
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    patterns = config["options.package_data"]["flask_ampalibe"].split()
    packaged = {
        Path(found).relative_to(root).as_posix()
        for pattern in patterns for found in glob.glob(str(root / pattern)) if Path(found).is_file()
    }
    assert set(templates) <= packaged
    if shutil.which("git") and (root.parent / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", *templates], cwd=root, capture_output=True, text=True)
        assert ignored.stdout == ""


def test_every_env_setting_is_commented(runner: CliRunner, tmp_path: Path) -> None:
    runner.invoke(cli, ["create", str(tmp_path / "bot")])
    lines = (tmp_path / "bot" / ".env").read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            above = index - 1
            while lines[above] and not lines[above].startswith("#"):  # a block of related settings
                above -= 1
            assert lines[above].startswith("#"), f"{line!r} has no comment above it"


def test_each_project_gets_its_own_verify_token(runner: CliRunner, tmp_path: Path) -> None:
    runner.invoke(cli, ["create", str(tmp_path / "a")])
    runner.invoke(cli, ["create", str(tmp_path / "b")])
    tokens = {dotenv_values(tmp_path / name / ".env")["AMP_VERIF_TOKEN"] for name in "ab"}
    assert len(tokens) == 2


def test_create_refuses_an_existing_folder(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "mybot").mkdir()
    (tmp_path / "mybot" / "core.py").write_text("mine")
    result = runner.invoke(cli, ["create", str(tmp_path / "mybot")])
    assert result.exit_code == 1
    assert "already exists" in result.output and "ampalibe init" in result.output
    assert files_under(tmp_path / "mybot") == ["core.py"]
    assert (tmp_path / "mybot" / "core.py").read_text() == "mine"


# -- init -------------------------------------------------------------------------------------

def test_init_in_the_current_folder(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path) == SKELETON
    assert "wrote core.py" in result.output


def test_init_keeps_existing_files(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "core.py").write_text("# my bot\n")
    (tmp_path / ".gitignore").write_text("*.db\n")
    result = runner.invoke(cli, ["init", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "core.py").read_text() == "# my bot\n"
    assert (tmp_path / ".gitignore").read_text() == "*.db\n"
    assert "kept core.py: it exists (--force overwrites it)" in result.output
    assert "does not list .env" in result.output  # their .gitignore would let tokens be committed
    assert files_under(tmp_path) == SKELETON  # the missing files were written

    again = runner.invoke(cli, ["init", str(tmp_path)])
    assert again.exit_code == 0
    assert "Nothing written" in again.output


def test_init_force_overwrites(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "core.py").write_text("# my bot\n")
    result = runner.invoke(cli, ["init", "--force", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "app = ampalibe.webserver" in (tmp_path / "core.py").read_text()


# -- env, lang --------------------------------------------------------------------------------

@pytest.mark.parametrize("command, name", [("env", ".env"), ("lang", "langs.json")])
def test_env_and_lang_write_their_template(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, [command])
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path) == [name]


@pytest.mark.parametrize("command, name", [("env", ".env"), ("lang", "langs.json")])
def test_env_and_lang_ask_before_overwriting(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / name
    target.write_text("mine")
    refused = runner.invoke(cli, [command], input="n\n")
    assert refused.exit_code == 0  # keeping the file is what was asked for, not an error
    assert "Overwrite it?" in refused.output and f"Kept your {name} as it is." in refused.output
    assert "Aborted" not in refused.output
    assert target.read_text() == "mine"

    accepted = runner.invoke(cli, [command], input="y\n")
    assert accepted.exit_code == 0
    assert target.read_text() != "mine"

    target.write_text("mine")
    forced = runner.invoke(cli, [command, "--force"])
    assert forced.exit_code == 0 and "Overwrite" not in forced.output
    assert target.read_text() != "mine"


# -- run: refusals before serving -------------------------------------------------------------

def test_run_without_core_py(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["run"])
    assert result.exit_code == 1
    assert "No core.py in" in result.output and "ampalibe init" in result.output
    assert "Traceback" not in result.output


def test_run_names_missing_settings(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner.invoke(cli, ["create", str(tmp_path / "bot")])
    monkeypatch.chdir(tmp_path / "bot")
    result = runner.invoke(cli, ["run"])
    assert result.exit_code == 1
    assert "AMP_ACCESS_TOKEN" in result.output and "AMP_APP_SECRET" in result.output
    assert "AMP_VERIF_TOKEN" not in result.output  # create wrote one
    assert "Traceback" not in result.output

    monkeypatch.setenv("AMP_ACCESS_TOKEN", "token")
    dev = runner.invoke(cli, ["run", "--dev", "--port", "-1"])  # stops at the port check
    assert "AMP_APP_SECRET" not in dev.output


def test_settings_are_read_without_leaking_the_env_file(tmp_path: Path) -> None:
    CliRunner().invoke(cli, ["create", str(tmp_path / "bot")])
    before = dict(os.environ)
    settings = loader.read_settings(tmp_path / "bot")
    assert dict(os.environ) == before  # the reloader and gunicorn master must not pin .env
    assert settings.checked and settings.verif_token and settings.access_token is None
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 4555, 2)


def test_real_environment_wins_over_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CliRunner().invoke(cli, ["create", str(tmp_path / "bot")])
    monkeypatch.setenv("AMP_PORT", "5000")
    monkeypatch.setenv("AMP_WORKERS", "3")
    settings = loader.read_settings(tmp_path / "bot")
    assert (settings.port, settings.workers) == (5000, 3)


def test_loader_serves_core_app_when_it_is_a_flask_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "core.py").write_text("from flask import Flask\napp = Flask('native')\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "core", raising=False)
    try:
        assert loader.load_app(tmp_path).name == "native"
    finally:
        sys.modules.pop("core", None)


def test_flask_ampalibe_works_in_an_empty_folder(tmp_path: Path) -> None:
    """The group comes through Flask's plugin entry point, before any app exists."""
    flask = Path(sys.executable).with_name("flask")
    command = [str(flask)] if flask.exists() else [sys.executable, "-m", "flask"]
    done = subprocess.run([*command, "ampalibe", "create", "viaflask"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "viaflask") == SKELETON


def test_ampalibe_script_gives_app_commands_the_project_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Commands that need the app (``db create``, ``worker``...) get the core.py of the folder."""
    from flask import current_app

    from flask_ampalibe.cli import main

    @cli.command("probe-app")
    def probe() -> None:
        print("app:", current_app.name)

    (tmp_path / "core.py").write_text("from flask import Flask\napp = Flask('native')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "core", raising=False)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["probe-app"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out == "app: native\n"
    finally:
        del cli.commands["probe-app"]
        sys.modules.pop("core", None)


# -- gunicorn config --------------------------------------------------------------------------

def test_gunicorn_settings_from_env_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_ampalibe import gunicorn_conf

    (tmp_path / ".env").write_text("AMP_HOST=127.0.0.1\nAMP_PORT=5001\nAMP_WORKERS=\n")
    monkeypatch.chdir(tmp_path)
    settings = gunicorn_conf.settings()
    assert settings["bind"] == ["127.0.0.1:5001"]
    assert settings["workers"] == 2  # empty means unset
    assert settings["worker_class"] == "gthread" and settings["threads"] > 1
    monkeypatch.setenv("AMP_PORT", "5002")
    monkeypatch.setenv("AMP_HOST", "::1")
    assert gunicorn_conf.settings()["bind"] == ["[::1]:5002"]


def test_run_settings_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn.conf.py of the project (else the library's), then GUNICORN_CMD_ARGS, then --host/--port/--workers."""
    from flask_ampalibe import gunicorn_conf
    from flask_ampalibe.cli.serve import gunicorn_server

    plain = gunicorn_server(tmp_path, {"bind": ["127.0.0.1:5005"], "workers": 3}).cfg
    assert (plain.worker_class_str, plain.threads, plain.workers, plain.bind) == ("gthread", 8, 3, ["127.0.0.1:5005"])
    assert plain.worker_exit is gunicorn_conf.worker_exit and plain.worker_int is gunicorn_conf.worker_int

    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--threads 3 --graceful-timeout 12")
    from_env = gunicorn_server(tmp_path, {}).cfg
    assert (from_env.threads, from_env.graceful_timeout) == (3, 12)

    monkeypatch.delenv("GUNICORN_CMD_ARGS")
    (tmp_path / "gunicorn.conf.py").write_text(
        "from flask_ampalibe.gunicorn_conf import *\nthreads = 16\nworkers = 9\n"
    )
    custom = gunicorn_server(tmp_path, {"workers": 2}).cfg
    assert (custom.threads, custom.workers, custom.worker_class_str) == (16, 2, "gthread")
    assert custom.worker_exit is gunicorn_conf.worker_exit


class _Executor:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def shutdown(self, timeout: float) -> None:
        self.timeouts.append(timeout)


class _Worker:
    class cfg:
        graceful_timeout = 30

    def __init__(self, wsgi: object) -> None:
        self.wsgi = wsgi


class _State:
    """Stands for AmpalibeState, as the hooks see it (gunicorn_conf.ServedBot): start, stop taking
    work, shutdown (which stops the executor and the scheduler)."""

    def __init__(self) -> None:
        self.executor = _Executor()
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def stop_taking_work(self) -> None:
        self.calls.append("stop_taking_work")

    def shutdown(self, timeout: float) -> None:
        self.executor.shutdown(timeout)


def test_post_worker_init_starts_the_bot_and_sigterm_stops_it_taking_work() -> None:
    import signal

    from flask import Flask

    from flask_ampalibe import gunicorn_conf

    app = Flask("x")
    state = app.extensions["ampalibe"] = _State()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        gunicorn_conf.post_worker_init(_Worker(app))
        assert state.calls == ["start"]
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # what gunicorn's arbiter sends
        assert state.calls == ["start", "stop_taking_work"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_worker_exit_lets_the_executor_finish_within_graceful_timeout() -> None:
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from flask_ampalibe import gunicorn_conf

    app = Flask("x")
    state = app.extensions["ampalibe"] = _State()
    worker = _Worker(ProxyFix(app))  # found through WSGI middleware
    gunicorn_conf.worker_exit(None, worker)
    gunicorn_conf.worker_exit(None, worker)  # called again (after worker_int): no second shutdown
    assert state.executor.timeouts == [30 - gunicorn_conf.EXIT_MARGIN_SECONDS]


def test_worker_int_is_quick_and_hooks_tolerate_apps_without_the_extension() -> None:
    from flask import Flask

    from flask_ampalibe import gunicorn_conf

    app = Flask("x")
    state = app.extensions["ampalibe"] = _State()
    gunicorn_conf.worker_int(_Worker(app))
    assert state.executor.timeouts == [gunicorn_conf.QUICK_SHUTDOWN_SECONDS]
    gunicorn_conf.worker_exit(None, _Worker(Flask("plain")))
    gunicorn_conf.worker_exit(None, _Worker(None))  # the app never loaded


# -- end to end: real processes ---------------------------------------------------------------

USER = "1234567890"
SECRET = "e2e-app-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def console_script(name: str, module: str) -> list[str]:
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


class Server:
    """A server process started in a project folder, output kept in files for the failure report."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], port: int) -> None:
        self.port = port
        self.log = cwd / f"server-{port}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"server not listening on {self.port} after {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM to the process we started, by its own pid, and wait for it."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph() as fake:
        yield fake


@pytest.fixture
def project(tmp_path: Path) -> Path:
    result = CliRunner().invoke(cli, ["create", str(tmp_path / "bot")])
    assert result.exit_code == 0, result.output
    return tmp_path / "bot"


def bot_env(graph: FakeGraph, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
    env.update(
        AMP_HOST="127.0.0.1", AMP_PORT=str(port), AMP_ACCESS_TOKEN="e2e-page-token", AMP_APP_SECRET=SECRET,
        AMP_GRAPH_URL=graph.url, PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def signed_post(port: int, body: dict, secret: str = SECRET) -> requests.Response:
    raw = json.dumps(body).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return requests.post(
        f"http://127.0.0.1:{port}/", data=raw, timeout=20,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
    )


def message(text: str, mid: str) -> dict:
    return {"object": "page", "entry": [{"id": "1", "time": int(time.time() * 1000), "messaging": [{
        "sender": {"id": USER}, "recipient": {"id": "1"}, "timestamp": int(time.time() * 1000),
        "message": {"mid": mid, "text": text},
    }]}]}


def talk_to(server: Server, project: Path, graph: FakeGraph, mid: str = "m_e2e_1") -> None:
    """Facebook's verification GET, then a signed message whose reply must reach the Graph API."""
    server.wait_listening()
    verify = dotenv_values(project / ".env")["AMP_VERIF_TOKEN"]
    answer = requests.get(f"http://127.0.0.1:{server.port}/", timeout=20, params={
        "hub.mode": "subscribe", "hub.verify_token": verify, "hub.challenge": "1158201444",
    })
    assert (answer.status_code, answer.text) == (200, "1158201444"), server.output()
    assert signed_post(server.port, message("hi", mid)).status_code == 200, server.output()
    try:
        graph.wait_for(1, timeout=20)
    except AssertionError:
        pytest.fail(f"no reply reached the Graph API:\n{server.output()}")
    assert graph.sent_texts(USER) == ["Hello, Ampalibe"]


def stop_and_check(server: Server, expected_rc: int = 0) -> None:
    rc = server.stop()
    assert rc == expected_rc, server.output()
    assert port_is_free(server.port), f"port {server.port} still in use after the server stopped"


def test_ampalibe_run_under_gunicorn_and_reload_on_hup(project: Path, graph: FakeGraph) -> None:
    port = free_port()
    server = Server([*console_script("ampalibe", "flask_ampalibe.cli"), "run"], project, bot_env(graph, port), port)
    try:
        talk_to(server, project, graph)
        assert signed_post(port, message("forged", "m_e2e_2"), secret="wrong").status_code == 403
        # HUP: gunicorn replaces its workers gracefully; the app is not imported in the master,
        # so the new workers run the new code.
        core = project / "core.py"
        core.write_text(core.read_text().replace('"Hello, Ampalibe"', '"Hello, new code"'))
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        n = 0
        while "Hello, new code" not in graph.sent_texts(USER):
            assert time.monotonic() < deadline, f"no new code after HUP:\n{server.output()}"
            n += 1
            signed_post(port, message("hi", f"m_e2e_hup_{n}"))
            time.sleep(0.5)
        stop_and_check(server)
    finally:
        server.kill()
    out = server.output()
    assert f"Callback URL to give Facebook: http://127.0.0.1:{port}/" in out
    assert "Using worker: gthread" in out and out.count("Booting worker") >= 2


def test_sigterm_finishes_the_running_handler_and_leaves_the_rest(project: Path, graph: FakeGraph) -> None:
    """gunicorn_conf's worker_exit hook stops the executor: the running handler finishes, the
    user's next event is not started but stays recorded, and the next server handles it."""
    core = project / "core.py"
    core.write_text(core.read_text().replace(
        '    chat.send_message(sender_id, "Hello, Ampalibe")',
        '    if cmd == "slow":\n'
        '        chat.send_message(sender_id, "started")\n'
        '        import time\n'
        '        time.sleep(2)\n'
        '    chat.send_message(sender_id, "done " + cmd)',
    ))
    command = [*console_script("ampalibe", "flask_ampalibe.cli"), "run", "-w", "1"]
    port = free_port()
    server = Server(command, project, bot_env(graph, port), port)
    try:
        server.wait_listening()
        assert signed_post(port, message("slow", "m_e2e_slow")).status_code == 200
        graph.wait_for(1, timeout=20)  # the slow handler is running
        assert signed_post(port, message("next", "m_e2e_next")).status_code == 200  # queued behind it
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
    assert graph.sent_texts(USER) == ["started", "done slow"], server.output()

    port = free_port()
    again = Server(command, project, bot_env(graph, port), port)
    try:
        graph.wait_for(3, timeout=30)
        assert graph.sent_texts(USER) == ["started", "done slow", "done next"], again.output()
        assert again.stop() == 0, again.output()
    finally:
        again.kill()


def test_ampalibe_run_dev_reloads_on_change(project: Path, graph: FakeGraph) -> None:
    port = free_port()
    env = bot_env(graph, port)
    del env["AMP_APP_SECRET"]  # development mode only warns about unsigned webhooks
    server = Server([*console_script("ampalibe", "flask_ampalibe.cli"), "run", "--dev"], project, env, port)
    try:
        talk_to(server, project, graph)
        core = project / "core.py"
        core.write_text(core.read_text().replace('"Hello, Ampalibe"', '"Hello again"'))
        deadline = time.monotonic() + 30
        n = 0
        while "Hello again" not in graph.sent_texts(USER):
            assert time.monotonic() < deadline, f"no reload after editing core.py:\n{server.output()}"
            n += 1
            signed_post(port, message("hi", f"m_e2e_reload_{n}"))
            time.sleep(0.5)
        (project / "langs.json").write_text('{"hello": {"en": "Hello"}}')
        deadline = time.monotonic() + 30
        while "langs.json" not in server.output():
            assert time.monotonic() < deadline, f"no reload after editing langs.json:\n{server.output()}"
            time.sleep(0.2)
        stop_and_check(server)
    finally:
        server.kill()
    assert "Debugger is active" in server.output()


@pytest.mark.parametrize("config", [[], ["-c", "python:flask_ampalibe.gunicorn_conf"]],
                         ids=["project-gunicorn.conf.py", "python:flask_ampalibe.gunicorn_conf"])
def test_gunicorn_core_app(project: Path, graph: FakeGraph, config: list[str]) -> None:
    port = free_port()
    server = Server([sys.executable, "-m", "gunicorn", *config, "core:app"], project, bot_env(graph, port), port)
    try:
        talk_to(server, project, graph)
        stop_and_check(server)
    finally:
        server.kill()
    assert "Using worker: gthread" in server.output()


def test_run_reports_a_bad_setting_without_traceback(project: Path, graph: FakeGraph) -> None:
    """A setting the library rejects when the app loads in the workers: gunicorn stops, no traceback.

    Several workers failing at once used to make gunicorn raise out of its shutdown.
    """
    port = free_port()
    env = bot_env(graph, port, ADAPTER="ORACLE")
    done = subprocess.run([*console_script("ampalibe", "flask_ampalibe.cli"), "run", "-w", "6"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ADAPTER='ORACLE' is not supported" in done.stderr
    assert "Traceback" not in done.stderr
    assert port_is_free(port)


def test_run_without_project_in_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run([*console_script("ampalibe", "flask_ampalibe.cli"), "run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "No core.py" in done.stderr and "Traceback" not in done.stderr
