"""flask_ampalibe.Model (spec §1.5) on SQLite, MariaDB and PostgreSQL (every test runs on each)."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from flask_ampalibe import Model, Payload
from flask_ampalibe.errors import ConfigurationError

from test_storage import UNICODE, run_threads


class Database(Model):
    """A bot author's model, as in the spec."""

    def __init__(self, conf):
        super().__init__(conf)

    @Model.verif_db
    def get_list_users(self):
        req = "SELECT * from amp_user"
        self.cursor.execute(req)
        data = self.cursor.fetchall()
        self.db.commit()
        return data

    @property
    def ph(self) -> str:
        # The DB-API placeholder differs per driver: sqlite3 "?", PyMySQL and psycopg "%s".
        return "?" if self.store.engine.dialect.paramstyle == "qmark" else "%s"

    @Model.verif_db
    def set_action_sql(self, user_id, action):
        self.cursor.execute(f"UPDATE amp_user SET action = {self.ph} WHERE user_id = {self.ph}", (action, user_id))
        self.db.commit()

    @Model.verif_db
    def action_of(self, user_id):
        self.cursor.execute(f"SELECT action FROM amp_user WHERE user_id = {self.ph}", (user_id,))
        row = self.cursor.fetchone()
        self.db.commit()
        return row[0] if row else None

    @Model.verif_db
    def broken(self):
        self.cursor.execute("SELECT * FROM no_such_table")
        return self.cursor.fetchall()


def make_conf(**attrs):
    return type("Configuration", (), attrs)()


def close(*models: Model) -> None:
    """Give this thread's DB-API connections back, then drop the pools (tests only)."""
    for model in models:
        conn = getattr(model._local, "db", None)
        if conn is not None:
            conn.close()
    for model in models:
        model.store.engine.dispose()


@pytest.fixture
def model(database_url):
    model = Database(make_conf(DATABASE_URL=database_url))
    yield model
    close(model)


# --------------------------------------------------------------------------- configuration


def _adapter_conf(url: str, tmp_path):
    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        return make_conf(ADAPTER="SQLITE", DB_FILE=str(tmp_path / "adapter.db"))
    return make_conf(
        ADAPTER={"mysql": "MYSQL", "postgresql": "POSTGRESQL"}[url.get_backend_name()],
        DB_HOST=url.host, DB_PORT=url.port, DB_USER=url.username, DB_PASSWORD=url.password,
        DB_NAME=url.database,
    )


def test_adapter_and_db_settings_as_in_the_spec(database_url, tmp_path):
    model = Database(_adapter_conf(database_url, tmp_path))
    try:
        model.set_action("u1", "/get_name")
        assert model.get_action("u1") == "/get_name"
        assert [row[1] for row in model.get_list_users()] == ["u1"]
    finally:
        close(model)


def test_unknown_adapter_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="ADAPTER"):
        Model(make_conf(ADAPTER="ORACLE", DB_NAME="x"))


# --------------------------------------------------------------------------- spec methods


def test_action(model):
    assert model.get_action("u1") is None
    model.set_action("u1", "/get_name")
    assert model.get_action("u1") == "/get_name"
    model.set_action("u1", None)
    assert model.get_action("u1") is None


def test_action_with_payload_keeps_its_arguments(model):
    model.set_action("u1", Payload("/get_age", name="Rakoto", n=2))
    assert model.get_action("u1") == "/get_age"
    assert model.store.get_user("u1")[1] == {"name": "Rakoto", "n": 2}


def test_sender_id_may_be_an_int(model):
    model.set_action(1234, "/a")
    model.set_temp(1234, "k", 1)
    assert model.get_action("1234") == "/a"
    assert model.get_temp("1234", "k") == 1


def test_temp(model):
    assert model.get_temp("u1", "mail") is None
    model.set_temp("u1", "mail", "a@b.mg")
    model.set_temp("u2", "mail", "c@d.mg")
    assert model.get_temp("u1", "mail") == "a@b.mg"
    model.del_temp("u1", "mail")
    assert model.get_temp("u1", "mail") is None
    assert model.get_temp("u2", "mail") == "c@d.mg"


def test_lang(model):
    assert model.get_lang("u1") is None
    model.set_action("u1", "/a")
    model.set_lang("u1", "mg")
    assert model.get_lang("u1") == "mg"
    assert model.get_action("u1") == "/a"


@pytest.mark.parametrize("text", UNICODE.values(), ids=UNICODE.keys())
def test_unicode(model, text):
    model.set_action("u1", text)
    model.set_temp("u1", text, text)
    assert model.get_action("u1") == text
    assert model.get_temp("u1", text) == text
    # And through the author's own SQL.
    model.set_action_sql("u1", f"/{text}")
    assert model.action_of("u1") == f"/{text}"
    assert model.get_action("u1") == f"/{text}"


# --------------------------------------------------------------------------- verif_db, cursor, db


def test_custom_query_as_in_the_spec(model):
    assert list(model.get_list_users()) == []
    model.set_action("u1", "/a")
    model.set_temp("u2", "k", 1)  # temp data alone does not make a user row
    model.set_action("u3", "/c")
    rows = model.get_list_users()
    assert sorted((row[1], row[2]) for row in rows) == [("u1", "/a"), ("u3", "/c")]


