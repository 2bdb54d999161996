"""The Flask layer: :class:`Ampalibe` (``init_app``), the per-app state, and the spec's ``init``.

Two ways in reach the same machinery:

- the spec's way: ``bot = ampalibe.init(Configuration())`` configures a default Flask app,
  ``ampalibe.webserver``, and registers the webhook Blueprint on it;
- the Flask way: ``Ampalibe(app)`` / ``Ampalibe().init_app(app)``, or
  ``app.register_blueprint(ampalibe.bp)``, configured by ``AMPALIBE_*`` keys.

All per-app state lives in ``app.extensions["ampalibe"]`` (an :class:`AmpalibeState`); the
extension object keeps no reference to any app.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from flask import Flask, current_app, has_app_context
from sqlalchemy.exc import SQLAlchemyError

from . import pagination
from . import payload as payload_module
from .config import DEFAULTS, PREFIX, PROJECT_ENV, from_configuration, payload_secret, project_dir, settings
from .dberrors import is_unavailable, outage_for
from .dispatch import Dispatcher
from .engine import make_engine
from .errors import ConfigurationError
from .executor import Executor, make_executor
from .inbox import Inbox
from .internal import InternalCommands
from .model import Model
from .payload import PayloadCodec
from .router import Router
from .storage import Store
from .webhook import Webhook

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["Ampalibe", "AmpalibeState", "Bot", "init", "default_app", "default_router", "set_default_router",
           "current_state", "reset_default"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Settings :func:`init` takes from these environment variables when the Configuration has none.
_AMP_ENV = {"APP_SECRET": "AMP_APP_SECRET", "ALLOW_UNSIGNED": "AMP_ALLOW_UNSIGNED", "GRAPH_URL": "AMP_GRAPH_URL",
            "GRAPH_VERSION": "AMP_GRAPH_VERSION", "APP_URL": "AMP_URL"}

_default_router = Router()
_default_app: Flask | None = None
_default_lock = threading.RLock()


class Bot:
    """What :func:`init` returns: the spec's ``bot`` with ``.chat`` and ``.query``."""

    def __init__(self, state: "AmpalibeState") -> None:
        self.state = state
        self.app = state.app
        self.chat = state.chat
        self.query = state.query
        self.inbox = state.inbox

    def __repr__(self) -> str:
        return f"<Bot of {self.app.name!r}>"


