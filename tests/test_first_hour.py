"""The first hour and the first incident (issue 11): what a new user and an operator meet.

- a webhook under a URL prefix answers at the prefix with and without the slash (no 308), and the
  banner prints that URL;
- a database that is down or misconfigured at start: one line (URL with the password masked,
  the cause, a wrong password told apart from an outage), exit status 1, before gunicorn serves;
- a database that goes down after start: one line per retry at growing intervals, 503 to
  Facebook, nothing lost once it is back (a TCP proxy on loopback plays the outage);
- CLI errors in one line (``file:line`` of a syntax error), ``--traceback`` for the whole one;
- the smaller points: ``--app``, ``AMP_WORKERS=0``, unknown URL schemes, startup errors once,
  the event log line, the verify token shown, ``create ''``, ``run -h``, one control socket per
  bot, the blueprint registered twice, no committed ``.env``.

Processes are real (``ampalibe run`` under gunicorn, the ``ampalibe`` and ``flask`` scripts);
replies go to a fake Graph API on loopback.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from click.testing import CliRunner
from dotenv import dotenv_values
from flask import Flask

import flask_ampalibe
from flask_ampalibe.cli import cli
from flask_ampalibe.engine import make_engine
from flask_ampalibe.testing import FakeGraph, WebhookClient, message_event
from conftest import SECRET, TOKEN, VERIFY
from test_cli import (AMP_KEYS, USER, Server, bot_env, console_script, free_port, message, port_is_free,
                      signed_post)

AMPALIBE = console_script("ampalibe", "flask_ampalibe.cli")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    result = CliRunner().invoke(cli, ["create", str(tmp_path / "bot")])
    assert result.exit_code == 0, result.output
    return tmp_path / "bot"


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*AMPALIBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def verify_get(port: int, path: str, token: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=20, allow_redirects=False, params={
        "hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "31337",
    })


# -- 3. a webhook under a prefix ---------------------------------------------------------------

def prefixed_app(tmp_path: Path, graph: FakeGraph, how: str) -> Flask:
    app = Flask("prefixed", instance_path=str(tmp_path / "instance"), root_path=str(tmp_path))
    app.config.update(
        TESTING=True, AMPALIBE_ACCESS_TOKEN=TOKEN, AMPALIBE_VERIF_TOKEN=VERIFY, AMPALIBE_APP_SECRET=SECRET,
        AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="inline",
        AMPALIBE_DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}",
    )
    router = flask_ampalibe.Router()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        app.extensions["ampalibe"].chat.send_message(sender_id, f"got {cmd}")

    if how == "extension":
        app.config["AMPALIBE_URL_PREFIX"] = "/messenger"
        flask_ampalibe.Ampalibe(app, router=router)
    else:
        old = flask_ampalibe.set_default_router(router)
        try:
            app.register_blueprint(flask_ampalibe.bp, url_prefix="/messenger")
        finally:
            flask_ampalibe.set_default_router(old)
        app.extensions["ampalibe"].router = router
    return app


@pytest.mark.parametrize("how", ["extension", "blueprint"])
def test_a_prefixed_webhook_answers_with_and_without_the_slash(tmp_path, graph, how):
    app = prefixed_app(tmp_path, graph, how)
    client = app.test_client()
    try:
        for n, path in enumerate(["/messenger", "/messenger/"]):
            check = client.get(path, query_string={"hub.mode": "subscribe", "hub.verify_token": VERIFY,
                                                   "hub.challenge": "42"})
            assert (check.status_code, check.get_data(as_text=True)) == (200, "42"), path
            hook = WebhookClient(client, SECRET, path=path)
            assert hook.post(message_event(f"u{n}", "hi", mid=f"m_prefix_{n}")).status_code == 200, path
            assert graph.sent_texts(f"u{n}") == ["got hi"]
        assert client.get("/", query_string={"hub.mode": "subscribe"}).status_code == 404
    finally:
        app.extensions["ampalibe"].shutdown(timeout=5)


def test_ampalibe_run_under_a_prefix_prints_and_answers_the_prefixed_url(project, graph):
    port = free_port()
    env = bot_env(graph, port, AMPALIBE_URL_PREFIX="/messenger", AMP_WORKERS="1")
    server = Server([*AMPALIBE, "run"], project, env, port)
    try:
        server.wait_listening()
        token = dotenv_values(project / ".env")["AMP_VERIF_TOKEN"]
        for path in ("/messenger", "/messenger/"):
            answer = verify_get(port, path, token)
            assert (answer.status_code, answer.text) == (200, "31337"), (path, server.output())
        raw = requests.post(f"http://127.0.0.1:{port}/messenger", data=b"{}", timeout=20, allow_redirects=False,
                            headers={"Content-Type": "application/json"})
        assert raw.status_code == 403  # answered by the webhook (unsigned), not redirected
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
    out = server.output()
    assert f"Callback URL to give Facebook: http://127.0.0.1:{port}/messenger/" in out
    assert f"Verify token to give Facebook: {token}" in out  # point 6: shown, not only described


# -- 4. the database at start ------------------------------------------------------------------

def test_a_database_that_is_down_at_start_is_one_line_and_exit_1(project, graph):
    port, db_port = free_port(), free_port()  # nothing listens on db_port
    url = f"postgresql+psycopg://bot:s3cret-pw@127.0.0.1:{db_port}/botdb"
    done = run_cli(["run"], project, bot_env(graph, port, DATABASE_URL=url))
    assert done.returncode == 1
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"Error: cannot reach the database server of postgresql+psycopg://bot:***@127.0.0.1:{db_port}/botdb")
    assert "is it running" in err and "s3cret-pw" not in done.stdout + done.stderr
    assert "Listening at" not in done.stdout + done.stderr
    assert port_is_free(port)


@pytest.mark.parametrize("server_name", ["mariadb", "postgresql"])
def test_a_wrong_password_is_told_apart_from_an_outage(project, graph, request, server_name):
    server = request.getfixturevalue(f"{server_name}_server")
    url = server.url.replace(f":{server.password}@", ":not-the-password@")
    port = free_port()
    done = run_cli(["run"], project, bot_env(graph, port, DATABASE_URL=url))
    assert done.returncode == 1
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "refused the login: wrong user or password" in err and "***" in err
    assert "not-the-password" not in done.stdout + done.stderr
    assert "Traceback" not in err
    # The operator commands say the same in one line (point 5: `db create` printed 135 lines).
    created = run_cli(["db", "create"], project, bot_env(graph, port, DATABASE_URL=url))
    assert created.returncode == 1 and len(created.stderr.strip().splitlines()) == 1, created.stderr
    assert "wrong user or password" in created.stderr


# -- 4. the database down after start ------------------------------------------------------------

class Proxy:
    """A TCP forwarder on loopback in front of a database server; ``down()`` cuts every
    connection and stops listening (connections are refused), ``up()`` listens again."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):  # ValueError: the proxy closed the socket meanwhile (fd -1)
            return
        finally:
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass


