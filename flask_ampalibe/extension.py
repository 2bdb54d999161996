"""The Flask layer: :class:`Ampalibe` (``init_app``), the default app, and the spec's ``init``.

Two ways in reach the same machinery:

- the spec's way: ``bot = ampalibe.init(Configuration())`` configures a default Flask app,
  ``ampalibe.webserver``, and registers the webhook Blueprint on it;
- the Flask way: ``Ampalibe(app)`` / ``Ampalibe().init_app(app)``, or
  ``app.register_blueprint(ampalibe.bp)``, configured by ``AMPALIBE_*`` keys.

All per-app state lives in ``app.extensions["ampalibe"]`` (an
:class:`~flask_ampalibe.state.AmpalibeState`, built by :func:`flask_ampalibe.state.set_up`); the
extension object keeps no reference to any app.
"""
from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from flask import Flask

from .blueprint import bp
from .compat import Webserver
from .config import Settings, project_dir
from .context import (
    current_state, default_lock, default_router, get_default_app, set_default_app, set_default_router,
)
from .errors import ConfigurationError
from .model import Model
from .router import Router
from .scheduler import schedule
from .state import AmpalibeState, Bot, set_up

# AmpalibeState, Bot, current_state, default_router and set_default_router live in .state and
# .context (which the components use without importing this module); they are named here too
# because this module is where a reader of ``Ampalibe`` looks for them.
__all__ = ["Ampalibe", "AmpalibeState", "Bot", "init", "default_app", "default_router", "set_default_router",
           "current_state", "reset_default"]

F = TypeVar("F", bound=Callable[..., Any])

class Ampalibe:
    """The Flask extension.

    :param app: the app to set up now (or call :meth:`init_app` later, once per app).
    :param router: where this extension's handlers, middleware and jobs are registered; by
        default a new :class:`Router` of its own, so two apps of one process never share
        handlers by accident.  Pass one to share it deliberately (e.g.
        ``Ampalibe(app, router=flask_ampalibe.default_router())`` for the handlers of the
        module-level ``@ampalibe.command``).

    Every app set up by this object (:meth:`init_app` may be called for several) uses its router.
    The decorators (:meth:`command`, :meth:`action`, :meth:`event`, :meth:`before_receive`,
    :meth:`after_receive`, :meth:`on_error`, :meth:`schedule`) are those of the module level,
    registering on this router and returning the function unchanged.

    Example::

        app = Flask(__name__)
        app.config.update(AMPALIBE_ACCESS_TOKEN=..., AMPALIBE_VERIF_TOKEN=..., AMPALIBE_APP_SECRET=...)
        bot = Ampalibe(app)

        @bot.command("/")
        def main(sender_id, cmd, **extends):
            bot.chat.send_message(sender_id, "Hello")
    """

    def __init__(self, app: Flask | None = None, router: Router | None = None) -> None:
        self._router = router if router is not None else Router()
        if app is not None:
            self.init_app(app)

    @property
    def router(self) -> Router:
        """The router handlers are registered on."""
        return self._router

    def init_app(self, app: Flask, register_blueprint: bool = True, *, settings: Settings | None = None) -> None:
        """Read ``AMPALIBE_*`` config, set up the store, client and executor, register the Blueprint.

        :param settings: the app's settings, when built already (see :meth:`Settings.load`);
            by default they are read from ``app.config``, and only from there.
        :raises RuntimeError: if the app already has the extension.
        :raises ConfigurationError: a setting that cannot be used, or production mode without
            ``AMPALIBE_APP_SECRET``.
        """
        url_prefix = set_up(app, self.router, settings).settings.url_prefix
        if register_blueprint and "ampalibe" not in app.blueprints:
            app.register_blueprint(bp, url_prefix=url_prefix or None)

    # -- decorators on this extension's router -------------------------------------------------
    def command(self, name: str) -> Callable[[F], F]:
        """See :meth:`Router.command`."""
        return self.router.command(name)

    def action(self, name: str) -> Callable[[F], F]:
        """See :meth:`Router.action`."""
        return self.router.action(name)

    def event(self, kind: str) -> Callable[[F], F]:
        """See :meth:`Router.event`."""
        return self.router.event(kind)

    def before_receive(self, func: F | None = None) -> Any:
        """Middleware run before each event's handler; returning ``False`` stops the event.
        Bare (``@bot.before_receive``) or called (``@bot.before_receive()``); see :meth:`Router.before_receive`."""
        return self.router.before_receive(func)

    def after_receive(self, func: F | None = None) -> Any:
        """Middleware run after each event's handler, with ``result`` and ``error`` (bare or called)."""
        return self.router.after_receive(func)

    def on_error(self, func: F | None = None) -> Any:
        """Run ``func(error=…, sender_id=…, message=…)`` when a handler raises (bare or called)."""
        return self.router.on_error(func)

    def schedule(self, cron: str, name: str | None = None, **options: Any) -> Any:
        """Run the decorated function on ``cron`` for the apps of this extension only; the
        options are those of :func:`flask_ampalibe.schedule` (``tz``, ``grace``, ``start``,
        ``args``, ``func``), the job is kept on :attr:`router`.

        Example::

            @bot.schedule("0 9 * * *", tz="Europe/Paris")
            def morning(when):
                ...
        """
        return schedule(cron, name, router=self.router, **options)

    #: Later Ampalibe releases name the scheduler ``crontab``.
    crontab = schedule

    # -- the current app's objects ---------------------------------------------------------------
    @property
    def chat(self) -> Any:
        """The current app's Messenger client."""
        return current_state().chat

    @property
    def query(self) -> Model:
        """The current app's user-state :class:`Model`."""
        return current_state().query


def default_app() -> Flask:
    """The Flask app of spec-style projects (``ampalibe.webserver``), created on first use."""
    with default_lock:
        app = get_default_app()
        if app is None:
            # FastAPI-style paths of Ampalibe 1.1.9's custom endpoints
            app = Webserver("ampalibe_bot", root_path=os.getcwd())
            set_default_app(app)
        return app


def reset_default() -> None:
    """Forget the default app and give the module-level decorators a fresh router (for tests)."""
    with default_lock:
        app = get_default_app()
        if app is not None and "ampalibe" in app.extensions:
            app.extensions["ampalibe"].shutdown(timeout=5)
        set_default_app(None)
        set_default_router(Router())


def init(conf: Any = None) -> Bot:
    """Configure the bot from the spec's ``Configuration`` and return it (``bot.chat``, ``bot.query``).

    Calling it again (from several modules of one project) returns the same bot.
    ``AMPALIBE_*`` environment variables fill settings the ``Configuration`` leaves unset (the
    order is that of :meth:`flask_ampalibe.config.Settings.load`).
    Without ``conf`` (Ampalibe 1.1.9's ``ampalibe.init()`` took none), the ``Configuration``
    of the project's ``conf`` module is used.
    """
    with default_lock:
        app = default_app()
        state = app.extensions.get("ampalibe")
        if state is not None:
            return state.bot
        if conf is None:
            import importlib

            try:
                conf = importlib.import_module("conf").Configuration
            except (ImportError, AttributeError):
                raise ConfigurationError(
                    "ampalibe.init() found no conf.py with a Configuration class next to core.py; "
                    "pass one: ampalibe.init(Configuration())."
                ) from None
        app.root_path = project_dir(conf)
        settings = Settings.load(app.config, conf, os.environ)
        # The default app answers with the module-level decorators' handlers, registered before
        # or after this call (they all land on this one Router).
        Ampalibe(router=default_router()).init_app(app, settings=settings)
        return app.extensions["ampalibe"].bot
