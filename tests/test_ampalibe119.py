"""Ampalibe 1.1.9 projects, ported by changing only their import lines, run under ``ampalibe run``.

The projects are laid out exactly as 1.1.9's ``ampalibe create`` lays them out (fixture data in
tests/ampalibe119/, from 1.1.9's template texts): a ``.env`` of ``export`` lines, a ``conf.py``
that only reads ``os.environ``, a ``core.py`` that never calls ``init`` and makes its client
with ``Messenger()``.  They are started with the real command line (gunicorn) and talked to
through signed webhooks; what they send is recorded by a fake Graph API on loopback.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from flask_ampalibe.signature import generate_signature
from flask_ampalibe.testing import FakeGraph
from flask_ampalibe.testing.webhook import (
    attachment_event, message_event, optin_event, page_body, postback_event, quick_reply_event, reaction_event,
)
from test_cli import AMP_KEYS, Server, console_script, free_port, port_is_free

FIXTURES = Path(__file__).resolve().parent / "ampalibe119"
SECRET = "app-secret-119"
VERIFY = "verify-119"
USER = "119001"


def port_imports(text: str) -> str:
    """What the issue allows a user to change: ``import ampalibe`` and ``from ampalibe… import``."""
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith("import ampalibe"):
            line = line.replace("import ampalibe", "import flask_ampalibe as ampalibe", 1)
        elif line.startswith("from ampalibe"):
            line = "from flask_ampalibe" + line[len("from ampalibe"):]
        out.append(line)
    ported = "".join(out)
    changed = [d for d in difflib.ndiff(text.splitlines(), ported.splitlines()) if d[:1] in "+-"]
    assert all("import" in d for d in changed), changed
    return ported


def create_119_project(folder: Path, core: Path | None = None) -> Path:
    """What `ampalibe create NAME` (1.1.9) writes, with .env filled in as its TIPS ask."""
    stock = FIXTURES / "stock"
    folder.mkdir()
    env = (stock / "env").read_text()
    env = env.replace("export AMP_ACCESS_TOKEN=\n", "export AMP_ACCESS_TOKEN=page-token-119\n")
    env = env.replace("export AMP_VERIF_TOKEN= \n", f"export AMP_VERIF_TOKEN={VERIFY}\n")
    (folder / ".env").write_text(env)
    for name in ("langs.json", "conf.py", "core.py", "requirements.txt"):
        shutil.copy(stock / name, folder / name)
    shutil.copy(stock / "gitignore", folder / ".gitignore")
    for sub in ("public", "private"):
        (folder / "assets" / sub).mkdir(parents=True)
    if core is not None:
        shutil.copy(core, folder / "core.py")
    return folder


def server_env(graph: FakeGraph, **extra: str) -> dict[str, str]:
    """The machine's environment: the app secret and the Graph URL come from it, not from conf.py."""
    env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
    env.update(AMP_APP_SECRET=SECRET, AMP_GRAPH_URL=graph.url, AMP_WORKERS="1", **extra)
    return env


