"""Configuration: :class:`Settings`, built once per app from ``app.config``, the spec's
``Configuration`` class and the environment, in the order :meth:`Settings.load` documents.

Bot authors following the Ampalibe docs write a ``Configuration`` class (see the scaffolded
``conf.py``); Flask developers set ``AMPALIBE_*`` keys on ``app.config``.  Both end up in one
frozen :class:`Settings` (``app.extensions["ampalibe"].settings``), and ``app.config`` holds the
same values under their ``AMPALIBE_*`` keys.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, fields
from typing import Any, Mapping
from urllib.parse import quote_plus

from .errors import ConfigurationError

__all__ = ["DEFAULTS", "EXECUTORS", "PREFIX", "Settings", "payload_secret", "project_dir"]

PREFIX = "AMPALIBE_"

#: Events handled at once per process when ``MAX_CONCURRENCY`` is not set.
DEFAULT_MAX_CONCURRENCY = 1024
#: Database connections each process keeps for the handlers' statements (as many again at most
#: under load); see ``AMPALIBE_DB_POOL_SIZE`` in the README.
DEFAULT_DB_POOL_SIZE = 2
#: The garbage collector's first threshold in processes that handle events (see
#: ``AMPALIBE_GC_THRESHOLD`` in the README); Python's own is 700 on 3.11–3.13.
DEFAULT_GC_THRESHOLD = 50_000
#: How much lower than gunicorn's request threads the executor's threads run on the CPU (see
#: ``AMPALIBE_HANDLER_NICE`` in the README and :mod:`flask_ampalibe.priority`).
DEFAULT_HANDLER_NICE = 19

#: The values of ``AMPALIBE_EXECUTOR``.
EXECUTORS = ("thread", "inline", "worker", "celery")

#: The names a project's ``.env`` gives some settings (``AMP_<KEY>``), read from the environment
#: when neither the ``Configuration`` nor ``AMPALIBE_<KEY>`` sets them: Ampalibe 1.1.9's and older
#: scaffolded ``conf.py`` files have no attribute for them.
_AMP_NAMES = {
    "APP_SECRET": "AMP_APP_SECRET", "ALLOW_UNSIGNED": "AMP_ALLOW_UNSIGNED", "GRAPH_URL": "AMP_GRAPH_URL",
    "GRAPH_VERSION": "AMP_GRAPH_VERSION", "APP_URL": "AMP_URL", "EXECUTOR": "AMP_EXECUTOR",
    "CELERY_BROKER_URL": "AMP_CELERY_BROKER_URL", "CELERY_REQUEUE_SECONDS": "AMP_CELERY_REQUEUE_SECONDS",
    "DB_POOL_SIZE": "AMP_DB_POOL_SIZE", "GC_THRESHOLD": "AMP_GC_THRESHOLD", "WEBHOOK_JOURNAL": "AMP_WEBHOOK_JOURNAL",
    "HANDLER_NICE": "AMP_HANDLER_NICE",
}

#: Settings that are a number of seconds (or days); how to fix a bad value names an example.
_FLOATS = {"HTTP_TIMEOUT": 10, "CELERY_REQUEUE_SECONDS": 30, "LEASE_SECONDS": 30, "POLL_SECONDS": 2,
           "RETENTION_DAYS": 7}

#: Settings that are a whole number: an example, what to set, the least value allowed and the
#: greatest (``None``: no bound).
_WHOLE = {
    "DB_POOL_SIZE": (DEFAULT_DB_POOL_SIZE, "how many database connections each process keeps for its handlers", 1,
                     None),
    "GC_THRESHOLD": (DEFAULT_GC_THRESHOLD, "the garbage collector's first threshold in the processes that handle "
                                           "events (0: Python's own)", 0, None),
    "HANDLER_NICE": (DEFAULT_HANDLER_NICE, "how much lower than the webhook's the CPU priority of the handlers' "
                                           "threads is (0: the same)", 0, 19),
}

_DRIVERS = {
    "MYSQL": ("mysql+pymysql", "3306", "?charset=utf8mb4"),
    "MARIADB": ("mysql+pymysql", "3306", "?charset=utf8mb4"),
    "POSTGRESQL": ("postgresql+psycopg", "5432", ""),
    "POSTGRES": ("postgresql+psycopg", "5432", ""),
}


def project_dir(conf: Any) -> str:
    """The project folder: where the module defining ``conf``'s class lives (``conf.py``), else the cwd."""
    if conf is None:
        return os.getcwd()
    cls = conf if isinstance(conf, type) else type(conf)
    filename = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return os.path.dirname(os.path.abspath(filename)) if filename else os.getcwd()


