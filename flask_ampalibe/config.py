"""Configuration: the ``AMPALIBE_*`` Flask config keys and the spec's ``Configuration`` class.

Bot authors following the Ampalibe docs write a ``Configuration`` class (see the scaffolded
``conf.py``); Flask developers set ``AMPALIBE_*`` keys on ``app.config``.  Both end up as the
same keys, read once by :meth:`flask_ampalibe.Ampalibe.init_app`.
"""
from __future__ import annotations

import hashlib
import os
import sys
from typing import Any, Mapping
from urllib.parse import quote_plus

from .errors import ConfigurationError

__all__ = ["DEFAULTS", "EXECUTORS", "PREFIX", "PROJECT_ENV", "from_configuration", "database_url_from",
           "payload_secret", "project_dir", "settings"]

PREFIX = "AMPALIBE_"

#: Events handled at once per process when ``MAX_CONCURRENCY`` is not set.
DEFAULT_MAX_CONCURRENCY = 256

#: The values of ``AMPALIBE_EXECUTOR``.
EXECUTORS = ("thread", "inline", "worker", "celery")

#: Settings a project's ``.env`` may also give as ``AMP_<KEY>`` (when its ``Configuration`` does
#: not set them): older scaffolded ``conf.py`` files do not read them.
PROJECT_ENV = ("EXECUTOR", "CELERY_BROKER_URL", "CELERY_REQUEUE_SECONDS")

#: Every setting with its default.  Keys appear in ``app.config`` with the ``AMPALIBE_`` prefix.
DEFAULTS: dict[str, Any] = {
    "ACCESS_TOKEN": None,
    "VERIF_TOKEN": None,
    "APP_SECRET": None,
    "ALLOW_UNSIGNED": False,
    "GRAPH_URL": "https://graph.facebook.com",
    "GRAPH_VERSION": "v24.0",
    "HTTP_TIMEOUT": 10.0,
    "DATABASE_URL": None,  # None: sqlite file ampalibe.db in the instance folder
    "PAYLOAD_SECRET": None,  # None: derived from APP_SECRET, else ACCESS_TOKEN
    "URL_PREFIX": "",
    "ASSETS_FOLDER": "assets",
    "APP_URL": None,
    "EXECUTOR": "thread",
    "MAX_CONCURRENCY": None,  # None: 256 events handled at once per process (see README, "Concurrency")
    "WORKER_THREADS": None,  # former name of MAX_CONCURRENCY
    "CELERY_BROKER_URL": None,  # the Celery executor's broker (redis://..., amqp://...)
    "CELERY_REQUEUE_SECONDS": 30.0,  # Celery: how long a recorded event may wait before its user is enqueued again
    "LEASE_SECONDS": 30.0,
    "POLL_SECONDS": 2.0,
    "RETENTION_DAYS": 7.0,
    "HEALTH_TOKEN": None,
    "LANGS_FILE": "langs.json",
    "DEFAULT_LANG": "en",
    "DASHBOARD_PASSWORD": None,  # None: the dashboard is off (404)
    "DASHBOARD_USER": "admin",
    "DASHBOARD_PATH": "/_ampalibe/",
    "METRICS_TOKEN": None,  # None: the Prometheus endpoint is off (404)
}

# The spec's Configuration attributes that map one-to-one onto a setting.
_DIRECT = (
    "ACCESS_TOKEN", "VERIF_TOKEN", "APP_SECRET", "ALLOW_UNSIGNED", "GRAPH_URL", "GRAPH_VERSION",
    "DATABASE_URL", "PAYLOAD_SECRET", "APP_URL", "EXECUTOR", "CELERY_BROKER_URL", "CELERY_REQUEUE_SECONDS",
    "MAX_CONCURRENCY", "WORKER_THREADS", "LEASE_SECONDS", "POLL_SECONDS",
    "RETENTION_DAYS", "HEALTH_TOKEN", "URL_PREFIX", "ASSETS_FOLDER", "HTTP_TIMEOUT", "LANGS_FILE",
    "DEFAULT_LANG", "DASHBOARD_PASSWORD", "DASHBOARD_USER", "DASHBOARD_PATH", "METRICS_TOKEN",
)

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


