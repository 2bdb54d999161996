"""The ``ampalibe`` command line: ``flask ampalibe ...`` and the ``ampalibe`` console script.

The same click group serves both.  Flask loads it through the ``flask.commands`` entry point
before any app exists, so the project commands (``create``, ``init``, ``env``, ``lang``,
``run``, ``version``), which need no app, work in an empty folder.  Commands that do need the
bot's app (the operational ones of :mod:`flask_ampalibe.cli.operate`) get it from Flask's
``--app`` option under ``flask``, and from the ``core.py`` of the current folder under the
``ampalibe`` script (see :mod:`flask_ampalibe.cli.loader`).
"""
from __future__ import annotations

from typing import Sequence

from flask import Flask
from flask.cli import AppGroup, ScriptInfo

from . import loader, migrate, operate, project

__all__ = ["cli", "main"]

cli = AppGroup(
    "ampalibe",
    help="Create, run and operate Facebook Messenger bots built with flask_ampalibe.",
)

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