def test_custom_write_is_seen_by_the_store(model):
    model.set_action("u1", "/a")
    model.set_action_sql("u1", "/b")
    assert model.get_action("u1") == "/b"
    model.set_action("u1", "/c")
    assert model.action_of("u1") == "/c"


def test_a_failing_query_raises_and_the_next_one_works(model):
    model.set_action("u1", "/a")
    with pytest.raises(Exception, match="(?i)no_such_table|no such table"):
        model.broken()
    # On PostgreSQL the failed statement aborted the transaction: verif_db rolled it back.
    assert [row[1] for row in model.get_list_users()] == ["u1"]


def test_models_in_threads(model):
    def work(i: int) -> None:
        user = f"u{i}"
        for n in range(10):
            model.set_action(user, f"/step{n}")
            model.set_action_sql(user, f"/sql{n}")
            assert model.action_of(user) == f"/sql{n}"
            assert len(model.get_list_users()) >= 1

    run_threads(6, work)
    assert sorted(row[1] for row in model.get_list_users()) == [f"u{i}" for i in range(6)]


def test_decorated_calls_give_their_connection_back(model):
    # Handler threads must not hoard pooled connections between calls: 40 threads share a pool of 15.
    def work(i: int) -> None:
        assert len(model.get_list_users()) == 0  # nobody was added: reading adds no row
        assert model.action_of(f"nobody{i}") is None

    run_threads(40, work)
    assert model.store.engine.pool.checkedout() == 0


def test_two_models_share_the_data(database_url):
    first = Database(make_conf(DATABASE_URL=database_url))
    second = Database(make_conf(DATABASE_URL=database_url))
    try:
        first.set_action("u1", "/a")
        assert second.get_action("u1") == "/a"
        second.set_action_sql("u1", "/b")
        assert first.action_of("u1") == "/b"
    finally:
        close(first, second)


# --------------------------------------------------------------------------- server restart


@pytest.mark.parametrize("server_name", ["mariadb", "postgresql"])
def test_model_survives_a_server_restart(request, server_name):
    server = request.getfixturevalue(f"{server_name}_server")
    server.reset()
    model = Database(make_conf(DATABASE_URL=server.url))
    try:
        model.set_action("u1", "/before")
        assert [row[1] for row in model.get_list_users()] == ["u1"]
        server.restart()
        # verif_db notices the dead connection and reconnects; the store's pool pings.
        assert [row[1] for row in model.get_list_users()] == ["u1"]
        assert model.get_action("u1") == "/before"
        model.set_action("u1", "/after")
        server.restart()
        model.set_action_sql("u1", "/after-sql")
        assert model.action_of("u1") == "/after-sql"
    finally:
        close(model)


@pytest.mark.parametrize("server_name", ["mariadb", "postgresql"])
def test_model_in_another_thread_survives_a_server_restart(request, server_name):
    server = request.getfixturevalue(f"{server_name}_server")
    server.reset()
    model = Database(make_conf(DATABASE_URL=server.url))
    results = []

    def call():
        results.append([row[1] for row in model.get_list_users()])

    try:
        model.set_action("u1", "/a")
        worker = threading.Thread(target=call)
        worker.start()
        worker.join(60)
        server.restart()
        call()  # this thread's first connection: fresh
        worker = threading.Thread(target=call)
        worker.start()
        worker.join(60)
        assert results == [["u1"]] * 3
    finally:
        close(model)


# --------------------------------------------------------------------------- the bot's engine


@pytest.fixture
def spec_bot(tmp_path, monkeypatch):
    """``spec_bot(conf)``: ``flask_ampalibe.init(conf)`` on a fresh default app."""
    import os

    from flask_ampalibe import init
    from flask_ampalibe.extension import reset_default

    for key in [k for k in os.environ if k.startswith(("AMP_", "AMPALIBE_"))]:
        monkeypatch.delenv(key)
    reset_default()
    yield init
    reset_default()


def test_model_of_the_bots_configuration_uses_the_bots_store_and_engine(spec_bot, tmp_path, monkeypatch):
    # The database named the way ampalibe.init finds it: here by AMPALIBE_DATABASE_URL, which
    # the Configuration leaves to the environment.
    monkeypatch.setenv("AMPALIBE_DATABASE_URL", f"sqlite:///{tmp_path / 'bot.db'}")
    conf = make_conf(ACCESS_TOKEN="t", APP_SECRET="s", EXECUTOR="inline")
    bot = spec_bot(conf)
    model = Database(conf)
    assert model.store is bot.query.store
    assert model.store.engine is bot.query.store.engine
    model.set_action("u1", "/menu")
    assert bot.query.get_action("u1") == "/menu"
    assert [row[1] for row in model.get_list_users()] == ["u1"]
    close(model)


def test_model_of_another_database_keeps_its_own(spec_bot, tmp_path):
    bot = spec_bot(make_conf(ACCESS_TOKEN="t", APP_SECRET="s", EXECUTOR="inline",
                             DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}"))
    other = Database(make_conf(DATABASE_URL=f"sqlite:///{tmp_path / 'other.db'}"))
    assert other.store is not bot.query.store and other.store.engine is not bot.query.store.engine
    other.set_action("u1", "/elsewhere")
    assert other.get_action("u1") == "/elsewhere"
    assert bot.query.get_action("u1") is None
    close(other)
