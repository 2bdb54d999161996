"""How ``ampalibe run`` serves a project: gunicorn, or Flask's development server with ``--dev``.

gunicorn is imported only when serving with it: it does not import on Windows, where the
other commands and ``run --dev`` must still work.
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from . import loader
from .loader import ProjectError

__all__ = ["gunicorn_server", "serve_gunicorn", "serve_dev"]

WSGIApp = Callable[..., Iterable[bytes]]


def serve_gunicorn(folder: Path, host: str, port: int, workers: int, app_path: str | None = None) -> None:
    """Serve the project in ``folder`` (or the app ``app_path`` names, as ``flask --app`` does)
    under gunicorn until it is stopped (SIGTERM, Ctrl-C).

    Exits the process with gunicorn's status (0 after a graceful stop).
    """
    from ..gunicorn_conf import bind_address

    gunicorn_server(folder, {"bind": [bind_address(host, port)], "workers": workers}, app_path).run()


def load(folder: Path, app_path: str | None = None) -> Any:
    """The app to serve: ``app_path``'s (``--app``) or the project's."""
    return loader.load_app(folder) if app_path is None else loader.load_import_path(app_path, folder)


def gunicorn_server(folder: Path, overrides: dict[str, Any], app_path: str | None = None) -> Any:
    """A gunicorn application (not started) serving the project in ``folder``.

    Settings, later ones winning: the project's ``gunicorn.conf.py`` if it has one, else
    :mod:`flask_ampalibe.gunicorn_conf`; then ``GUNICORN_CMD_ARGS``; then ``overrides``.
    The app is not imported in the master (no ``preload_app``): every worker builds its own
    database engine and executor threads, and a ``HUP`` reload picks up new code.

    :raises ProjectError: where gunicorn cannot run (Windows).
    """
    try:
        from gunicorn.app.base import BaseApplication
        from gunicorn.arbiter import Arbiter
        from gunicorn.errors import AppImportError, HaltServer
    except ImportError as exc:
        raise ProjectError(
            f"gunicorn cannot run here ({exc}); it needs a POSIX system (Linux, macOS, WSL, Docker). "
            "Use `ampalibe run --dev` to try the bot on this machine."
        ) from exc

    class GunicornServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in _config_file(folder).items():
                if key in self.cfg.settings:
                    self.cfg.set(key.lower(), value)
            args = self.cfg.get_cmd_args_from_env()
            if args:
                parsed = self.cfg.parser().parse_args(args)
                for key, value in vars(parsed).items():
                    if value is not None and key != "args":
                        self.cfg.set(key.lower(), value)
            for key, value in overrides.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            try:
                return load(folder, app_path)
            except ProjectError as exc:
                raise AppImportError(f"Error: {exc.format_message()}") from exc
            except Exception as exc:
                # A setting to fix: its message names it, a traceback would only hide it.
                # gunicorn prints an AppImportError's message and stops ("App failed to load").
                if _is_configuration_error(exc):
                    raise AppImportError(f"Error: {exc}") from exc
                raise

        def run(self) -> None:
            arbiter = Arbiter(self)
            try:
                arbiter.run()
            except HaltServer as exc:
                # When several workers fail to load at once, gunicorn's halt() meets the next
                # failed worker while stopping and raises HaltServer out of run(), with a
                # traceback.  Finish stopping (halt() ends with sys.exit) quietly instead.
                while True:
                    try:
                        arbiter.halt(reason=exc.reason, exit_status=exc.exit_status)
                    except HaltServer:
                        continue
            except RuntimeError as exc:  # as BaseApplication.run: e.g. the address is in use
                click.echo(f"Error: {exc}", err=True)
                sys.exit(1)

    return GunicornServer(prog="ampalibe run")


def _config_file(folder: Path) -> dict[str, Any]:
    project_conf = folder / "gunicorn.conf.py"
    if project_conf.is_file():
        return runpy.run_path(str(project_conf), run_name="__gunicorn_config__")
    from .. import gunicorn_conf

    return gunicorn_conf.settings(gunicorn_conf.project_environ(str(folder)))


def _is_configuration_error(exc: BaseException) -> bool:
    errors = sys.modules.get("flask_ampalibe.errors")
    kind = getattr(errors, "ConfigurationError", None)
    return kind is not None and isinstance(exc, kind)


def serve_dev(folder: Path, host: str, port: int, app_path: str | None = None) -> None:
    """Serve the project with Werkzeug's reloader and debugger.

    The first process only watches files (every ``.py`` of the project, ``langs.json``,
    ``.env``) and restarts a second one, which imports the app and serves it, on each change.
    SIGTERM to the first process stops both.
    """
    from werkzeug.serving import is_running_from_reloader, run_simple

    # Debug mode before the app exists: the library relaxes its production checks (an
    # unsigned webhook only warns) for an app created in debug mode.
    os.environ["FLASK_DEBUG"] = "1"
    app: WSGIApp = _dev_app(folder, app_path) if is_running_from_reloader() else _not_loaded
    run_simple(
        host, port, app,
        use_reloader=True, use_debugger=True, threaded=True,
        extra_files=[str(folder / "langs.json"), str(folder / ".env")],
    )


def _dev_app(folder: Path, app_path: str | None = None) -> WSGIApp:
    """The project's app; if it fails to load, a stand-in that raises the error on every request
    (the debugger shows it) while the reloader waits for the fix."""
    try:
        app = load(folder, app_path)
    except ProjectError:
        raise
    except Exception as exc:
        if _is_configuration_error(exc):
            click.echo(f"Error: {exc}", err=True)
        else:
            traceback.print_exc()
        click.echo("Waiting for a change to a .py file, langs.json or .env to try again.", err=True)
        return _failed(exc)
    app.debug = True
    return app


def _failed(exc: BaseException) -> WSGIApp:
    def failed_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        raise exc

    return failed_app


def _not_loaded(environ: dict, start_response: Callable) -> Iterable[bytes]:  # pragma: no cover
    # Never called: in the watching process Werkzeug only binds the socket for the server process.
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"The bot is starting."]