@pytest.fixture
def proxy_url(request) -> Iterator[tuple[Proxy, str]]:
    server = request.getfixturevalue(f"{request.param}_server")
    server.reset()
    proxy = Proxy(server.port)
    yield proxy, server.url.replace(f"@{server.host}:{server.port}/", f"@127.0.0.1:{proxy.port}/"), server.url
    proxy.down()


@pytest.mark.parametrize("proxy_url", ["mariadb", "postgresql"], indirect=True)
def test_an_outage_after_start_is_one_line_per_retry_and_loses_nothing(project, graph, proxy_url):
    proxy, url, direct_url = proxy_url
    port = free_port()
    env = bot_env(graph, port, DATABASE_URL=url, AMP_WORKERS="1", AMPALIBE_POLL_SECONDS="0.2")
    server = Server([*AMPALIBE, "run"], project, env, port)
    try:
        server.wait_listening()
        assert signed_post(port, message("before", "m_outage_1")).status_code == 200, server.output()
        graph.wait_for(1, timeout=30)
        # Cut only once the event is marked done (cut in between, it would be handled again
        # later, as at-least-once delivery promises, and this test would count two replies).
        direct = make_engine(direct_url)
        deadline = time.monotonic() + 30
        while True:
            with direct.connect() as conn:
                if conn.exec_driver_sql("SELECT status FROM amp_inbox").scalars().all() == ["done"]:
                    break
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)

        proxy.down()
        refused = signed_post(port, message("during", "m_outage_2"))
        assert refused.status_code == 503, server.output()  # Facebook sends it again later
        deadline = time.monotonic() + 60
        while len(re.findall(r"next try in ([0-9.]+) s", server.output())) < 4:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert signed_post(port, message("during", "m_outage_2")).status_code == 503

        proxy.up()
        deadline = time.monotonic() + 90
        while "reachable again" not in server.output():
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        # Facebook's retry of the post answered 503: handled now, once.
        assert signed_post(port, message("during", "m_outage_2")).status_code == 200, server.output()
        graph.wait_for(2, timeout=30)
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
    out = server.output()
    assert graph.sent_texts(USER) == ["Hello, Ampalibe", "Hello, Ampalibe"]
    assert "Traceback" not in out
    waits = [float(w) for w in re.findall(r"next try in ([0-9.]+) s", out)]
    assert waits == sorted(waits) and waits[-1] > waits[0], waits  # growing intervals
    masked = url.split("://")[0] + "://"
    outage_lines = [line for line in out.splitlines() if "still unusable" in line or "unreachable" in line
                    or "cannot reach" in line]
    assert all(masked in line and "***" in line for line in outage_lines), outage_lines
    assert len([line for line in out.splitlines() if "cannot reach the database server" in line]) == 1
    assert len(outage_lines) <= len(waits) + 2  # one line per retry, not per tick or per post
    assert re.search(r"message \S*m_outage_2 of user 1234567890 handled in \d+ ms", out)  # the event log (point 6)


