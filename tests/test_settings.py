"""flask_ampalibe.config.Settings: one typed, frozen settings object per app, read in one place,
in the order Settings.load documents (app.config > Configuration > AMPALIBE_* > AMP_* > default)."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any, Iterator

import pytest
from flask import Flask

import flask_ampalibe
from flask_ampalibe import ConfigurationError, Settings
from flask_ampalibe.extension import reset_default

from conftest import SECRET, TOKEN, VERIFY

PACKAGE = Path(flask_ampalibe.__file__).resolve().parent


def make_conf(**attrs: Any) -> Any:
    return type("Configuration", (), attrs)()


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``spec(conf)``: ``flask_ampalibe.init(conf)`` on a fresh default app, with a clean environment."""
    for key in [k for k in __import__("os").environ if k.startswith(("AMP_", "AMPALIBE_"))]:
        monkeypatch.delenv(key)
    reset_default()

    def init(conf: Any) -> Any:
        return flask_ampalibe.init(conf)

    yield init
    reset_default()


# -- precedence --------------------------------------------------------------------------------------
def test_each_level_beats_the_next():
    levels = {
        "config": {"AMPALIBE_GRAPH_URL": "http://config"},
        "conf": make_conf(GRAPH_URL="http://conf"),
        "environ": {"AMPALIBE_GRAPH_URL": "http://ampalibe-env", "AMP_GRAPH_URL": "http://amp-env"},
    }
    assert Settings.load(levels["config"], levels["conf"], levels["environ"]).graph_url == "http://config"
    assert Settings.load({}, levels["conf"], levels["environ"]).graph_url == "http://conf"
    assert Settings.load({}, make_conf(), levels["environ"]).graph_url == "http://ampalibe-env"
    assert Settings.load({}, make_conf(), {"AMP_GRAPH_URL": "http://amp-env"}).graph_url == "http://amp-env"
    assert Settings.load({}, make_conf(), {}).graph_url == "https://graph.facebook.com"


def test_unset_means_none_or_empty_below_app_config():
    conf = make_conf(GRAPH_VERSION="", EXECUTOR=None)
    environ = {"AMPALIBE_GRAPH_VERSION": "", "AMP_GRAPH_VERSION": "v9.0", "AMP_EXECUTOR": "worker"}
    loaded = Settings.load({}, conf, environ)
    assert (loaded.graph_version, loaded.executor) == ("v9.0", "worker")
    # A Configuration's False is a value: it beats AMP_ALLOW_UNSIGNED=1.
    assert Settings.load({}, make_conf(ALLOW_UNSIGNED=False), {"AMP_ALLOW_UNSIGNED": "1"}).allow_unsigned is False
    assert Settings.load({}, make_conf(), {"AMP_ALLOW_UNSIGNED": "1"}).allow_unsigned is True


def test_ampalibe_env_beats_the_project_env_name_for_every_key():
    environ = {"AMPALIBE_EXECUTOR": "inline", "AMP_EXECUTOR": "worker", "AMPALIBE_APP_URL": "https://a",
               "AMP_URL": "https://b"}
    loaded = Settings.load({}, make_conf(), environ)
    assert (loaded.executor, loaded.app_url) == ("inline", "https://a")


def test_database_url_order(tmp_path: Path):
    env = {"AMPALIBE_DATABASE_URL": "sqlite:///env.db"}
    parts = make_conf(ADAPTER="SQLITE", DB_FILE="parts.db")
    assert Settings.load({"AMPALIBE_DATABASE_URL": "sqlite:///config.db"}, parts, env).database_url == \
        "sqlite:///config.db"
    assert Settings.load({}, make_conf(DATABASE_URL="sqlite:///conf.db", DB_FILE="x.db"), env).database_url == \
        "sqlite:///conf.db"
    # The Configuration's parts beat the environment (a relative DB_FILE is in the project folder).
    assert Settings.load({}, parts, env, base_dir=str(tmp_path)).database_url == f"sqlite:///{tmp_path}/parts.db"
    assert Settings.load({}, make_conf(), env).database_url == "sqlite:///env.db"
    assert Settings.load({}, make_conf(), {}, base_dir=str(tmp_path)).database_url == \
        f"sqlite:///{tmp_path}/ampalibe.db"
    assert Settings.load({}).database_url is None  # a Flask app: its instance folder


