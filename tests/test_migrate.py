"""``ampalibe migrate`` on an Ampalibe 1.1.9 project folder, with its TinyDB temporary data and
its ``amp_user`` table as 1.1.9 created them; then the migrated bot answers with that data."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from flask_ampalibe.cli import cli
from flask_ampalibe.cli.migrate import port_imports
from flask_ampalibe.testing.kit import BotTesters
from test_ampalibe119 import FIXTURES, create_119_project
from test_cli import AMP_KEYS

HELPERS_119 = """\
from ampalibe.utils import translate, download_file
from ampalibe.logger import Logger
from ampalibe.ui import QuickReply, Button
import ampalibe as amp


def hello(lang):
    return translate("hello_world", lang)
"""
TINYDB = {"_default": {
    "1": {"user_id": "u1", "cart": ["jackfruit", "lychee"], "step": 2},
    "2": {"user_id": "u2", "name": "Rivo"},
    "3": {"user_id": "u3"},
}}
# amp_user as Ampalibe 1.1.9 creates it on SQLite (its documented schema).
AMP_USER_119 = """
CREATE TABLE IF NOT EXISTS amp_user (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL UNIQUE,
    action TEXT,
    last_use TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    lang TEXT
)
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in AMP_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = create_119_project(tmp_path / "bot119", core=FIXTURES / "bot" / "core.py")
    (folder / "helpers.py").write_text(HELPERS_119)
    (folder / "assets" / "private" / "_db.json").write_text(json.dumps(TINYDB))
    with sqlite3.connect(folder / "ampalibe.db") as db:
        db.execute(AMP_USER_119)
        db.execute("INSERT INTO amp_user(user_id, action, lang) VALUES ('u1', '/ask', 'fr'), ('u2', NULL, NULL)")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_port_imports_changes_only_import_lines() -> None:
    assert port_imports(HELPERS_119) == """\
from flask_ampalibe import translate, download_file
from flask_ampalibe import Logger
from flask_ampalibe.ui import QuickReply, Button
import flask_ampalibe as amp


def hello(lang):
    return translate("hello_world", lang)
"""
    assert port_imports("import ampalibe\nimport ampalibe  # the bot\n    from ampalibe import Model\n") == (
        "import flask_ampalibe as ampalibe\nimport flask_ampalibe as ampalibe  # the bot\n"
        "    from flask_ampalibe import Model\n")
    ported = "import flask_ampalibe as ampalibe\nimport ampalibe_extra\nx = 'import ampalibe'\n"
    assert port_imports(ported) == ported