# -- 5. CLI errors in one line --------------------------------------------------------------------

def test_cli_errors_are_one_line_with_traceback_on_demand(project, graph):
    core = project / "core.py"
    lines = core.read_text().splitlines()
    lines.insert(5, "def broken(:")
    core.write_text("\n".join(lines) + "\n")
    env = bot_env(graph, free_port())
    done = run_cli(["inbox", "stats"], project, env)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: {core}:6: SyntaxError: invalid syntax", done.stderr
    full = run_cli(["--traceback", "inbox", "stats"], project, env)
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.stderr
    by_env = run_cli(["inbox", "stats"], project, {**env, "AMPALIBE_TRACEBACK": "1"})
    assert by_env.returncode != 0 and "Traceback (most recent call last)" in by_env.stderr
    # ampalibe run says the same before serving, once (point 6: not once per worker after "Listening at").
    port = free_port()
    served = run_cli(["run", "-w", "3"], project, bot_env(graph, port))
    assert served.returncode == 1
    assert served.stderr.strip() == f"Error: {core}:6: SyntaxError: invalid syntax", served.stderr
    assert "Listening at" not in served.stdout + served.stderr


def test_a_setting_error_at_start_is_printed_once_before_serving(project, graph):
    port = free_port()
    done = run_cli(["run", "-w", "4"], project, bot_env(graph, port, ADAPTER="ORACLE"))
    assert done.returncode == 1
    assert done.stderr.count("ADAPTER='ORACLE' is not supported") == 1, done.stderr
    assert "Listening at" not in done.stdout + done.stderr and "Traceback" not in done.stderr


# -- 6. the smaller points ------------------------------------------------------------------------

FLASK_NATIVE = '''
from flask import Flask
import flask_ampalibe

app = Flask(__name__)
app.config.update(AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="native-verify", AMPALIBE_APP_SECRET="{secret}",
                  AMPALIBE_GRAPH_URL="{graph}", AMPALIBE_DATABASE_URL="sqlite:///{db}")
bot = flask_ampalibe.Ampalibe(app)


@bot.command("/")
def main(sender_id, cmd, **extends):
    bot.chat.send_message(sender_id, "native " + cmd)
'''


