"""What Ampalibe 1.1.9 bots use beyond our own API: ``Messenger()`` and ``Model()`` without
arguments, ``download_file``, ``Logger``, FastAPI-style endpoint paths, and 1.1.9's ``conf.py``.

The end-to-end proof (a 1.1.9 project under ``ampalibe run``) is tests/test_ampalibe119.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

import flask_ampalibe
from flask_ampalibe import ConfigurationError, Messenger, Model, download_file
from flask_ampalibe.cli import cli, loader
from flask_ampalibe.compat import Logger, fastapi_rule
from flask_ampalibe.extension import reset_default
from flask_ampalibe.testing import FakeGraph
from test_cli import AMP_KEYS

FIXTURES = Path(__file__).resolve().parent / "ampalibe119"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (*AMP_KEYS, "AMPALIBE_ACCESS_TOKEN"):
        monkeypatch.delenv(key, raising=False)


# -- Messenger() and Model() without arguments -----------------------------------------------------------
def test_messenger_without_token_and_without_bot_says_how_to_fix(graph: FakeGraph) -> None:
    chat = Messenger(graph_url=graph.url)
    with pytest.raises(ConfigurationError, match=r"ampalibe.init\(Configuration\(\)\).*AMP_ACCESS_TOKEN"):
        chat.send_text("1", "hi")
    assert graph.requests == []


def test_messenger_without_token_takes_it_from_the_environment(graph: FakeGraph, monkeypatch) -> None:
    monkeypatch.setenv("AMP_ACCESS_TOKEN", "env-token")
    chat = Messenger(graph_url=graph.url)
    chat.send_text("1", "hi")
    assert graph.requests[0].query["access_token"] == "env-token"
    assert chat.token == "env-token"


def test_messenger_and_model_without_arguments_use_the_configured_bot(app, ext, graph: FakeGraph) -> None:
    chat, query = Messenger(), Model()  # made before any request, as 1.1.9's core.py does at import
    with app.app_context():
        bot_chat = app.extensions["ampalibe"].chat
        chat.send_template("7", [{"title": f"item {i}"} for i in range(12)], next=True)
        request = graph.requests[0]
        assert request.query["access_token"] == bot_chat.token == "test-page-token"
        assert request.path == "/v24.0/me/messages"  # the bot's Graph URL and version
        assert chat.session is bot_chat.session and chat.pages is bot_chat.pages
        # Model() sees what bot.query sees.
        ext.query.set_temp("7", "cart", ["jackfruit"])
        ext.query.set_action("7", "/ask")
        assert query.get_temp("7", "cart") == ["jackfruit"]
        assert query.get("7", "action", "lang") == ["/ask", None]
        assert query.get("unknown", "action", "lang") == [None, None]
        query._verif_user("8")
        assert ext.query.get_action("8") is None and query.get("8", "lang") == [None]
        with pytest.raises(ValueError, match="'action' and 'lang'"):
            query.get("7", "password")
        assert Model(init=False).get_temp("7", "cart") == ["jackfruit"]


# -- download_file, Logger -----------------------------------------------------------------------------
def test_download_file_saves_the_body_and_returns_the_path(graph: FakeGraph, tmp_path: Path) -> None:
    target = tmp_path / "photo.jpg"
    assert download_file(f"{graph.url}/files/photo.jpg", str(target)) == str(target)
    assert target.read_bytes().startswith(b"{")  # what the server answered
    graph.fail_next(status=404, error={"code": 100})
    with pytest.raises(Exception, match="404"):
        download_file(f"{graph.url}/files/gone.jpg", str(tmp_path / "gone.jpg"))
    assert not (tmp_path / "gone.jpg").exists() and not (tmp_path / "gone.jpg.part").exists()


def test_logger_is_a_library_logger_without_handlers(caplog: pytest.LogCaptureFixture) -> None:
    assert flask_ampalibe.Logger is Logger and isinstance(Logger, logging.Logger)
    assert Logger.handlers == []
    with caplog.at_level(logging.INFO, logger="ampalibe"):
        Logger.info("reaction %s", "love")
    assert caplog.records[-1].getMessage() == "reaction love"


# -- FastAPI-style paths ---------------------------------------------------------------------------------
def test_fastapi_paths_become_flask_rules() -> None:
    def view(item_id: int, price: float, name: str, other):  # noqa: ANN001
        pass
    assert fastapi_rule("/items/{item_id}", view) == "/items/<int:item_id>"
    assert fastapi_rule("/{item_id}/{price}/{name}/{other}", view) == \
        "/<int:item_id>/<float:price>/<string:name>/<string:other>"
    assert fastapi_rule("/files/{file_path:path}", view) == "/files/<path:file_path>"
    assert fastapi_rule("/items/<int:item_id>", view) == "/items/<int:item_id>"


def test_webserver_serves_fastapi_style_endpoints() -> None:
    reset_default()
    try:
        @flask_ampalibe.webserver.get("/items/{item_id}")
        def read_item(item_id: int):
            return {"item_id": item_id}
        client = flask_ampalibe.webserver.test_client()
        assert client.get("/items/42").get_json() == {"item_id": 42}
        assert client.get("/items/abc").status_code == 404  # FastAPI said 422
    finally:
        reset_default()


# -- conf.py and .env of 1.1.9 ------------------------------------------------------------------------------
def make_119_folder(tmp_path: Path, env: str) -> Path:
    folder = tmp_path / "bot119"
    folder.mkdir()
    for name in ("core.py", "conf.py"):
        (folder / name).write_text((FIXTURES / "stock" / name).read_text())
    (folder / ".env").write_text(env)
    return folder


def test_a_119_conf_sees_dot_env_and_the_secret_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    folder = make_119_folder(tmp_path, "export AMP_ACCESS_TOKEN=tok\nexport AMP_VERIF_TOKEN=ver\n"
                                       "export AMP_PORT=5001\nexport AMP_APP_SECRET=from-dotenv\n")
    settings = loader.read_settings(folder)
    assert (settings.access_token, settings.verif_token, settings.port) == ("tok", "ver", 5001)
    assert settings.app_secret == "from-dotenv"
    monkeypatch.setenv("AMP_APP_SECRET", "from-env")  # a real variable wins over .env
    assert loader.read_settings(folder).app_secret == "from-env"


def test_run_refuses_a_119_project_only_for_what_is_really_missing(tmp_path: Path, monkeypatch) -> None:
    folder = make_119_folder(tmp_path, "export AMP_ACCESS_TOKEN=tok\nexport AMP_VERIF_TOKEN= \n")
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(cli, ["-p", "5002", "run"])
    assert result.exit_code == 1
    assert "AMP_VERIF_TOKEN" in result.output and "AMP_APP_SECRET" in result.output
    assert "AMP_ACCESS_TOKEN" not in result.output


def test_init_without_arguments_uses_the_projects_conf(tmp_path: Path, monkeypatch, graph: FakeGraph) -> None:
    folder = make_119_folder(tmp_path, "")
    monkeypatch.setenv("AMP_ACCESS_TOKEN", "tok-init")
    monkeypatch.setenv("AMP_APP_SECRET", "secret-init")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(__import__("sys").modules, "conf", raising=False)
    reset_default()
    try:
        bot = flask_ampalibe.init()  # 1.1.9's Init() took no Configuration
        assert bot.app.extensions["ampalibe"].settings.access_token == "tok-init"
        assert bot.app.root_path == str(folder)
    finally:
        reset_default()
        __import__("sys").modules.pop("conf", None)


def test_init_without_arguments_and_without_conf_says_how_to_fix(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "conf", raising=False)
    reset_default()
    try:
        with pytest.raises(ConfigurationError, match=r"pass one: ampalibe.init\(Configuration\(\)\)"):
            flask_ampalibe.init()
    finally:
        reset_default()