class AmpalibeState:
    """Everything one app's bot needs: settings, store, inbox, Messenger client, executor, webhook core."""

    #: The scheduler of the ``@schedule`` jobs, made on first use by :func:`~flask_ampalibe.scheduler.scheduler_for`.
    scheduler: Scheduler | None = None

    def __init__(self, app: Flask, router: Router) -> None:
        from .messenger import Messenger  # the client pulls in requests; import when an app is set up

        self.app = app
        self.router = router
        self.settings = settings(app.config)
        url = self.settings["DATABASE_URL"]
        if not url:
            os.makedirs(app.instance_path, exist_ok=True)
            url = f"sqlite:///{os.path.join(app.instance_path, 'ampalibe.db')}"
        self.database_url = url
        self.store = Store(make_engine(url))
        #: Whether the database is reachable, as this process last saw it (see flask_ampalibe.dberrors).
        self.outage = outage_for(self.store.engine)
        self.inbox = Inbox(self.store)
        self.codec = PayloadCodec(payload_secret(self.settings))
        self.chat = Messenger(
            self.settings["ACCESS_TOKEN"] or "",
            graph_url=self.settings["GRAPH_URL"],
            graph_version=self.settings["GRAPH_VERSION"],
            app_secret=self.settings["APP_SECRET"],
            timeout=self.settings["HTTP_TIMEOUT"],
            pages=self.store,
            payload_encoder=self.codec.encode,
            # every handler in flight may be sending: one kept-alive connection each
            pool_maxsize=self.settings["MAX_CONCURRENCY"],
        )
        #: The library's own commands, run before routing (flask_ampalibe.internal).
        self.internal = InternalCommands()
        self.internal.register(pagination.PAGE_COMMAND, functools.partial(pagination.next_page, self.chat))
        self.query = Model(store=self.store)
        self.executor: Executor = make_executor(
            self.settings["EXECUTOR"], self.inbox, Dispatcher(self),
            threads=self.settings["MAX_CONCURRENCY"], lease_seconds=self.settings["LEASE_SECONDS"],
            poll_seconds=self.settings["POLL_SECONDS"], retention_seconds=self.settings["RETENTION_DAYS"] * 86400,
            broker_url=self.settings["CELERY_BROKER_URL"], requeue_seconds=self.settings["CELERY_REQUEUE_SECONDS"],
        )
        # The webhook core gets what it uses; ``notify`` looks the executor up at each call.
        self.webhook = Webhook(self.inbox.record, self._notify, secret=self.settings["APP_SECRET"],
                               wants=router.wants, outage=self.outage)
        self.bot = Bot(self)

    def _notify(self, users: Iterable[str]) -> None:
        self.executor.notify(users)

    def start(self) -> None:
        """Start this process's background work: the executor's threads and, if the bot has
        ``@schedule`` jobs, the scheduler thread (idempotent; gunicorn's ``post_worker_init``).

        :raises SchemaError: the database's tables are behind this release (run ``ampalibe db
            upgrade``) or ahead of it.
        """
        from .scheduler import scheduler_for

        # The schema check (and the tables of an empty database) before any work starts:
        # a database behind or ahead of this release stops the worker with a one-line SchemaError.
        try:
            self.store.ensure()
        except SQLAlchemyError as exc:  # down for now: the executor retries, the webhook answers 503
            if not is_unavailable(exc):
                raise
            self.outage.failed_at_start(exc)
        self.executor.start()
        scheduler_for(self).start()

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop taking work; wait up to ``timeout`` seconds for running handlers and jobs.

        :returns: whether everything running finished in time.
        """
        deadline = time.monotonic() + timeout
        finished = self.executor.shutdown(timeout)
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop(max(0.0, deadline - time.monotonic()))
        counters = getattr(self, "counters", None)  # the dashboard's, when it is on
        if counters is not None:
            counters.close()
        return bool(finished) if finished is not None else True


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

    def init_app(self, app: Flask, register_blueprint: bool = True) -> None:
        """Read ``AMPALIBE_*`` config, set up the store, client and executor, register the Blueprint.

        :raises RuntimeError: if the app already has the extension.
        :raises ConfigurationError: in production mode without ``AMPALIBE_APP_SECRET``.
        """
        if "ampalibe" in app.extensions:
            if getattr(app.extensions["ampalibe"], "set_up_by_blueprint", False):
                raise RuntimeError(
                    "flask_ampalibe is already set up on this app by app.register_blueprint(ampalibe.bp); "
                    "use either that or Ampalibe(app) (which registers the blueprint itself), not both, "
                    "once per app."
                )
            raise RuntimeError("flask_ampalibe is already set up on this app; call Ampalibe(app) once per app.")
        for key, value in DEFAULTS.items():
            app.config.setdefault(PREFIX + key, value)
        values = settings(app.config)
        if not values["APP_SECRET"]:
            if values["ALLOW_UNSIGNED"] or app.debug or app.testing:
                logger.warning("no app secret (AMP_APP_SECRET in .env, AMPALIBE_APP_SECRET in Flask config): "
                               "webhook signatures are NOT checked")
            else:
                raise ConfigurationError(
                    "AMPALIBE_APP_SECRET is not set, so anyone could post fake messages to the webhook. "
                    "Set it to the Facebook app's secret (AMP_APP_SECRET in .env), or set "
                    "AMPALIBE_ALLOW_UNSIGNED=1 (AMP_ALLOW_UNSIGNED=1) to accept unsigned posts knowingly."
                )
        if not values["VERIF_TOKEN"]:
            logger.warning("no verify token (AMP_VERIF_TOKEN in .env, AMPALIBE_VERIF_TOKEN in Flask config): "
                           "Facebook cannot verify the webhook")
        app.extensions["ampalibe"] = AmpalibeState(app, self.router)
        if register_blueprint and "ampalibe" not in app.blueprints:
            from .blueprint import bp
            app.register_blueprint(bp, url_prefix=values["URL_PREFIX"] or None)
        from .dashboard import init_dashboard
        init_dashboard(app, app.extensions["ampalibe"])

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
        from .scheduler import schedule

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


def current_state() -> AmpalibeState:
    """The state of the current app, else of the app :func:`init` configured."""
    if has_app_context() and "ampalibe" in current_app.extensions:
        return current_app.extensions["ampalibe"]
    if _default_app is not None and "ampalibe" in _default_app.extensions:
        return _default_app.extensions["ampalibe"]
    raise ConfigurationError("No bot is configured: call ampalibe.init(Configuration()) or Ampalibe(app) first.")


def _find_codec() -> PayloadCodec | None:
    try:
        return current_state().codec
    except ConfigurationError:
        return None


payload_module.set_codec_finder(_find_codec)


def default_router() -> Router:
    """The router the module-level decorators (``@ampalibe.command``) register on."""
    return _default_router


def set_default_router(router: Router) -> Router:
    """Replace the module-level router (tests do this); returns the previous one."""
    global _default_router
    old, _default_router = _default_router, router
    return old


def default_app() -> Flask:
    """The Flask app of spec-style projects (``ampalibe.webserver``), created on first use."""
    global _default_app
    with _default_lock:
        if _default_app is None:
            from .compat import Webserver  # FastAPI-style paths of Ampalibe 1.1.9's custom endpoints

            _default_app = Webserver("ampalibe_bot", root_path=os.getcwd())
        return _default_app


def reset_default() -> None:
    """Forget the default app and give the module-level decorators a fresh router (for tests)."""
    global _default_app
    with _default_lock:
        if _default_app is not None and "ampalibe" in _default_app.extensions:
            _default_app.extensions["ampalibe"].shutdown(timeout=5)
        _default_app = None
        set_default_router(Router())


def init(conf: Any = None) -> Bot:
    """Configure the bot from the spec's ``Configuration`` and return it (``bot.chat``, ``bot.query``).

    Calling it again (from several modules of one project) returns the same bot.
    ``AMPALIBE_*`` environment variables fill settings the ``Configuration`` leaves unset.
    Without ``conf`` (Ampalibe 1.1.9's ``ampalibe.init()`` took none), the ``Configuration``
    of the project's ``conf`` module is used.
    """
    with _default_lock:
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
        base = project_dir(conf)
        app.root_path = base
        # What the Configuration has no value for comes from .env's names (AMP_APP_SECRET, ...):
        # Ampalibe 1.1.9's conf.py has no attribute for the app secret.
        for key, name in _AMP_ENV.items():
            if getattr(conf, key, None) in (None, "") and os.environ.get(name):
                app.config[PREFIX + key] = os.environ[name]
        for key in DEFAULTS:
            if PREFIX + key in os.environ:
                app.config[PREFIX + key] = os.environ[PREFIX + key]
        for key in PROJECT_ENV:  # AMP_EXECUTOR=celery in .env, for a conf.py that does not read it
            if os.environ.get("AMP_" + key):
                app.config[PREFIX + key] = os.environ["AMP_" + key]
        app.config.update(from_configuration(conf, base))
        app.config.setdefault(PREFIX + "DATABASE_URL", f"sqlite:///{os.path.join(base, 'ampalibe.db')}")
        # The default app answers with the module-level decorators' handlers, registered before
        # or after this call (they all land on this one Router).
        Ampalibe(app, router=_default_router)
        return app.extensions["ampalibe"].bot
