"""Settings of this bot, read from the environment and from the ``.env`` file next to this one.

A real environment variable wins over ``.env`` (``override=False``), so a deployment can set
secrets without editing the file.  An empty value counts as unset.
"""
import os
from pathlib import Path

from dotenv import load_dotenv

HERE = Path(__file__).resolve().parent

load_dotenv(HERE / ".env", override=False)


def setting(name, default=None):
    """The environment variable ``name``, or ``default`` when it is unset or empty."""
    return os.environ.get(name) or default


class Configuration:
    """Every setting the bot uses; ``ampalibe.init(Configuration())`` reads them."""

    # Facebook
    ACCESS_TOKEN = setting("AMP_ACCESS_TOKEN")
    VERIF_TOKEN = setting("AMP_VERIF_TOKEN")
    APP_SECRET = setting("AMP_APP_SECRET")
    ALLOW_UNSIGNED = setting("AMP_ALLOW_UNSIGNED", "0").lower() in ("1", "true", "yes", "on")
    APP_URL = setting("AMP_URL")

    # Database
    ADAPTER = setting("ADAPTER", "SQLITE")
    DB_FILE = str(HERE / setting("DB_FILE", "ampalibe.db"))
    DB_HOST = setting("DB_HOST")
    DB_PORT = setting("DB_PORT")
    DB_USER = setting("DB_USER")
    DB_PASSWORD = setting("DB_PASSWORD")
    DB_NAME = setting("DB_NAME")
    DATABASE_URL = setting("DATABASE_URL")

    # Web server
    APP_HOST = setting("AMP_HOST", "0.0.0.0")
    APP_PORT = int(setting("AMP_PORT", 4555))
    WORKERS = int(setting("AMP_WORKERS", 2))
    MAX_CONCURRENCY = setting("AMP_MAX_CONCURRENCY")  # events handled at once per process (1024)

    # Where handlers run: thread (default), worker (`ampalibe worker`), celery (`ampalibe worker --celery`)
    EXECUTOR = setting("AMP_EXECUTOR")
    CELERY_BROKER_URL = setting("AMP_CELERY_BROKER_URL")

    # Graph API
    GRAPH_URL = setting("AMP_GRAPH_URL", "https://graph.facebook.com")
    GRAPH_VERSION = setting("AMP_GRAPH_VERSION", "v24.0")

    # Operator's dashboard and Prometheus metrics (off while unset)
    DASHBOARD_PASSWORD = setting("AMP_DASHBOARD_PASSWORD")
    DASHBOARD_USER = setting("AMP_DASHBOARD_USER", "admin")
    METRICS_TOKEN = setting("AMP_METRICS_TOKEN")
