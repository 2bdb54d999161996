"""Schema revisions (Alembic, version table ``amp_alembic_version``): a database from before
migrations is recognised and kept; one behind is refused with the command that fixes it, one
ahead is refused; ``ampalibe db upgrade`` upgrades; the migrations build exactly the tables of
storage.py; a new revision can be written with one command.

tests/fixtures/schema_v1/<dialect>.sql are databases as flask_ampalibe 0.1.0 left them
(``amp_meta.schema_version = 1``), with data and a bot's own Alembic table beside ours.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

import flask_ampalibe
from flask_ampalibe import schema
from flask_ampalibe.cli import cli
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store
from flask_ampalibe.tables import metadata
from flask_ampalibe.testing import WebhookClient, message_event
from conftest import SECRET, TOKEN, VERIFY
from test_cli import AMP_KEYS, console_script

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "schema_v1"
PACKAGE_MIGRATIONS = Path(schema.__file__).resolve().parent / "migrations"


def load_fixture(engine: sa.Engine) -> None:
    dialect = {"mariadb": "mysql"}.get(engine.dialect.name, engine.dialect.name)
    lines = (FIXTURES / f"{dialect}.sql").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("--")) + "\n"
    statements = [s.strip() for s in text.split(";\n") if s.strip()]
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement.rstrip(";"))


@pytest.fixture
def legacy_url(database_url: str) -> Iterator[str]:
    """A database as flask_ampalibe 0.1.0 left it, on SQLite, MariaDB and PostgreSQL."""
    engine = make_engine(database_url)
    load_fixture(engine)
    yield database_url


def make_app(tmp_path: Path, url: str, graph: Any) -> Flask:
    app = Flask("schemaapp", instance_path=str(tmp_path / "instance"), root_path=str(tmp_path))
    app.config.update(
        TESTING=True, AMPALIBE_ACCESS_TOKEN=TOKEN, AMPALIBE_VERIF_TOKEN=VERIFY, AMPALIBE_APP_SECRET=SECRET,
        AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="inline", AMPALIBE_DATABASE_URL=url,
    )
    router = flask_ampalibe.Router()

    @router.command("/")
    def main(sender_id, cmd, **extends):
        app.extensions["ampalibe"].chat.send_message(sender_id, f"ok {cmd}")

    flask_ampalibe.Ampalibe(app, router=router)
    return app


def bot_tables_untouched(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["b0t5rev"]
        assert conn.exec_driver_sql("SELECT note FROM bot_notes").scalars().all() == ["mine"]


def legacy_data_kept(state: Any) -> None:
    store = state.store
    assert store.get_user("u_legacy") == ("/get_name", {"step": 2}, "fr")
    assert store.get_temp("u_legacy", "cart") == ["jackfruit", 3]
    assert store.take_page("tok_legacy", "u_legacy") == {"elements": []}
    failed = state.inbox.failed(10)
    assert [(row["event_key"], row["error"]) for row in failed] == [("m_legacy_1", "ValueError: legacy failure")]


# -- a database from before migrations --------------------------------------------------------

def test_a_database_from_0_1_0_is_recognised_at_start_and_its_data_kept(legacy_url, tmp_path, graph):
    """At start it is stamped at revision 0001, data untouched; 0001 is behind this release (0002
    makes MySQL/MariaDB tables utf8mb4), so the bot names `ampalibe db upgrade` and the webhook
    answers 503 until it has run; then everything, old and new, is there."""
    engine = make_engine(legacy_url)
    assert schema.status(engine).state == "legacy"
    app = make_app(tmp_path, legacy_url, graph)
    state = app.extensions["ampalibe"]
    with pytest.raises(schema.SchemaError, match=r"schema revision 0001; .*ampalibe db upgrade"):
        state.start()
    assert schema.status(engine) == schema.SchemaStatus("behind", schema.LEGACY_REVISION, schema.head())
    assert WebhookClient(app.test_client(), SECRET).post(message_event("u_new", "hi", mid="m_new_1")).status_code == 503
    bot_tables_untouched(engine)
    with app.app_context():
        result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0 and f"from schema revision 0001 to {schema.head()}" in result.output, result.output
    fresh = make_app(tmp_path / "again", legacy_url, graph)
    again = fresh.extensions["ampalibe"]
    try:
        again.start()
        assert WebhookClient(fresh.test_client(), SECRET).post(
            message_event("u_new", "hi", mid="m_new_1")).status_code == 200
        assert graph.sent_texts("u_new") == ["ok hi"]
        assert schema.status(engine) == schema.SchemaStatus("current", schema.head(), schema.head())
        legacy_data_kept(again)
        assert again.inbox.replay(None) == ["u_legacy"]  # the legacy event is still a usable event
        bot_tables_untouched(engine)
    finally:
        again.shutdown(timeout=5)
        state.executor.shutdown(timeout=5)


def test_a_database_with_only_some_tables_is_completed(tmp_path):
    """A 1.1.9 database adapted by `ampalibe migrate` (only amp_user), or a first start that was
    interrupted: the missing tables of revision 0001 are created, the existing rows stay (then,
    0001 being behind, `db upgrade` brings it to the head)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'partial.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE amp_user (id INTEGER NOT NULL PRIMARY KEY, user_id VARCHAR(64) NOT NULL "
                             "UNIQUE, action TEXT, action_args TEXT, last_use DOUBLE, lang VARCHAR(16))")
        conn.exec_driver_sql("INSERT INTO amp_user (user_id, action, lang) VALUES ('u119', '/ask', 'fr')")
    store = Store(engine)
    with pytest.raises(schema.SchemaError, match="ampalibe db upgrade"):
        store.create_all()
    assert set(metadata.tables) <= set(sa.inspect(engine).get_table_names())
    assert schema.status(engine).revision == schema.LEGACY_REVISION
    schema.upgrade(engine)
    store = Store(engine)
    store.create_all()
    assert schema.status(engine).state == "current"
    assert store.get_user("u119") == ("/ask", {}, "fr")
    store.set_temp("u119", "cart", [1])
    assert store.get_temp("u119", "cart") == [1]


