"""Which app's bot is current: the app context's, else the default app's.

The library's functions that work without an app argument (``translate``, ``Model()``,
``Messenger()`` without a token, ``start_scheduler()``, ``celery_app()``, the module-level
decorators) look the bot up here, so
any of them may use it without importing :mod:`flask_ampalibe.extension`, which imports them
(it imports only :mod:`~flask_ampalibe.errors` and :mod:`~flask_ampalibe.router`).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from flask import Flask, current_app, has_app_context

from .errors import ConfigurationError
from .router import Router

if TYPE_CHECKING:
    from .state import AmpalibeState

__all__ = ["current_state", "default_router", "set_default_router", "get_default_app", "set_default_app",
           "default_lock"]

_default_router = Router()
_default_app: Flask | None = None
#: Held while the default app is created or configured (``default_app``, ``init``, ``reset_default``).
default_lock = threading.RLock()


def current_state() -> AmpalibeState:
    """The state of the current app, else of the app :func:`~flask_ampalibe.init` configured.

    :raises ConfigurationError: no bot is configured.
    """
    if has_app_context() and "ampalibe" in current_app.extensions:
        return current_app.extensions["ampalibe"]
    if _default_app is not None and "ampalibe" in _default_app.extensions:
        return _default_app.extensions["ampalibe"]
    raise ConfigurationError("No bot is configured: call ampalibe.init(Configuration()) or Ampalibe(app) first.")


def default_router() -> Router:
    """The router the module-level decorators (``@ampalibe.command``) register on."""
    return _default_router


def set_default_router(router: Router) -> Router:
    """Replace the module-level router (tests do this); returns the previous one."""
    global _default_router
    old, _default_router = _default_router, router
    return old


def get_default_app() -> Flask | None:
    """The default app if :func:`~flask_ampalibe.extension.default_app` made one, else ``None``."""
    return _default_app


def set_default_app(app: Flask | None) -> None:
    """Make ``app`` the default app (``None`` forgets it); hold :data:`default_lock`."""
    global _default_app
    _default_app = app
