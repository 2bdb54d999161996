"""How the CLI reports an error: one line and exit status 1, never a raw traceback.

``ampalibe --traceback COMMAND`` (or ``AMPALIBE_TRACEBACK=1``) shows the whole traceback instead.
"""
from __future__ import annotations

import os
import traceback
from typing import Any

import click

__all__ = ["describe", "wants_traceback", "remember_database", "TRACEBACK_ENV", "traceback_option"]

TRACEBACK_ENV = "AMPALIBE_TRACEBACK"
_HINT = f"(ampalibe --traceback, or {TRACEBACK_ENV}=1, shows the whole traceback)"


def wants_traceback(ctx: click.Context | None) -> bool:
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    while ctx is not None:
        if ctx.meta.get("ampalibe.traceback"):
            return True
        ctx = ctx.parent
    return False


def _set_traceback(ctx: click.Context, param: Any, value: bool) -> None:
    if value:
        ctx.meta["ampalibe.traceback"] = True


traceback_option = click.option(
    "--traceback", is_flag=True, expose_value=False, is_eager=True, callback=_set_traceback,
    help=f"On an error, show the whole traceback instead of one line (or set {TRACEBACK_ENV}=1).",
)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def remember_database(url: str) -> None:
    """Note the database a command uses, for the message of a database error."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta["ampalibe.database_url"] = url


def describe(exc: BaseException, ctx: click.Context | None = None) -> str:
    """One line saying what went wrong and where to look."""
    from ..dberrors import describe as describe_db, is_unavailable
    from ..errors import AmpalibeError

    url = ctx.find_root().meta.get("ampalibe.database_url") if ctx is not None else None
    if url and is_unavailable(exc):
        return describe_db(url, exc)

    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else "?"
        return f"{where}: {type(exc).__name__}: {exc.msg}"
    if isinstance(exc, AmpalibeError):
        return " ".join(str(exc).split())
    try:
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError
    except ImportError:  # pragma: no cover - a dependency
        DBAPIError = SQLAlchemyError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = " ".join(str(exc.orig).split())
        return f"database error: {type(exc.orig).__name__}: {cause} {_HINT}"
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {' '.join(str(exc).split())} {_HINT}"
    text = " ".join(str(exc).split())
    where = _where(exc)
    return f"{type(exc).__name__}: {text}" + (f" ({where})" if where else "") + f" {_HINT}"
