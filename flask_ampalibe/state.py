"""The per-app state (:class:`AmpalibeState`, in ``app.extensions["ampalibe"]``) and how an app gets it.

:func:`set_up` builds one app's components (store, inbox, payload codec, Messenger client,
internal commands, dispatcher, executor, webhook core, dashboard) and hands each the few
objects it uses.  Both ways in call it: :meth:`flask_ampalibe.Ampalibe.init_app` and the
Blueprint registered on its own (``app.register_blueprint(ampalibe.bp)``).
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import TYPE_CHECKING, Iterable

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from . import pagination
from . import payload as payload_module
from .config import Settings, payload_secret
from .context import current_state
from .dashboard import init_dashboard
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
from .scheduler import scheduler_for
from .storage import Store
from .webhook import Webhook

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["AmpalibeState", "Bot", "set_up"]

logger = logging.getLogger(__name__)


class Bot:
    """What :func:`~flask_ampalibe.init` returns: the spec's ``bot`` with ``.chat`` and ``.query``."""

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
    #: Whether ``app.register_blueprint(ampalibe.bp)`` set this app up (not ``Ampalibe(app)``).
    set_up_by_blueprint: bool = False

    def __init__(self, app: Flask, router: Router, settings: Settings) -> None:
        from .messenger import Messenger  # the client pulls in requests; import when an app is set up

        self.app = app
        self.router = router
        #: The app's :class:`~flask_ampalibe.config.Settings` (frozen; ``app.config`` has the same values).
        self.settings = settings
        url = settings.database_url
        if not url:
            os.makedirs(app.instance_path, exist_ok=True)
            url = f"sqlite:///{os.path.join(app.instance_path, 'ampalibe.db')}"
        self.database_url = url
        self.store = Store(make_engine(url, pool_size=settings.db_pool_size))
        #: Whether the database is reachable, as this process last saw it (see flask_ampalibe.dberrors).
        self.outage = outage_for(self.store.engine)
        self.inbox = Inbox(self.store, webhook_engine=make_engine(url, webhook=True),
                           journal=settings.webhook_journal)
        self.codec = PayloadCodec(payload_secret(self.settings))
        self.chat = Messenger(
            settings.access_token or "",
            graph_url=settings.graph_url,
            graph_version=settings.graph_version,
            app_secret=settings.app_secret,
            timeout=settings.http_timeout,
            pages=self.store,
            payload_encoder=self.codec.encode,
            # every handler in flight may be sending: one kept-alive connection each
            pool_maxsize=settings.max_concurrency,
        )
        #: The library's own commands, run before routing (flask_ampalibe.internal).
        self.internal = InternalCommands()
        self.internal.register(pagination.PAGE_COMMAND, functools.partial(pagination.next_page, self.chat))
        self.query = Model(store=self.store)
        #: Runs each recorded event: gets the objects it uses, not this state.
        self.dispatcher = Dispatcher(router, self.store, self.codec, self.internal, app.app_context)
        # a Celery worker runs the @schedule jobs too
        self.executor: Executor = make_executor(self.inbox, self.dispatcher, settings, on_worker_ready=self.start)
        # The webhook core gets what it uses; ``notify`` looks the executor up at each call.
        self.webhook = Webhook(self.inbox.record, self._notify, secret=settings.app_secret,
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

    def stop_taking_work(self) -> None:
        """Start no new handler from now on (gunicorn's SIGTERM); the running ones go on, and
        :meth:`shutdown` waits for them."""
        self.executor.stopping.set()

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


def set_up(app: Flask, router: Router, settings: Settings | None = None) -> AmpalibeState:
    """Build ``app``'s state on ``router`` and the dashboard; the caller registers the Blueprint.

    :param settings: the app's settings (:func:`~flask_ampalibe.init` builds them from its
        ``Configuration`` and the environment); by default :meth:`Settings.load` of
        ``app.config``.  Either way ``app.config`` gets every ``AMPALIBE_*`` key it lacks.

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
    if settings is None:
        settings = Settings.load(app.config)
    for key, value in settings.as_config().items():
        app.config.setdefault(key, value)
    if not settings.app_secret:
        if settings.allow_unsigned or app.debug or app.testing:
            logger.warning("no app secret (AMP_APP_SECRET in .env, AMPALIBE_APP_SECRET in Flask config): "
                           "webhook signatures are NOT checked")
        else:
            raise ConfigurationError(
                "AMPALIBE_APP_SECRET is not set, so anyone could post fake messages to the webhook. "
                "Set it to the Facebook app's secret (AMP_APP_SECRET in .env), or set "
                "AMPALIBE_ALLOW_UNSIGNED=1 (AMP_ALLOW_UNSIGNED=1) to accept unsigned posts knowingly."
            )
    if not settings.verif_token:
        logger.warning("no verify token (AMP_VERIF_TOKEN in .env, AMPALIBE_VERIF_TOKEN in Flask config): "
                       "Facebook cannot verify the webhook")
    state = app.extensions["ampalibe"] = AmpalibeState(app, router, settings)
    init_dashboard(app, state)
    return state


def _find_codec() -> PayloadCodec | None:
    try:
        return current_state().codec
    except ConfigurationError:
        return None


payload_module.set_codec_finder(_find_codec)
