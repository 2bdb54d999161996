"""How the CLI finds the bot of a project folder, and its settings.

A project folder (what ``ampalibe create`` writes) holds ``core.py``, the module that sets the
bot up, and usually ``conf.py`` with the spec's ``Configuration`` class.  ``core.py`` written in
the spec's style never defines a WSGI object: the app is the one ``ampalibe.init(...)``
configured, :data:`flask_ampalibe.webserver`.  A ``core.py`` that defines ``app`` (a Flask app)
is served as is, so Flask-native projects work too.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import click
from flask import Flask

from ..config import Settings
from ..errors import ConfigurationError

__all__ = ["ProjectError", "ProjectSettings", "find_project", "load_app", "load_import_path", "read_settings",
           "env_settings"]

CORE = "core.py"
CONF = "conf.py"


class ProjectError(click.ClickException):
    """The current folder is not a bot project, or one of its settings is missing.

    The CLI prints the message (no traceback) and exits with status 1.
    """


@dataclass
class ProjectSettings:
    """What the CLI needs to know of a project before serving it."""

    host: str = "0.0.0.0"
    port: int = 4555
    workers: int = 2
    url: str | None = None
    #: Where the webhook is served (``AMPALIBE_URL_PREFIX`` / ``Configuration.URL_PREFIX``), e.g.
    #: ``/messenger``; ``""`` for the root.
    url_prefix: str = ""
    access_token: str | None = None
    verif_token: str | None = None
    app_secret: str | None = None
    allow_unsigned: bool = False
    #: ``False`` when the project has no ``Configuration`` class to check (a Flask-native core).
    checked: bool = False


def find_project(folder: str | os.PathLike[str] | None = None) -> Path:
    """The absolute path of the project folder ``folder`` (default: the current folder).

    :raises ProjectError: when it has no ``core.py``.
    """
    path = Path(folder or ".").resolve()
    if not (path / CORE).is_file():
        raise ProjectError(
            f"No {CORE} in {path}: run this command in your bot's folder "
            "(the one `ampalibe create NAME` made), or make this folder one with `ampalibe init`."
        )
    return path


def load_app(folder: str | os.PathLike[str] | None = None) -> Flask:
    """Import the project's ``core`` module and return its Flask app.

    The project's ``.env`` is loaded into the environment first (variables already set win), as
    Ampalibe 1.1.9's ``ampalibe run`` exported it, so a ``conf.py`` that only reads
    ``os.environ`` sees it.  The project folder goes first on ``sys.path`` (so ``core.py`` can
    ``import conf`` and its other modules).  The app is ``core.app`` when that is a Flask app,
    else :data:`flask_ampalibe.webserver`, the app ``ampalibe.init(...)`` configured; when
    ``core.py`` never called ``init`` (1.1.9's ``core.py`` does not), it is called here with
    ``conf.Configuration``.
    """
    path = find_project(folder)
    load_env(path)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    module = importlib.import_module("core")
    app = getattr(module, "app", None)
    if isinstance(app, Flask):
        return app
    import flask_ampalibe

    init_if_needed(path)
    return flask_ampalibe.webserver


def init_if_needed(path: Path) -> None:
    """Set the bot up with ``conf.Configuration`` when the imported ``core.py`` did not call
    ``ampalibe.init`` (Ampalibe 1.1.9's ``core.py`` never does: its ``ampalibe run`` did it)."""
    import flask_ampalibe

    if "ampalibe" not in flask_ampalibe.webserver.extensions and (path / CONF).is_file():
        flask_ampalibe.init(importlib.import_module("conf").Configuration)


def load_env(path: Path, environ: "os._Environ[str] | dict[str, str] | None" = None) -> None:
    """Put the values of ``path/.env`` into ``environ`` (default ``os.environ``) where it has none.

    ``export NAME=value`` lines (Ampalibe 1.1.9's ``.env``) are read like ``NAME=value``; empty
    values are skipped, as unset.
    """
    from dotenv import dotenv_values

    target = os.environ if environ is None else environ
    for key, value in dotenv_values(path / ".env").items():
        if value and not target.get(key):
            target[key] = value


def load_import_path(import_path: str, folder: str | os.PathLike[str] | None = None) -> Flask:
    """The Flask app named like ``flask --app`` names it (``module``, ``module:app``,
    ``module:create_app()``), with ``folder`` (default: the current one) first on ``sys.path``."""
    from flask.cli import ScriptInfo

    path = str(Path(folder or ".").resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    return ScriptInfo(app_import_path=import_path, set_debug_flag=False).load_app()


def env_settings(folder: str | os.PathLike[str] | None = None) -> ProjectSettings:
    """The settings of a folder without ``core.py``/``Configuration`` (``--app``): from the
    environment and ``.env``."""
    from ..gunicorn_conf import project_environ

    env = project_environ(str(Path(folder or ".").resolve()))
    return ProjectSettings(
        host=env.get("AMP_HOST") or "0.0.0.0",
        port=_int(env.get("AMP_PORT"), 4555, "AMP_PORT"),
        workers=_workers(env.get("AMP_WORKERS")),
        url=env.get("AMP_URL"),
        url_prefix=_prefix(env.get("AMPALIBE_URL_PREFIX")),
        verif_token=env.get("AMPALIBE_VERIF_TOKEN") or env.get("AMP_VERIF_TOKEN"),
    )


def read_settings(folder: str | os.PathLike[str] | None = None) -> ProjectSettings:
    """Read the settings of a project without importing its bot.

    The ``Configuration`` class of ``conf.py`` is evaluated in a throw-away namespace, with the
    environment put back afterwards, so ``load_dotenv`` there leaves no trace in this process:
    the gunicorn master and the reloader must not pin the ``.env`` of the moment into the
    workers they start later.  Without a ``Configuration`` class, the values come from the
    environment and ``.env`` (``checked`` is then ``False``).

    :raises ProjectError: when ``core.py`` is missing or ``conf.py`` fails to run.
    """
    from ..gunicorn_conf import project_environ  # not at import: that module reads .env when imported

    path = find_project(folder)
    env = project_environ(str(path))
    conf = _configuration(path)
    if conf is None:
        return env_settings(path)
    # What the bot will use, read as ampalibe.init reads it (a setting conf.py leaves unset
    # comes from the environment: Ampalibe 1.1.9's conf.py has none for the app secret).
    try:
        bot = Settings.load(conf=conf, environ=env, base_dir=str(path))
    except ConfigurationError as exc:
        raise ProjectError(str(exc)) from None
    return ProjectSettings(
        host=str(getattr(conf, "APP_HOST", None) or "0.0.0.0"),
        port=_int(getattr(conf, "APP_PORT", None), 4555, "AMP_PORT"),
        workers=_workers(getattr(conf, "WORKERS", None) or env.get("AMP_WORKERS")),
        url=getattr(conf, "APP_URL", None) or None,
        url_prefix=bot.url_prefix,
        access_token=bot.access_token,
        verif_token=bot.verif_token,
        app_secret=bot.app_secret,
        allow_unsigned=bot.allow_unsigned,
        checked=True,
    )


def _configuration(path: Path) -> Any:
    conf_file = path / CONF
    if not conf_file.is_file():
        return None
    with _isolated(path):
        load_env(path)
        try:
            namespace = runpy.run_path(str(conf_file), run_name="__ampalibe_conf__")
        except Exception as exc:  # the user's file: say which and why, the CLI adds no traceback
            raise ProjectError(f"{conf_file} failed to run: {type(exc).__name__}: {exc}") from exc
    return namespace.get("Configuration")


@contextlib.contextmanager
def _isolated(path: Path) -> Iterator[None]:
    """Run project code with its folder on ``sys.path``, then restore the environment and path."""
    environ = dict(os.environ)
    sys_path = list(sys.path)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path[:] = sys_path
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _int(value: Any, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ProjectError(f"{name} must be a whole number, not {value!r}; fix it in .env.") from None


def _workers(value: Any) -> int:
    workers = _int(value, 2, "AMP_WORKERS")
    if workers < 1:
        raise ProjectError(f"AMP_WORKERS must be at least 1, not {workers}: a server without workers answers nobody.")
    return workers


def _prefix(value: Any) -> str:
    """``/messenger`` from ``messenger``, ``/messenger/`` or ``/messenger``; ``""`` for none."""
    prefix = str(value or "").strip().strip("/")
    return f"/{prefix}" if prefix else ""