def test_app_option_serves_and_operates_the_named_app(tmp_path, graph):
    """`flask --app mybot ampalibe run` serves mybot's app (it used to look for core.py), and
    `ampalibe --app mybot inbox stats` operates it."""
    folder = tmp_path / "native"
    folder.mkdir()
    (folder / "mybot.py").write_text(FLASK_NATIVE.format(secret=SECRET, graph=graph.url, db=folder / "bot.db"))
    env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
    port = free_port()
    env.update(AMP_HOST="127.0.0.1", AMP_PORT=str(port), AMP_WORKERS="1", PYTHONUNBUFFERED="1")
    flask_cmd = console_script("flask", "flask")
    server = Server([*flask_cmd, "--app", "mybot", "ampalibe", "run"], folder, env, port)
    try:
        server.wait_listening()
        answer = verify_get(port, "/", "native-verify")
        assert (answer.status_code, answer.text) == (200, "31337"), server.output()
        assert signed_post(port, message("hey", "m_native_1"), secret=SECRET).status_code == 200
        graph.wait_for(1, timeout=30)
        assert graph.sent_texts(USER) == ["native hey"]
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
    stats = run_cli(["--app", "mybot", "inbox", "stats", "--json"], folder, env)
    assert stats.returncode == 0, stats.stderr
    assert '"received": 1' in stats.stdout


def test_zero_workers_is_refused(project, graph):
    done = run_cli(["run"], project, bot_env(graph, free_port(), AMP_WORKERS="0"))
    assert done.returncode == 1
    assert "AMP_WORKERS must be at least 1" in done.stderr


def test_an_unknown_url_scheme_does_not_suggest_an_extra(project, graph):
    done = run_cli(["db", "create"], project, bot_env(graph, free_port(), DATABASE_URL="oracle+cx://u:pw@h/db"))
    assert done.returncode == 1
    assert "'oracle' is not supported" in done.stderr and "pip install" not in done.stderr
    assert "u:***@h/db" in done.stderr


def test_create_with_an_empty_name(tmp_path):
    done = subprocess.run([*AMPALIBE, "create", ""], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "already exists" not in done.stderr and "ampalibe create mybot" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_dash_h_is_help(project):
    done = subprocess.run([*AMPALIBE, "run", "-h"], cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage:" in done.stdout and "--host" in done.stdout


def test_two_bots_do_not_share_gunicorns_control_socket(tmp_path, graph):
    """gunicorn >= 25.1 opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl):
    the project's gunicorn.conf.py (a star import) and `ampalibe run` turn it off."""
    from gunicorn.config import KNOWN_SETTINGS

    if not any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        pytest.skip("this gunicorn has no control socket")
    home = tmp_path / "home"
    home.mkdir()
    bots = []
    for name in ("one", "two"):
        CliRunner().invoke(cli, ["create", str(tmp_path / name)])
        port = free_port()
        env = bot_env(graph, port, HOME=str(home), AMP_WORKERS="1")
        env.pop("XDG_RUNTIME_DIR", None)
        command = [*AMPALIBE, "run"] if name == "one" else [sys.executable, "-m", "gunicorn", "core:app"]
        bots.append(Server(command, tmp_path / name, env, port))
    try:
        for bot in bots:
            bot.wait_listening()
        assert not (home / ".gunicorn" / "gunicorn.ctl").exists()
        for bot in bots:
            assert bot.stop() == 0, bot.output()
    finally:
        for bot in bots:
            bot.kill()


def test_the_blueprint_and_the_extension_together_are_refused_clearly(tmp_path, graph):
    app = prefixed_app(tmp_path, graph, "extension")
    try:
        with pytest.raises(flask_ampalibe.ConfigurationError, match="either Ampalibe\\(app\\) or app.register_blueprint"):
            app.register_blueprint(flask_ampalibe.bp)
    finally:
        app.extensions["ampalibe"].shutdown(timeout=5)
    other = prefixed_app(tmp_path / "b", graph, "blueprint")
    try:
        with pytest.raises(RuntimeError, match="already set up on this app by app.register_blueprint"):
            flask_ampalibe.Ampalibe(other)
    finally:
        other.extensions["ampalibe"].shutdown(timeout=5)


def test_no_env_file_is_committed():
    root = Path(__file__).resolve().parent.parent
    if not shutil.which("git") or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    assert [path for path in tracked.splitlines() if Path(path).name == ".env"] == []