def test_dry_run_prints_the_diff_and_changes_nothing(project: Path) -> None:
    before = snapshot(project)
    result = CliRunner().invoke(cli, ["migrate", str(project), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "--- a/core.py\n+++ b/core.py\n" in result.output
    lines = result.output.splitlines()
    for removed, added in (("import ampalibe", "import flask_ampalibe as ampalibe"),
                           ("from ampalibe.logger import Logger", "from flask_ampalibe import Logger"),
                           ("from ampalibe.ui import QuickReply", "from flask_ampalibe.ui import QuickReply")):
        assert "-" + removed in lines and "+" + added in lines
    assert "+_load_dotenv(" in result.output and "+export AMP_APP_SECRET=" in result.output
    assert "-ampalibe\n+flask_ampalibe\n" in result.output
    assert "Would copy 3 temporary value(s) of 2 user(s)" in result.output
    assert "Dry run: nothing was changed." in result.output
    assert snapshot(project) == before


def test_migrate_ports_the_folder_and_the_bot_answers_with_its_119_data(project: Path, bot_tester: BotTesters,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    original = (FIXTURES / "bot" / "core.py").read_text()
    result = CliRunner().invoke(cli, ["migrate", str(project)])
    assert result.exit_code == 0, result.output
    assert "Migrated 5 file(s)" in result.output  # core.py, conf.py, helpers.py, requirements.txt, .env
    # core.py: only its import lines changed.
    assert (project / "core.py").read_text() == port_imports(original) != original
    assert (project / "requirements.txt").read_text() == "flask_ampalibe\n"
    assert not (project / "assets" / "private" / "_db.json").exists()
    assert (project / "assets" / "private" / "_db.json.migrated").is_file()
    # A second run has nothing left to do.
    again = CliRunner().invoke(cli, ["migrate", str(project), "--dry-run"])
    assert again.output == "Nothing to migrate.\n"

    # conf.py reads .env on its own now (no `ampalibe run` needed), so the bot uses the project's
    # database, where the 1.1.9 rows and the copied temporary data are.
    monkeypatch.chdir(project)
    bot = bot_tester.project(project, user="u1")
    assert bot.app.extensions["ampalibe"].database_url == f"sqlite:///{project / 'ampalibe.db'}"
    assert bot.query.get_temp("u1", "cart") == ["jackfruit", "lychee"]
    assert bot.query.get_temp("u1", "step") == 2 and bot.query.get_temp("u2", "name") == "Rivo"
    assert bot.query.get("u1", "action", "lang") == ["/ask", "fr"]  # amp_user rows as 1.1.9 left them
    bot.send("hi")  # u1 chose French under 1.1.9 (its pending '/ask' has no handler: '/' answers)
    bot.assert_replied("Bonjour le monde")
    bot.send("hi", user="u2")  # u2 never chose a language
    bot.assert_replied("Choose your language", user="u2")
    bot.send("hi", user="new")
    bot.assert_replied("Choose your language", user="new")
    with sqlite3.connect(project / "ampalibe.db") as db:
        rows = dict(db.execute("SELECT user_id, typeof(last_use) FROM amp_user").fetchall())
    assert rows == {"u1": "real", "u2": "real", "new": "real"}


# amp_user as Ampalibe 1.1.9 creates it on its SQL servers (its documented schema).
AMP_USER_119_SERVERS = {
    "mysql": ["CREATE TABLE amp_user (id INT NOT NULL AUTO_INCREMENT, user_id varchar(50) NOT NULL UNIQUE, "
              "action TEXT DEFAULT NULL, last_use datetime NOT NULL DEFAULT current_timestamp(), "
              "lang varchar(5) DEFAULT NULL, PRIMARY KEY (id), INDEX (last_use)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"],
    "postgresql": ["CREATE TABLE amp_user (id SERIAL PRIMARY KEY, user_id VARCHAR UNIQUE NOT NULL, "
                   "action TEXT DEFAULT NULL, last_use TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
                   "lang VARCHAR DEFAULT NULL)",
                   "CREATE INDEX last_use_index ON amp_user(last_use)"],
    "sqlite": [AMP_USER_119],
}


def test_migrate_adapts_119s_amp_user_on_every_database(tmp_path: Path, database_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine, make_url, text

    from flask_ampalibe.engine import make_engine
    from flask_ampalibe.storage import Store

    folder = create_119_project(tmp_path / "bot119")
    (folder / "assets" / "private" / "_db.json").write_text(json.dumps(TINYDB))
    raw = create_engine(database_url)
    with raw.begin() as conn:
        for statement in AMP_USER_119_SERVERS[raw.dialect.name]:
            conn.execute(text(statement))
        conn.execute(text("INSERT INTO amp_user(user_id, action, lang) VALUES ('u1', '/ask', 'fr')"))
        conn.execute(text("INSERT INTO amp_user(user_id) VALUES ('u2')"))
    raw.dispose()
    # The database chosen the 1.1.9 way, by ADAPTER and DB_* (its conf.py reads them; .env fills
    # only what the environment leaves unset): migrate adapts the database the bot will use,
    # found as ampalibe.init finds it (the Configuration's database beats AMPALIBE_DATABASE_URL).
    url = make_url(database_url)
    backend = url.get_backend_name()
    monkeypatch.setenv("ADAPTER", {"sqlite": "SQLITE", "mysql": "MYSQL", "postgresql": "POSTGRESQL"}[backend])
    parts = {"DB_FILE": url.database} if backend == "sqlite" else {
        "DB_HOST": url.host, "DB_PORT": url.port, "DB_USER": url.username, "DB_PASSWORD": url.password,
        "DB_NAME": url.database}
    for name, value in parts.items():
        monkeypatch.setenv(name, str(value))
    result = CliRunner().invoke(cli, ["migrate", str(folder)])
    assert result.exit_code == 0, result.output
    store = Store(make_engine(database_url))
    try:
        assert store.get_user("u1") == ("/ask", {}, "fr")  # the 1.1.9 row, read as it is
        assert store.touch_user("u2") == (None, {}, None)  # and written as ours (last_use in seconds)
        store.set_action("u2", "/menu", {"page": 2})
        assert store.get_user("u2") == ("/menu", {"page": 2}, None)
        assert store.touch_user("u3") == (None, {}, None)  # a new user next to the old rows
        assert store.get_temp("u1", "cart") == ["jackfruit", "lychee"] and store.get_temp("u2", "name") == "Rivo"
    finally:
        store.engine.dispose()