def database_url_from(conf: Any, base_dir: str | None = None) -> str | None:
    """Build an SQLAlchemy URL from the spec's ``ADAPTER`` and ``DB_*`` attributes.

    ``DATABASE_URL`` wins when set.  ``ADAPTER`` is ``SQLITE`` (the default, file ``DB_FILE``),
    ``MYSQL`` or ``POSTGRESQL``.  A relative ``DB_FILE`` is taken relative to ``base_dir``.

    :returns: the URL, or ``None`` for the default SQLite file.
    """
    url = getattr(conf, "DATABASE_URL", None)
    if url:
        return str(url)
    adapter = str(getattr(conf, "ADAPTER", None) or "SQLITE").upper()
    if adapter == "SQLITE":
        db_file = getattr(conf, "DB_FILE", None)
        if not db_file:
            return None
        if base_dir and not os.path.isabs(str(db_file)):
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


def from_configuration(conf: Any, base_dir: str | None = None) -> dict[str, Any]:
    """Turn the spec's ``Configuration`` object (or class) into ``AMPALIBE_*`` Flask config keys.

    Attributes that are missing or ``None`` are left out, so defaults apply.
    """
    out: dict[str, Any] = {}
    for name in _DIRECT:
        value = getattr(conf, name, None)
        if value is not None and value != "":
            out[PREFIX + name] = value
    url = database_url_from(conf, base_dir)
    if url:
        out[PREFIX + "DATABASE_URL"] = url
    return out


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The effective settings (without prefix) from a Flask config mapping, defaults filled in."""
    out = dict(DEFAULTS)
    for key in DEFAULTS:
        if PREFIX + key in config:
            out[key] = config[PREFIX + key]
    out["ALLOW_UNSIGNED"] = _flag(out["ALLOW_UNSIGNED"])
    cap = out["MAX_CONCURRENCY"] if out["MAX_CONCURRENCY"] not in (None, "") else out["WORKER_THREADS"]
    try:
        cap = int(cap) if cap not in (None, "") else DEFAULT_MAX_CONCURRENCY
    except (TypeError, ValueError):
        cap = 0
    if cap < 1:
        raise ConfigurationError(
            f"AMPALIBE_MAX_CONCURRENCY={out['MAX_CONCURRENCY'] or out['WORKER_THREADS']!r} is not a positive whole "
            f"number; set it (AMP_MAX_CONCURRENCY in .env) to how many events a process may handle at once, "
            f"e.g. {DEFAULT_MAX_CONCURRENCY}."
        )
    out["MAX_CONCURRENCY"] = out["WORKER_THREADS"] = cap
    for key in ("LEASE_SECONDS", "POLL_SECONDS", "RETENTION_DAYS", "HTTP_TIMEOUT", "CELERY_REQUEUE_SECONDS"):
        out[key] = float(out[key])
    out["EXECUTOR"] = str(out["EXECUTOR"]).lower()
    if out["EXECUTOR"] not in EXECUTORS:
        raise ConfigurationError(
            f"AMPALIBE_EXECUTOR={out['EXECUTOR']!r} is not known; use 'thread', 'inline', 'worker' or 'celery'."
        )
    if out["EXECUTOR"] == "celery" and not out["CELERY_BROKER_URL"]:
        raise ConfigurationError(
            "AMPALIBE_EXECUTOR=celery needs the broker's URL: set AMPALIBE_CELERY_BROKER_URL "
            "(AMP_CELERY_BROKER_URL in a project's .env), e.g. redis://localhost:6379/0."
        )
    prefix = str(out["URL_PREFIX"] or "").rstrip("/")
    out["URL_PREFIX"] = ("/" + prefix.lstrip("/")) if prefix else ""
    path = str(out["DASHBOARD_PATH"] or "").strip("/")
    if not path:
        raise ConfigurationError(
            "AMPALIBE_DASHBOARD_PATH cannot be / (the webhook is there); use a folder such as /_ampalibe/."
        )
    out["DASHBOARD_PATH"] = f"/{path}/"
    return out


def payload_secret(values: Mapping[str, Any]) -> str:
    """The key that signs payloads: ``PAYLOAD_SECRET``, else derived from ``APP_SECRET`` or ``ACCESS_TOKEN``.

    Derived, not random, so every worker and host of one bot agrees on it.
    """
    if values.get("PAYLOAD_SECRET"):
        return str(values["PAYLOAD_SECRET"])
    base = values.get("APP_SECRET") or values.get("ACCESS_TOKEN") or values.get("VERIF_TOKEN")
    if not base:
        raise ConfigurationError(
            "Payloads need a signing key: set AMPALIBE_PAYLOAD_SECRET, or APP_SECRET (AMP_APP_SECRET in .env)."
        )
    return hashlib.sha256(b"flask_ampalibe payload:" + str(base).encode()).hexdigest()


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