def post(port: int, *items: dict) -> requests.Response:
    raw = json.dumps(page_body(*items)).encode()
    return requests.post(f"http://127.0.0.1:{port}/", data=raw, timeout=20, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": generate_signature(SECRET, raw)})


def text_sent(text: str) -> Callable[[Any], bool]:
    return lambda r: r.path.endswith("/messages") and (r.message or {}).get("text") == text


def wait_text(graph: FakeGraph, server: Server, text: str) -> None:
    try:
        graph.wait_for(1, timeout=20, predicate=text_sent(text))
    except AssertionError:
        pytest.fail(f"the bot did not send {text!r}; it sent {graph.sent_texts(USER)}:\n{server.output()}")


@pytest.fixture
def graph() -> FakeGraph:
    with FakeGraph() as fake:
        yield fake


def test_stock_project_runs_with_only_its_imports_changed(tmp_path: Path, graph: FakeGraph) -> None:
    project = create_119_project(tmp_path / "mybot")
    (project / "core.py").write_text(port_imports((project / "core.py").read_text()))
    port = free_port()
    # 1.1.9 put the options before the command.
    server = Server([*console_script("ampalibe", "flask_ampalibe.cli"), "-p", str(port), "run"], project,
                    server_env(graph), port)
    try:
        server.wait_listening()
        answer = requests.get(f"http://127.0.0.1:{port}/", timeout=20, params={
            "hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"})
        assert (answer.status_code, answer.text) == (200, "1158201444"), server.output()
        assert post(port, message_event(USER, "hi")).status_code == 200
        wait_text(graph, server, "Hello, Ampalibe")
        unsigned = requests.post(f"http://127.0.0.1:{port}/", json=page_body(message_event(USER, "x")), timeout=20)
        assert unsigned.status_code == 403  # the app secret from the environment is enforced
        # conf.py's DB_FILE (relative) is the project's database.
        assert (project / "ampalibe.db").is_file()
        assert server.stop() == 0, server.output()
        assert port_is_free(port)
    finally:
        server.kill()


def test_a_119_bot_behaves_as_it_did(tmp_path: Path, graph: FakeGraph) -> None:
    project = create_119_project(tmp_path / "mybot", core=FIXTURES / "bot" / "core.py")
    (project / "core.py").write_text(port_imports((project / "core.py").read_text()))
    port = free_port()
    server = Server([*console_script("ampalibe", "flask_ampalibe.cli"), "run", "-p", str(port)], project,
                    server_env(graph), port)
    base = f"http://127.0.0.1:{port}"

    def state(last: str) -> dict:
        """The bot's state once after_receive recorded ``last`` (it runs after the reply is sent)."""
        deadline = time.monotonic() + 20
        while True:
            found = requests.get(f"{base}/state/{USER}", timeout=20).json()
            if found["last"] == last or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    try:
        server.wait_listening()
        # Gap 3: lang is None until the user chose one, so the bot offers a choice.
        assert post(port, message_event(USER, "hi")).status_code == 200
        graph.wait_for(1, timeout=20, predicate=lambda r: "quick_replies" in (r.message or {}))
        sent = [r for r in graph.sends(USER) if "quick_replies" in (r.message or {})][0].message
        assert sent["text"] == "Choose your language"
        # Constants: the before_receive marked the message seen.
        assert any(r.json.get("sender_action") == "mark_seen" for r in graph.sends(USER))
        french = next(q["payload"] for q in sent["quick_replies"] if q["title"] == "Francais")
        assert post(port, quick_reply_event(USER, french, "Francais")).status_code == 200
        wait_text(graph, server, "Bonjour le monde")
        # Gap 9: Model() sees the bot's data; gap 4: after_receive got cmd and res.
        assert state("/lang|lang fr") == {"last": "/lang|lang fr", "action_lang": [None, "fr"]}

        # Gap 5: cmd.webhook.
        assert post(port, postback_event(USER, "/kind")).status_code == 200
        wait_text(graph, server, "webhook postback")
        assert post(port, message_event(USER, "/kind")).status_code == 200
        wait_text(graph, server, "webhook message")
        # Gap 6: an opt-in reaches @command(payload) with cmd.token.
        assert post(port, optin_event(USER, payload="/notify", token="NMT-7")).status_code == 200
        wait_text(graph, server, "token NMT-7 from optin")
        # Gap 10: @event('reaction') gets watermark.
        assert post(port, reaction_event(USER, "m_any", reaction="love")).status_code == 200
        wait_text(graph, server, "reaction love")
        # Gap 14: download_file saves what an attachment URL points to.
        assert post(port, attachment_event(USER, [f"{graph.url}/files/photo.jpg"])).status_code == 200
        graph.wait_for(1, timeout=20, predicate=lambda r: ((r.message or {}).get("text") or "").startswith(
            "attachment of "))
        assert (project / "assets" / "private" / f"{USER}.bin").stat().st_size > 0

        # Gap 4: a before_receive returning False blocks the handler; after_receive runs with res=None.
        texts = len(graph.sent_texts(USER))
        assert post(port, message_event(USER, "blocked")).status_code == 200
        assert state("blocked|None")["last"] == "blocked|None", server.output()
        assert len(graph.sent_texts(USER)) == texts

        # Gap 11: a FastAPI-style endpoint with a typed path parameter.
        assert requests.get(f"{base}/items/5", timeout=20).json() == {"item_id": 5, "type": "int"}
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
