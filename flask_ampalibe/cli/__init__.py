"""The ``ampalibe`` command line: ``flask ampalibe ...`` and the ``ampalibe`` console script.

The same click group serves both.  Flask loads it through the ``flask.commands`` entry point
before any app exists, so the project commands (``create``, ``init``, ``env``, ``lang``,
``run``, ``version``), which need no app, work in an empty folder.  Commands that do need the
bot's app (the operational ones of :mod:`flask_ampalibe.cli.operate`) get it from Flask's
``--app`` option under ``flask``, and from the ``core.py`` of the current folder under the
``ampalibe`` script (see :mod:`flask_ampalibe.cli.loader`).
"""
from __future__ import annotations

from typing import Any, Sequence

import click
from flask import Flask
from flask.cli import AppGroup, ScriptInfo

from . import errors, loader, migrate, operate, project

__all__ = ["cli", "main"]

class _Group(AppGroup):
    """The ``ampalibe`` group: an error of a command is one line and exit status 1 (see
    :mod:`flask_ampalibe.cli.errors`); ``--traceback`` shows the whole traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if errors.wants_traceback(ctx):
                raise
            raise click.ClickException(errors.describe(exc, ctx)) from None


def _set_app(ctx: click.Context, param: Any, value: str | None) -> None:
    if value:
        info = ctx.ensure_object(ScriptInfo)
        info.app_import_path = value
        info.create_app = None  # the named app, not the core.py of the current folder


#: ``ampalibe --app module:app COMMAND``: the app the commands operate (``run`` serves it), as
#: ``flask --app`` does; without it, the ``core.py`` of the current folder.
app_option = click.option(
    "--app", "-A", metavar="IMPORT", expose_value=False, is_eager=True, callback=_set_app,
    help="The Flask app to use (module, module:app, module:create_app()), like flask --app. "
         "Default: the core.py of the current folder.",
)

cli = app_option(errors.traceback_option(_Group(
    "ampalibe",
    help="Create, run and operate Facebook Messenger bots built with flask_ampalibe.",
    # -h is help everywhere (ampalibe run -h too); --host has no short form.
    context_settings={"help_option_names": ["-h", "--help"]},
)))

# Ampalibe 1.1.9 takes the port before the command: ``ampalibe -p 5000 run``.
cli.params.append(project.leading_port_option())
project.register(cli)
migrate.register(cli)

operate.register(cli)


def _project_app() -> Flask:
    return loader.load_app()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ampalibe`` console script."""
    cli.main(args=argv, prog_name="ampalibe", obj=ScriptInfo(create_app=_project_app))