def test_ampalibe_db_upgrade_on_a_database_from_0_1_0(legacy_url, tmp_path, graph):
    """The real command, in a project folder, on each database."""
    project = tmp_path / "bot"
    assert CliRunner().invoke(cli, ["create", str(project)]).exit_code == 0
    env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
    env.update(DATABASE_URL=legacy_url, AMP_ACCESS_TOKEN=TOKEN, AMP_APP_SECRET=SECRET, AMP_GRAPH_URL=graph.url)
    command = console_script("ampalibe", "flask_ampalibe.cli")
    status = subprocess.run([*command, "db", "status"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 1, status.stderr  # behind: 0001 at best
    assert "from before schema revisions" in status.stdout and "run `ampalibe db upgrade`" in status.stdout
    done = subprocess.run([*command, "db", "upgrade"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    masked = make_engine(legacy_url).url.render_as_string(hide_password=True)
    assert done.stdout.strip() == (
        f"Upgraded {masked} from schema revision from before migrations to {schema.head()}."
    )
    if make_engine(legacy_url).url.password:
        assert make_engine(legacy_url).url.password not in done.stdout + done.stderr
    again = subprocess.run([*command, "db", "upgrade"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    engine = make_engine(legacy_url)
    assert schema.status(engine).state == "current"
    bot_tables_untouched(engine)
    app = make_app(tmp_path, legacy_url, graph)
    try:
        legacy_data_kept(app.extensions["ampalibe"])
    finally:
        app.extensions["ampalibe"].executor.shutdown(timeout=5)


# -- behind, ahead ----------------------------------------------------------------------------

NEXT_REVISION = '''"""A column for the test.

Revision ID: {revision}
Revises: {down_revision}
"""
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("amp_meta") as batch:
        batch.add_column(sa.Column("note", sa.String(32), nullable=True))


def downgrade():
    with op.batch_alter_table("amp_meta") as batch:
        batch.drop_column("note")
'''


def following(revision: str) -> str:
    return f"{int(revision) + 1:04d}"


def use_next_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The package's migrations plus one more revision, as the next release would ship them.

    :returns: that revision (the current head's number plus one).
    """
    current = schema.head()
    folder = tmp_path / "migrations"
    shutil.copytree(PACKAGE_MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "versions" / f"{following(current)}_test_column.py").write_text(
        NEXT_REVISION.format(revision=following(current), down_revision=current))
    monkeypatch.setattr(schema, "SCRIPT_LOCATION", str(folder))
    return following(current)


def test_a_database_behind_is_refused_with_the_command_that_fixes_it(database_url, tmp_path, graph,
                                                                    monkeypatch, caplog):
    """The database is at the current head and the release (its migrations folder) has one more."""
    engine = make_engine(database_url)
    Store(engine).create_all()  # at the head, as the current release leaves it
    current = schema.head()
    newer = use_next_release(tmp_path, monkeypatch)

    app = make_app(tmp_path, database_url, graph)
    state = app.extensions["ampalibe"]
    with pytest.raises(schema.SchemaError) as refused:
        state.start()  # what gunicorn's post_worker_init does
    message = str(refused.value)
    assert "\n" not in message
    assert f"schema revision {current}" in message and f"needs {newer}" in message
    assert "ampalibe db upgrade" in message
    hook = WebhookClient(app.test_client(), SECRET)
    with caplog.at_level(logging.ERROR, logger="flask_ampalibe"):
        answer = hook.post(message_event("u1", "hi", mid="m_behind"))
    assert answer.status_code == 503  # Facebook retries later; nothing recorded, nothing lost
    assert any("ampalibe db upgrade" in r.getMessage() and r.exc_info is None for r in caplog.records)

    with app.app_context():  # the app the command operates (as under `flask --app`)
        result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"from schema revision {current} to {newer}" in result.output
    assert "note" in {c["name"] for c in sa.inspect(make_engine(database_url)).get_columns("amp_meta")}
    fresh = make_app(tmp_path / "again", database_url, graph)
    try:
        fresh.extensions["ampalibe"].start()
        assert WebhookClient(fresh.test_client(), SECRET).post(
            message_event("u1", "hi", mid="m_behind")).status_code == 200
        assert graph.sent_texts("u1") == ["ok hi"]  # Facebook's retry of the refused post: handled
    finally:
        fresh.extensions["ampalibe"].shutdown(timeout=5)
        state.executor.shutdown(timeout=5)


def test_a_database_ahead_is_refused(tmp_path, graph):
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    engine = make_engine(url)
    Store(engine).create_all()
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0999'")
    app = make_app(tmp_path, url, graph)
    with pytest.raises(schema.SchemaError, match=r"revision 0999, which flask_ampalibe .* does not know.*Refusing"):
        app.extensions["ampalibe"].start()
    with app.app_context():  # the app the command operates (as under `flask --app`)
        result = CliRunner().invoke(cli, ["db", "upgrade"])
        status = CliRunner().invoke(cli, ["db", "status"])
    assert result.exit_code != 0 and "Refusing" in result.output
    assert status.exit_code == 1 and "does not know" in status.output
    app.extensions["ampalibe"].executor.shutdown(timeout=5)


def test_ampalibe_run_refuses_a_database_ahead_in_one_line(tmp_path, graph):
    """Through gunicorn: the worker stops at start with the message, no traceback, exit != 0."""
    project = tmp_path / "bot"
    assert CliRunner().invoke(cli, ["create", str(project)]).exit_code == 0
    url = f"sqlite:///{project / 'ampalibe.db'}"
    engine = make_engine(url)
    Store(engine).create_all()
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0999'")
    env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
    from test_cli import free_port
    env.update(AMP_HOST="127.0.0.1", AMP_PORT=str(free_port()), AMP_ACCESS_TOKEN=TOKEN, AMP_APP_SECRET=SECRET,
               AMP_GRAPH_URL=graph.url, AMP_WORKERS="2")
    done = subprocess.run([*console_script("ampalibe", "flask_ampalibe.cli"), "run"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "schema revision 0999" in done.stderr and "Refusing" in done.stderr
    assert "Traceback" not in done.stderr


# -- the migrations themselves ------------------------------------------------------------------

def test_the_migrations_build_the_tables_of_storage(database_url):
    """``db upgrade`` on an empty database (every revision in turn) gives exactly the tables that
    storage.py declares and that a first start creates: a new revision must keep them in step."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(database_url)
    before, after = schema.upgrade(engine)
    assert (before.state, after.state) == ("empty", "current")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": schema.VERSION_TABLE, "include_name": schema.include_name, "compare_type": True,
        })
        assert compare_metadata(context, metadata) == []


def test_a_new_revision_is_one_command(tmp_path, monkeypatch):
    newer = use_next_release(tmp_path, monkeypatch)
    written = following(newer)
    path = Path(schema.new_revision("Add a thing to amp_job"))
    assert path.name == f"{written}_add_a_thing_to_amp_job.py"
    text = path.read_text()
    assert f'revision = "{written}"' in text or f"revision = '{written}'" in text
    assert f"down_revision = '{newer}'" in text or f'down_revision = "{newer}"' in text
    assert schema.head() == written
