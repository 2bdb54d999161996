"""Revision 0002 on MySQL/MariaDB: utf8mb4 tables whatever the server's default character set.

0.1.0 declared utf8mb4 only on its key columns; on a server (or database) whose default is
latin1 the other text columns were latin1, so a webhook body with emoji or non-Latin text was
``rejected`` and ``set_temp`` failed.  ``ampalibe db upgrade`` (revision 0002) converts the
tables, keeps the key columns byte-exact (utf8mb4_bin) and the rows; a fresh database ends the
same whichever way it was created.  Against the suite's throwaway MariaDB, in a database created
with ``DEFAULT CHARACTER SET latin1``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from flask_ampalibe import schema
from flask_ampalibe.cli import cli
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store
from flask_ampalibe.testing import WebhookClient, message_event
from conftest import SECRET, TOKEN
from test_cli import AMP_KEYS, console_script
from test_schema import PACKAGE_MIGRATIONS, legacy_data_kept, load_fixture, make_app

LATIN1_DATABASE = "ampalibe_latin1"
TEXT = "héllo 👋 世界"
KEYS = {("amp_user", "user_id"), ("amp_temp", "user_id"), ("amp_temp", "key"), ("amp_page", "token"),
        ("amp_page", "user_id"), ("amp_inbox", "event_key"), ("amp_inbox", "user_id"), ("amp_lease", "user_id"),
        ("amp_job", "name")}


@pytest.fixture
def latin1_database(mariadb_server: Any) -> Iterator[Callable[[], str]]:
    """``make()`` (re)creates an empty database whose default character set is latin1 and gives
    its URL (the app user may do anything in it)."""
    url = sa.make_url(mariadb_server.url).set(database=LATIN1_DATABASE).render_as_string(hide_password=False)

    def admin(*statements: str) -> None:
        conn = mariadb_server._admin()
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def make() -> str:
        make_engine(url).dispose()  # no pooled connection into the dropped database
        admin(f"DROP DATABASE IF EXISTS {LATIN1_DATABASE}",
              f"CREATE DATABASE {LATIN1_DATABASE} DEFAULT CHARACTER SET latin1 COLLATE latin1_swedish_ci",
              *(f"GRANT ALL PRIVILEGES ON {LATIN1_DATABASE}.* TO '{mariadb_server.user}'@'{host}'"
                for host in ("127.0.0.1", "localhost", "%")))
        return url

    yield make
    make_engine(url).dispose()
    admin(f"DROP DATABASE IF EXISTS {LATIN1_DATABASE}")


def charsets(engine: sa.Engine) -> dict[str, Any]:
    """Each flask_ampalibe table's default collation and its text columns' type, nullability,
    character set and collation."""
    with engine.connect() as conn:
        tables = dict(conn.exec_driver_sql(
            "SELECT table_name, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name LIKE 'amp%%'").all())
        columns = conn.exec_driver_sql(
            "SELECT table_name, column_name, column_type, is_nullable, character_set_name, collation_name "
            "FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name LIKE 'amp%%' "
            "AND character_set_name IS NOT NULL").all()
    return {"tables": tables, "columns": {(t, c): tuple(rest) for t, c, *rest in columns}}


def all_utf8mb4(found: dict[str, Any]) -> None:
    assert set(found["tables"]) == {"amp_user", "amp_temp", "amp_page", "amp_inbox", "amp_lease", "amp_job",
                                    "amp_meta", "amp_alembic_version"}
    assert set(found["tables"].values()) == {"utf8mb4_unicode_ci"}
    for column, (_type, _null, charset, collation) in found["columns"].items():
        wanted = "utf8mb4_bin" if column in KEYS else "utf8mb4_unicode_ci"
        assert (column, charset, collation) == (column, "utf8mb4", wanted)
    assert KEYS <= set(found["columns"])


def emoji_event_handled(tmp_path: Path, url: str, graph: Any) -> None:
    app = make_app(tmp_path / "app", url, graph)
    state = app.extensions["ampalibe"]
    try:
        answer = WebhookClient(app.test_client(), SECRET).post(message_event("u_emoji", TEXT, mid="m_emoji"))
        assert answer.status_code == 200
        assert state.inbox.rejected() == []
        assert graph.sent_texts("u_emoji") == [f"ok {TEXT}"]
        state.store.set_temp("u_emoji", "greeting", {"text": TEXT})
        assert state.store.get_temp("u_emoji", "greeting") == {"text": TEXT}
        state.store.set_action("u_emoji", f"/say {TEXT}", {"text": TEXT})
        assert state.store.get_user("u_emoji")[:2] == (f"/say {TEXT}", {"text": TEXT})
    finally:
        state.executor.shutdown(timeout=5)


def test_db_upgrade_converts_a_latin1_database_from_0_1_0(latin1_database, tmp_path, graph):
    """A 0.1.0 database in a latin1 database: the real `ampalibe db upgrade` makes its tables
    utf8mb4, keys still byte-exact, rows (latin1 text included) kept; emoji are then handled."""
    url = latin1_database()
    engine = make_engine(url)
    load_fixture(engine)
    with engine.begin() as conn:  # two keys that only a byte-exact collation tells apart
        conn.exec_driver_sql("INSERT INTO amp_temp (user_id, `key`, value) VALUES "
                             "('u_legacy', 'Cart', '\"big\"'), ('u_legacy', 'cafe', '\"plain\"'), "
                             "('u_legacy', 'café', '\"accent\"')")
        conn.exec_driver_sql("UPDATE amp_user SET lang = 'fr' , action = '/café' WHERE user_id = 'u_legacy'")
    before = charsets(engine)
    assert before["tables"]["amp_inbox"] == "latin1_swedish_ci"
    assert before["columns"][("amp_inbox", "body")][2] == "latin1"

    project = tmp_path / "bot"
    assert CliRunner().invoke(cli, ["create", str(project)]).exit_code == 0
    env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
    env.update(DATABASE_URL=url, AMP_ACCESS_TOKEN=TOKEN, AMP_APP_SECRET=SECRET, AMP_GRAPH_URL=graph.url)
    done = subprocess.run([*console_script("ampalibe", "flask_ampalibe.cli"), "db", "upgrade"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"to {schema.head()}" in done.stdout

    after = charsets(engine)
    all_utf8mb4(after)
    for column, (column_type, nullable, _charset, _collation) in before["columns"].items():
        assert after["columns"][column][:2] == (column_type, nullable)  # TEXT stays TEXT, and so on
    with engine.connect() as conn:
        temps = dict(conn.exec_driver_sql("SELECT `key`, value FROM amp_temp WHERE user_id = 'u_legacy'").all())
        action = conn.exec_driver_sql("SELECT action FROM amp_user WHERE user_id = 'u_legacy'").scalar()
    assert temps == {"cart": '["jackfruit", 3]', "Cart": '"big"', "cafe": '"plain"', "café": '"accent"'}
    assert action == "/café"
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE amp_user SET action = '/get_name' WHERE user_id = 'u_legacy'")
    app = make_app(tmp_path / "kept", url, graph)
    try:
        legacy_data_kept(app.extensions["ampalibe"])
    finally:
        app.extensions["ampalibe"].executor.shutdown(timeout=5)
    emoji_event_handled(tmp_path, url, graph)


def test_without_0002_a_latin1_database_rejects_emoji(latin1_database, tmp_path, graph, monkeypatch):
    """What 0002 fixes: a release whose newest revision is 0001, on a 0.1.0 database in a latin1
    database, rejects the emoji message (never handled) and cannot keep an emoji temp value."""
    folder = tmp_path / "migrations"
    shutil.copytree(PACKAGE_MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__", "0002_*"))
    monkeypatch.setattr(schema, "SCRIPT_LOCATION", str(folder))
    url = latin1_database()
    load_fixture(make_engine(url))
    app = make_app(tmp_path / "app", url, graph)
    state = app.extensions["ampalibe"]
    try:
        answer = WebhookClient(app.test_client(), SECRET).post(message_event("u_emoji", TEXT, mid="m_emoji"))
        assert answer.status_code == 200
        rejected = state.inbox.rejected()
        assert len(rejected) == 1 and "DataError" in rejected[0]["error"]
        assert graph.sent_texts("u_emoji") == []
        with pytest.raises(sa.exc.DataError):
            state.store.set_temp("u_emoji", "greeting", TEXT)
    finally:
        state.executor.shutdown(timeout=5)


def test_every_way_to_a_fresh_database_ends_utf8mb4_and_equal(latin1_database, tmp_path, graph):
    """In a latin1 database: `db upgrade` on an empty database (0001 then 0002), a first start
    (storage.py's tables, stamped at the head) and a 0.1.0 database upgraded give the same
    character sets, collations and column types."""
    made = {}
    url = latin1_database()
    schema.upgrade(make_engine(url))
    made["db upgrade"] = charsets(make_engine(url))
    url = latin1_database()
    Store(make_engine(url)).create_all()
    assert schema.status(make_engine(url)).state == "current"
    made["first start"] = charsets(make_engine(url))
    url = latin1_database()
    load_fixture(make_engine(url))
    schema.upgrade(make_engine(url))
    made["0.1.0 upgraded"] = charsets(make_engine(url))
    for how, found in made.items():
        all_utf8mb4(found)
        assert found == made["db upgrade"], how
    emoji_event_handled(tmp_path, url, graph)


def test_0002_alters_only_what_is_not_utf8mb4_yet(latin1_database):
    """On the tables 0001 now creates, 0002 alters only Alembic's version table (Alembic creates
    it with the server's default); run again on converted tables, it issues no ALTER at all."""
    url = latin1_database()
    engine = make_engine(url)
    schema.upgrade(engine, "0001")
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def altered() -> list[str]:
        return [s.split()[2] for s in statements if s.lstrip().upper().startswith("ALTER TABLE")]

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        schema.upgrade(engine)
        assert altered() == ["amp_alembic_version"]
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0001'")
        statements.clear()
        assert schema.upgrade(engine)[1].state == "current"
        assert altered() == []
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    all_utf8mb4(charsets(engine))