def _url_from_parts(conf: Any, base_dir: str) -> str | None:
    """An SQLAlchemy URL from the spec's ``ADAPTER`` and ``DB_*`` attributes of ``conf``.

    ``ADAPTER`` is ``SQLITE`` (the default, file ``DB_FILE``), ``MYSQL`` or ``POSTGRESQL``.  A
    relative ``DB_FILE`` is taken relative to ``base_dir``.

    :returns: the URL, or ``None`` when they name none (SQLite without ``DB_FILE``).
    """
    adapter = str(getattr(conf, "ADAPTER", None) or "SQLITE").upper()
    if adapter == "SQLITE":
        db_file = getattr(conf, "DB_FILE", None)
        if not db_file:
            return None
        if not os.path.isabs(str(db_file)):
            db_file = os.path.join(base_dir, str(db_file))
        return f"sqlite:///{db_file}"
    if adapter not in _DRIVERS:
        raise ConfigurationError(
            f"ADAPTER={adapter!r} is not supported; set ADAPTER to SQLITE, MYSQL or POSTGRESQL, "
            "or give an SQLAlchemy URL in DATABASE_URL."
        )
    driver, default_port, query = _DRIVERS[adapter]
    host = getattr(conf, "DB_HOST", None) or "localhost"
    port = getattr(conf, "DB_PORT", None) or default_port
    name = getattr(conf, "DB_NAME", None)
    if not name:
        raise ConfigurationError(f"ADAPTER={adapter} needs DB_NAME (the database to use); set it in .env.")
    user = quote_plus(str(getattr(conf, "DB_USER", None) or ""))
    password = getattr(conf, "DB_PASSWORD", None)
    auth = f"{user}:{quote_plus(str(password))}@" if password else (f"{user}@" if user else "")
    return f"{driver}://{auth}{host}:{port}/{name}{query}"