def test_init_reads_configuration_then_environment_and_fills_app_config(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("AMPALIBE_GRAPH_VERSION", "v1.0")
    monkeypatch.setenv("AMPALIBE_LEASE_SECONDS", "12")
    monkeypatch.setenv("AMP_APP_SECRET", SECRET)  # an Ampalibe 1.1.9 conf.py has no APP_SECRET
    bot = spec(make_conf(ACCESS_TOKEN=TOKEN, VERIF_TOKEN=VERIFY, LEASE_SECONDS=5, EXECUTOR="inline",
                         DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}"))
    settings = bot.app.extensions["ampalibe"].settings
    assert (settings.graph_version, settings.lease_seconds, settings.app_secret) == ("v1.0", 5.0, SECRET)
    # Flask users read the same values in app.config.
    assert bot.app.config["AMPALIBE_GRAPH_VERSION"] == "v1.0"
    assert bot.app.config["AMPALIBE_LEASE_SECONDS"] == 5.0
    assert bot.app.config["AMPALIBE_MAX_CONCURRENCY"] == settings.max_concurrency


def test_init_keeps_app_config_set_before_it(spec, tmp_path):
    flask_ampalibe.webserver.config["AMPALIBE_DEFAULT_LANG"] = "mg"
    bot = spec(make_conf(ACCESS_TOKEN=TOKEN, APP_SECRET=SECRET, DEFAULT_LANG="fr", EXECUTOR="inline",
                         DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}"))
    assert bot.app.extensions["ampalibe"].settings.default_lang == "mg"


def test_a_flask_app_reads_no_environment(app, router, monkeypatch):
    monkeypatch.setenv("AMPALIBE_GRAPH_VERSION", "v1.0")
    monkeypatch.setenv("AMP_EXECUTOR", "celery")
    flask_ampalibe.Ampalibe(app, router=router)
    try:
        settings = app.extensions["ampalibe"].settings
        assert (settings.graph_version, settings.executor) == ("v24.0", "inline")
    finally:
        app.extensions["ampalibe"].shutdown(timeout=5)


def test_init_app_takes_settings_built_elsewhere(tmp_path, router):
    app = Flask("prebuilt", root_path=str(tmp_path), instance_path=str(tmp_path / "instance"))
    app.config["TESTING"] = True
    built = Settings.load({"AMPALIBE_EXECUTOR": "inline", "AMPALIBE_URL_PREFIX": "bot/", "AMPALIBE_APP_SECRET": SECRET,
                           "AMPALIBE_VERIF_TOKEN": VERIFY,
                           "AMPALIBE_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    flask_ampalibe.Ampalibe(router=router).init_app(app, settings=built)
    try:
        assert app.extensions["ampalibe"].settings is built
        assert app.config["AMPALIBE_URL_PREFIX"] == "/bot"
        answer = app.test_client().get(f"/bot/?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=42")
        assert answer.get_data(as_text=True) == "42"
    finally:
        app.extensions["ampalibe"].shutdown(timeout=5)


# -- typed, validated, frozen ------------------------------------------------------------------------
def test_values_are_converted_to_their_types():
    loaded = Settings.load({"AMPALIBE_LEASE_SECONDS": "5", "AMPALIBE_ALLOW_UNSIGNED": "yes",
                            "AMPALIBE_MAX_CONCURRENCY": "40", "AMPALIBE_URL_PREFIX": "messenger/",
                            "AMPALIBE_DASHBOARD_PATH": "ops", "AMPALIBE_EXECUTOR": "INLINE",
                            "AMPALIBE_DB_POOL_SIZE": "6"})
    assert loaded.lease_seconds == 5.0 and isinstance(loaded.lease_seconds, float)
    assert loaded.allow_unsigned is True and loaded.max_concurrency == 40 and loaded.db_pool_size == 6
    assert Settings.load(environ={"AMP_DB_POOL_SIZE": "3"}).db_pool_size == 3  # a project's .env name
    assert Settings.load({"AMPALIBE_DB_POOL_SIZE": ""}).db_pool_size == 2  # empty: unset, the default
    assert Settings.load({"AMPALIBE_GC_THRESHOLD": "0"}).gc_threshold == 0  # 0: Python's own
    assert Settings.load(environ={"AMP_GC_THRESHOLD": "20000"}).gc_threshold == 20000
    assert Settings.load({"AMPALIBE_GC_THRESHOLD": ""}).gc_threshold == 50000
    assert Settings.load({}).handler_nice == 19
    assert Settings.load({"AMPALIBE_HANDLER_NICE": "0"}).handler_nice == 0
    assert Settings.load(environ={"AMP_HANDLER_NICE": "5"}).handler_nice == 5
    assert Settings.load({}).webhook_journal is False  # off unless asked for
    assert Settings.load({"AMPALIBE_WEBHOOK_JOURNAL": "1"}).webhook_journal is True
    assert Settings.load(environ={"AMP_WEBHOOK_JOURNAL": "yes"}).webhook_journal is True
    assert Settings.load({"AMPALIBE_WEBHOOK_JOURNAL": "0"}, environ={"AMP_WEBHOOK_JOURNAL": "1"}).webhook_journal is False
    assert (loaded.url_prefix, loaded.dashboard_path, loaded.executor) == ("/messenger", "/ops/", "inline")
    assert Settings.load({}) == Settings()  # the defaults are the dataclass's


def test_settings_are_frozen(app, ext):
    settings = app.extensions["ampalibe"].settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.app_secret = "other"  # type: ignore[misc]


@pytest.mark.parametrize("config, message", [
    ({"AMPALIBE_MAX_CONCURRENCY": "0"}, r"AMPALIBE_MAX_CONCURRENCY='0' is not a positive whole number; set it"),
    ({"AMPALIBE_WORKER_THREADS": "many"}, r"AMPALIBE_MAX_CONCURRENCY='many' .* e\.g\. 1024"),
    ({"AMPALIBE_LEASE_SECONDS": "soon"}, r"AMPALIBE_LEASE_SECONDS='soon' is not a number; .* seconds, e\.g\. 30"),
    ({"AMPALIBE_RETENTION_DAYS": "a week"}, r"number of days, e\.g\. 7"),
    ({"AMPALIBE_EXECUTOR": "rq"}, r"AMPALIBE_EXECUTOR='rq' is not known; use 'thread', 'inline'"),
    ({"AMPALIBE_EXECUTOR": "celery"}, r"set AMPALIBE_CELERY_BROKER_URL .*redis://"),
    ({"AMPALIBE_DASHBOARD_PATH": "/"}, r"AMPALIBE_DASHBOARD_PATH cannot be /.* use a folder"),
    ({"AMPALIBE_DB_POOL_SIZE": "0"}, r"AMPALIBE_DB_POOL_SIZE='0' is not a positive whole number; set it "
                                     r"\(AMP_DB_POOL_SIZE in \.env\) to how many database connections .* e\.g\. 2"),
    ({"AMPALIBE_GC_THRESHOLD": "-1"}, r"AMPALIBE_GC_THRESHOLD='-1' is not a whole number of at least 0; set it "
                                      r"\(AMP_GC_THRESHOLD in \.env\) to the garbage collector's .* e\.g\. 50000"),
    ({"AMPALIBE_GC_THRESHOLD": "lots"}, r"AMPALIBE_GC_THRESHOLD='lots' is not a whole number of at least 0"),
    ({"AMPALIBE_HANDLER_NICE": "20"}, r"AMPALIBE_HANDLER_NICE='20' is not a whole number from 0 to 19; set it "
                                      r"\(AMP_HANDLER_NICE in \.env\) to how much lower .* e\.g\. 19"),
    ({"AMPALIBE_HANDLER_NICE": "-5"}, r"AMPALIBE_HANDLER_NICE='-5' is not a whole number from 0 to 19"),
])
def test_a_bad_value_says_how_to_fix_it(config, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.load(config)


def test_a_bad_value_stops_init_app(app, router):
    app.config["AMPALIBE_POLL_SECONDS"] = "often"
    with pytest.raises(ConfigurationError, match="AMPALIBE_POLL_SECONDS='often'"):
        flask_ampalibe.Ampalibe(app, router=router)
    assert "ampalibe" not in app.extensions


# -- one place -----------------------------------------------------------------------------------------
def _environ_reads(path: Path) -> set[str]:
    """The string names a module reads from ``os.environ`` (``.get(...)``, ``[...]``, ``in``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        target, key = None, None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            target, key = node.func.value, node.args[0]
        elif isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        if isinstance(target, ast.Attribute) and target.attr == "environ" and isinstance(key, ast.Constant):
            names.add(str(key.value))
    return names


def test_settings_are_read_from_the_environment_in_one_place():
    from flask_ampalibe.config import DEFAULTS

    setting_names = {"AMPALIBE_" + key for key in DEFAULTS}
    readers = {}
    for path in PACKAGE.rglob("*.py"):
        if "templates" in path.parts:  # a project's conf.py, not the library
            continue
        found = _environ_reads(path) & setting_names
        if found:
            readers[str(path.relative_to(PACKAGE))] = found
    # Settings.load takes the environment as an argument; only Messenger() made before any bot
    # is configured (Ampalibe 1.1.9's core.py does it at import) looks for a token by itself.
    assert readers == {"compat.py": {"AMPALIBE_ACCESS_TOKEN"}}
