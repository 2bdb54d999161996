"""Shared fixtures: a fake Graph API, a Flask app with the extension, spec-style bots.

Database server fixtures (``database_url``, ``mariadb_server``, ``postgresql_server``) come
from ``dbfixtures.py`` (the servers themselves: ``dbservers.py``).
"""
from __future__ import annotations

import importlib
import json
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
from flask import Flask

import flask_ampalibe
from flask_ampalibe.extension import reset_default
from flask_ampalibe.testing import FakeGraph, WebhookClient

from dbfixtures import database_url, mariadb_server, postgresql_server  # noqa: F401  (fixtures)

HERE = Path(__file__).resolve().parent
SPEC_BOTS = HERE / "spec_bots"
TEMPLATE = HERE.parent / "flask_ampalibe" / "templates" / "project"
SECRET = "test-app-secret"
TOKEN = "test-page-token"
VERIFY = "test-verify-token"
PROJECT_MODULES = ("core", "conf", "user", "model")


class MemoryPages:
    """An in-memory page store with the Store's two methods (atomic, one take per token)."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, dict]] = {}
        self.lock = threading.Lock()
        self.count = 0

    def save_page(self, user_id: str, data: dict) -> str:
        json.dumps(data)  # must be JSON, as in the database
        with self.lock:
            self.count += 1
            token = f"t{self.count}"
            self.data[token] = (user_id, data)
        return token

    def take_page(self, token: str, user_id: str) -> dict | None:
        with self.lock:
            owner, data = self.data.get(token, (None, None))
            if owner != user_id:
                return None
            del self.data[token]
            return data


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    """A fake Graph API on loopback."""
    with FakeGraph() as fake:
        yield fake


@pytest.fixture
def app(tmp_path: Path, graph: FakeGraph) -> Flask:
    """A Flask app configured for the extension (not yet initialised), handlers run inline."""
    app = Flask("testapp", instance_path=str(tmp_path / "instance"), root_path=str(tmp_path))
    app.config.update(
        TESTING=True,
        AMPALIBE_ACCESS_TOKEN=TOKEN,
        AMPALIBE_VERIF_TOKEN=VERIFY,
        AMPALIBE_APP_SECRET=SECRET,
        AMPALIBE_GRAPH_URL=graph.url,
        AMPALIBE_EXECUTOR="inline",
        AMPALIBE_DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}",
    )
    return app


@pytest.fixture
def router() -> flask_ampalibe.Router:
    """A fresh router, not shared with other tests."""
    return flask_ampalibe.Router()


@pytest.fixture
def ext(app: Flask, router: flask_ampalibe.Router) -> Iterator[flask_ampalibe.Ampalibe]:
    """The extension on ``app`` with its own router."""
    ext = flask_ampalibe.Ampalibe(app, router=router)
    yield ext
    app.extensions["ampalibe"].executor.shutdown(timeout=5)


@pytest.fixture
def client(app: Flask, ext: flask_ampalibe.Ampalibe) -> Any:
    """A test client of ``app`` (with the extension)."""
    return app.test_client()


@pytest.fixture
def hook(client: Any) -> WebhookClient:
    """Posts signed webhook events to ``app``."""
    return WebhookClient(client, SECRET)


@dataclass
class SpecBot:
    """A spec-style project loaded from tests/spec_bots/<name>/ with the scaffold's conf.py."""

    app: Flask
    core: ModuleType
    hook: WebhookClient
    graph: FakeGraph
    path: Path

    @property
    def bot(self) -> flask_ampalibe.Bot:
        return self.app.extensions["ampalibe"].bot


def _forget_project_modules() -> None:
    for name in PROJECT_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def load_bot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, graph: FakeGraph) -> Iterator[Any]:
    """``load_bot(name)`` imports tests/spec_bots/<name>/core.py as a project, like ``ampalibe run``."""

    def load(name: str, executor: str = "inline", **env: str) -> SpecBot:
        reset_default()
        _forget_project_modules()
        project = tmp_path / name
        shutil.copytree(SPEC_BOTS / name, project)
        shutil.copy(TEMPLATE / "conf.py", project / "conf.py")
        settings = {
            "AMP_ACCESS_TOKEN": TOKEN, "AMP_VERIF_TOKEN": VERIFY, "AMP_APP_SECRET": SECRET,
            "AMP_GRAPH_URL": graph.url, "AMP_URL": "https://bot.example.test", "AMPALIBE_EXECUTOR": executor,
            "ADAPTER": "SQLITE", "DB_FILE": "ampalibe.db",
        }
        settings.update(env)
        for key, value in settings.items():
            monkeypatch.setenv(key, value)
        for key in ("DATABASE_URL", "DB_HOST", "DB_NAME"):
            if key not in env:
                monkeypatch.delenv(key, raising=False)
        monkeypatch.syspath_prepend(str(project))
        monkeypatch.chdir(project)
        core = importlib.import_module("core")
        app = flask_ampalibe.webserver
        return SpecBot(app, core, WebhookClient(app.test_client(), SECRET), graph, project)

    yield load
    reset_default()
    _forget_project_modules()


class FakeClock:
    """Epoch seconds that move only when the test says so (``clock.advance(31)``): lease expiry and
    ages are then exact, with no sleep to wait out and no ``>= 0`` to hope for."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