@dataclass(frozen=True)
class Settings:
    """One app's settings, typed, validated and frozen: built once, by :meth:`load`.

    ``app.extensions["ampalibe"].settings`` is this object; ``app.config`` keeps the same values
    under their ``AMPALIBE_*`` keys.  Each field is the setting of the same name in upper case
    (``access_token`` is ``AMPALIBE_ACCESS_TOKEN``); see the README's "Configuration" for what
    each does.  ``AMPALIBE_WORKER_THREADS`` is read as the former name of ``max_concurrency``.
    """

    access_token: str | None = None
    verif_token: str | None = None
    app_secret: str | None = None
    allow_unsigned: bool = False
    graph_url: str = "https://graph.facebook.com"
    graph_version: str = "v24.0"
    http_timeout: float = 10.0
    #: ``None``: the file ``ampalibe.db`` in the app's instance folder.
    database_url: str | None = None
    #: ``None``: derived from ``app_secret``, else ``access_token`` (see :func:`payload_secret`).
    payload_secret: str | None = None
    url_prefix: str = ""
    assets_folder: str = "assets"
    app_url: str | None = None
    executor: str = "thread"
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    db_pool_size: int = DEFAULT_DB_POOL_SIZE
    #: ``0``: Python's garbage collector is left as it is.
    gc_threshold: int = DEFAULT_GC_THRESHOLD
    #: ``0``: the handlers' threads keep the process's CPU priority.
    handler_nice: int = DEFAULT_HANDLER_NICE
    #: On an SQLite file: the webhook records in a journal file of its own (see flask_ampalibe.journal).
    webhook_journal: bool = False
    celery_broker_url: str | None = None
    celery_requeue_seconds: float = 30.0
    lease_seconds: float = 30.0
    poll_seconds: float = 2.0
    retention_days: float = 7.0
    health_token: str | None = None
    langs_file: str = "langs.json"
    default_lang: str = "en"
    #: ``None``: the dashboard is off (404).
    dashboard_password: str | None = None
    dashboard_user: str = "admin"
    dashboard_path: str = "/_ampalibe/"
    #: ``None``: the Prometheus endpoint is off (404).
    metrics_token: str | None = None

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None, conf: Any = None,
             environ: Mapping[str, str] | None = None, *, base_dir: str | None = None) -> "Settings":
        """Build the settings; the one place configuration is read.

        Each setting comes from the first of, in this order:

        1. ``config["AMPALIBE_<KEY>"]`` (the Flask ``app.config``), when present and not ``None``;
        2. the ``Configuration`` attribute ``<KEY>`` of ``conf``, when neither ``None`` nor ``""``;
        3. ``environ["AMPALIBE_<KEY>"]``, when not empty;
        4. ``environ``'s ``.env`` name for it, when not empty: ``AMP_APP_SECRET``,
           ``AMP_ALLOW_UNSIGNED``, ``AMP_GRAPH_URL``, ``AMP_GRAPH_VERSION``, ``AMP_URL`` (``app_url``),
           ``AMP_EXECUTOR``, ``AMP_CELERY_BROKER_URL``, ``AMP_CELERY_REQUEUE_SECONDS`` (names an older
           scaffolded ``conf.py`` has no attribute for);
        5. the default.

        The database URL follows the same order, level 2 being ``conf.DATABASE_URL`` or else the
        URL its spec-style parts make (``ADAPTER`` ``SQLITE`` with ``DB_FILE``, ``MYSQL`` or
        ``POSTGRESQL`` with ``DB_HOST``, ``DB_PORT``, ``DB_USER``, ``DB_PASSWORD``, ``DB_NAME``);
        with a ``conf`` and none of them, the file ``ampalibe.db`` in its project folder
        (``base_dir``, by default the folder of the module defining ``conf``'s class: see
        :func:`project_dir`), where a relative ``DB_FILE`` is too.

        :func:`flask_ampalibe.init` passes all three (``os.environ`` for ``environ``);
        :meth:`flask_ampalibe.Ampalibe.init_app` passes ``app.config`` only, so a Flask app reads
        no environment variable unless it copies them into its config itself.

        :raises ConfigurationError: a value that cannot be used, named with how to fix it.

        Example::

            Settings.load({"AMPALIBE_EXECUTOR": "inline"}).executor   # 'inline'
        """
        config = config if config is not None else {}
        environ = environ if environ is not None else {}

        def attribute(key: str) -> Any:
            return getattr(conf, key, None) if conf is not None else None

        raw: dict[str, Any] = {}
        for key in DEFAULTS:
            explicit = config.get(PREFIX + key)
            raw[key] = explicit if explicit is not None else _first(
                attribute(key), environ.get(PREFIX + key), environ.get(_AMP_NAMES.get(key, "")))
        if conf is not None and config.get(PREFIX + "DATABASE_URL") is None:
            # The Configuration names its database by URL or by parts (ADAPTER, DB_*), either
            # of which beats the environment; with neither, ampalibe.db in the project folder.
            base = base_dir or project_dir(conf)
            raw["DATABASE_URL"] = _first(attribute("DATABASE_URL"), _url_from_parts(conf, base),
                                         environ.get(PREFIX + "DATABASE_URL"),
                                         f"sqlite:///{os.path.join(base, 'ampalibe.db')}")
        return cls._validated(raw)

    @classmethod
    def _validated(cls, raw: Mapping[str, Any]) -> "Settings":
        """Convert and check the raw values (``None``: the default)."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = field.name.upper()
            value = raw.get(key)
            if value is None:
                continue
            if key in _FLOATS:
                values[field.name] = _number(key, value)
            elif field.name in ("allow_unsigned", "webhook_journal"):
                values[field.name] = _flag(value)
            elif field.name == "database_url" and hasattr(value, "render_as_string"):  # an sqlalchemy URL
                values[field.name] = value.render_as_string(hide_password=False)
            elif key in _WHOLE:
                if str(value) == "":  # empty: unset, as for the other settings
                    continue
                values[field.name] = _positive(key, value, *_WHOLE[key])
            elif field.name != "max_concurrency":
                # An empty optional setting is unset; an empty required one takes its default.
                if str(value) or field.name == "url_prefix":
                    values[field.name] = str(value)
        values["max_concurrency"] = _cap(raw.get("MAX_CONCURRENCY"), raw.get("WORKER_THREADS"))
        executor = str(values.get("executor", "thread")).lower()
        if executor not in EXECUTORS:
            raise ConfigurationError(
                f"AMPALIBE_EXECUTOR={executor!r} is not known; use 'thread', 'inline', 'worker' or 'celery'."
            )
        values["executor"] = executor
        if executor == "celery" and not values.get("celery_broker_url"):
            raise ConfigurationError(
                "AMPALIBE_EXECUTOR=celery needs the broker's URL: set AMPALIBE_CELERY_BROKER_URL "
                "(AMP_CELERY_BROKER_URL in a project's .env), e.g. redis://localhost:6379/0."
            )
        prefix = str(values.get("url_prefix") or "").rstrip("/")
        values["url_prefix"] = ("/" + prefix.lstrip("/")) if prefix else ""
        path = str(raw.get("DASHBOARD_PATH") if raw.get("DASHBOARD_PATH") is not None
                   else cls.dashboard_path).strip("/")
        if not path:
            raise ConfigurationError(
                "AMPALIBE_DASHBOARD_PATH cannot be / (the webhook is there); use a folder such as /_ampalibe/."
            )
        values["dashboard_path"] = f"/{path}/"
        return cls(**values)

    def as_config(self) -> dict[str, Any]:
        """These settings as ``AMPALIBE_*`` Flask config keys (``AMPALIBE_WORKER_THREADS`` too)."""
        out = {PREFIX + field.name.upper(): getattr(self, field.name) for field in fields(self)}
        out[PREFIX + "WORKER_THREADS"] = self.max_concurrency
        return out


#: Every setting with its default (``None``: see :class:`Settings`), by its key without the prefix.
DEFAULTS: dict[str, Any] = {field.name.upper(): field.default for field in fields(Settings)}
DEFAULTS.update(MAX_CONCURRENCY=None, WORKER_THREADS=None)  # None: DEFAULT_MAX_CONCURRENCY


def payload_secret(settings: Settings) -> str:
    """The key that signs payloads: ``payload_secret``, else derived from ``app_secret`` or ``access_token``.

    Derived, not random, so every worker and host of one bot agrees on it.
    """
    if settings.payload_secret:
        return settings.payload_secret
    base = settings.app_secret or settings.access_token or settings.verif_token
    if not base:
        raise ConfigurationError(
            "Payloads need a signing key: set AMPALIBE_PAYLOAD_SECRET, or APP_SECRET (AMP_APP_SECRET in .env)."
        )
    return hashlib.sha256(b"flask_ampalibe payload:" + str(base).encode()).hexdigest()


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _first(*values: Any) -> Any:
    """The first value that is set (neither ``None`` nor ``""``), else ``None``."""
    return next((value for value in values if value is not None and value != ""), None)


def _number(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"AMPALIBE_{key}={value!r} is not a number; set it to a number of "
            f"{'days' if key.endswith('DAYS') else 'seconds'}, e.g. {_FLOATS[key]}."
        ) from None


def _positive(key: str, value: Any, example: int, meaning: str, least: int = 1, most: int | None = None) -> int:
    """A whole number from ``least`` to ``most`` (``None``: any above), or an error that says how to fix it."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = least - 1
    if number < least or (most is not None and number > most):
        if most is not None:
            kind = f"whole number from {least} to {most}"
        elif least == 1:
            kind = "positive whole number"
        else:
            kind = f"whole number of at least {least}"
        raise ConfigurationError(
            f"{PREFIX}{key}={value!r} is not a {kind}; set it (AMP_{key} in .env) to {meaning}, "
            f"e.g. {example}."
        )
    return number


def _cap(value: Any, former: Any) -> int:
    """``MAX_CONCURRENCY`` (else its former name ``WORKER_THREADS``) as a positive whole number."""
    given = value if value not in (None, "") else former
    return _positive("MAX_CONCURRENCY", given if given not in (None, "") else DEFAULT_MAX_CONCURRENCY,
                     DEFAULT_MAX_CONCURRENCY, "how many events a process may handle at once")
