"""gunicorn settings suited to a flask_ampalibe bot.

``ampalibe run`` serves with these settings, and so does gunicorn itself when told::

    gunicorn -c python:flask_ampalibe.gunicorn_conf core:app

(run from the project folder; the skeleton's ``gunicorn.conf.py`` star-imports this module,
so a plain ``gunicorn core:app`` there picks the same settings up).

What they are and why:

- ``bind`` from ``AMP_HOST`` / ``AMP_PORT`` (default ``0.0.0.0:4555``) and ``workers`` from
  ``AMP_WORKERS`` (default 2), read from the environment, then from ``./.env``.
- ``worker_class = "gthread"`` with 8 ``threads``: a webhook request only records the events
  and answers 200, so 8 request threads suffice; bot handlers run afterwards in the library's
  executor (elastic threads, or the worker's event loop for ``async def`` bots, up to
  ``AMPALIBE_MAX_CONCURRENCY`` at once) and spend their time waiting on the network.  Threads and
  asyncio need no monkey-patching of the database drivers, unlike gevent/eventlet.
- ``graceful_timeout = 30``: on SIGTERM (or a ``HUP`` reload) a worker stops accepting
  requests and answers those in flight, then the ``worker_exit`` hook below gives the executor
  what is left of those 30 s to finish the handlers it is running.  Events it did not start
  stay recorded in the database and are handled by the next worker.
- ``worker_int`` (Ctrl-C / SIGQUIT, a quick shutdown) gives running handlers at most
  :data:`QUICK_SHUTDOWN_SECONDS`.
- Prometheus (when ``prometheus_client`` is installed): ``on_starting`` points
  ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary folder unless it is set, so the metrics
  endpoint adds up every worker's counts; ``child_exit`` tells prometheus_client a worker is gone,
  ``on_exit`` removes the folder it created.

Change any of them in the project's ``gunicorn.conf.py``, with gunicorn's own flags, or with
``GUNICORN_CMD_ARGS`` (``GUNICORN_CMD_ARGS="--threads 16" ampalibe run``).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Mapping, Protocol

from dotenv import dotenv_values

__all__ = [
    "bind", "workers", "worker_class", "threads", "timeout", "graceful_timeout", "proc_name",
    "post_worker_init", "worker_int", "worker_exit", "on_starting", "child_exit", "on_exit", "settings",
]

#: Seconds running handlers get when a worker is stopped quickly (SIGINT / SIGQUIT).
QUICK_SHUTDOWN_SECONDS = 5.0
#: Seconds of ``graceful_timeout`` kept back for the worker to exit after its executor stopped.
EXIT_MARGIN_SECONDS = 2.0

logger = logging.getLogger(__name__)


def project_environ(folder: str = ".") -> dict[str, str]:
    """The environment as the bot sees it: ``folder/.env`` values, overridden by real variables.

    Empty values count as unset, as in the scaffolded ``conf.py``.
    """
    values = {k: v for k, v in dotenv_values(os.path.join(folder, ".env")).items() if v}
    values.update((k, v) for k, v in os.environ.items() if v)
    return values


def bind_address(host: str, port: int | str) -> str:
    """``host:port`` as gunicorn's ``bind`` wants it (IPv6 addresses in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The gunicorn settings for the project in the current folder, hooks included.

    :param environ: where to read ``AMP_HOST``, ``AMP_PORT`` and ``AMP_WORKERS``; defaults to
        :func:`project_environ`.
    """
    env = project_environ() if environ is None else environ
    return {
        "bind": [bind_address(env.get("AMP_HOST") or "0.0.0.0", env.get("AMP_PORT") or 4555)],
        "workers": int(env.get("AMP_WORKERS") or 2),
        "worker_class": "gthread",
        "threads": 8,
        # gthread workers send their heartbeat from the main loop, so a slow request does
        # not trip this; it only catches a worker whose main loop hangs.
        "timeout": 30,
        "graceful_timeout": 30,
        "proc_name": "ampalibe",
        "post_worker_init": post_worker_init,
        "worker_int": worker_int,
        "worker_exit": worker_exit,
        "on_starting": on_starting,
        "child_exit": child_exit,
        "on_exit": on_exit,
        # gunicorn >= 25.1 opens a control socket at one path per user: two bots on one host
        # would take each other's.  The bot does not use it.
        **({"control_socket_disable": True} if _has_control_socket() else {}),
    }


def _has_control_socket() -> bool:
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return False
    return any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS)


class ServedBot(Protocol):
    """What the hooks use of a worker's bot (its :class:`~flask_ampalibe.state.AmpalibeState`):
    the process's background work, started and stopped."""

    def start(self) -> None: ...

    def stop_taking_work(self) -> None: ...

    def shutdown(self, timeout: float = 30.0) -> bool: ...


def _bot_of(worker: Any) -> ServedBot | None:
    """The bot (``app.extensions["ampalibe"]``) of the worker's app, or ``None``."""
    app = getattr(worker, "wsgi", None)
    for _ in range(5):  # unwrap WSGI middleware (ProxyFix and friends keep the app in .app)
        extensions = getattr(app, "extensions", None)
        if isinstance(extensions, dict):
            bot: ServedBot | None = extensions.get("ampalibe")
            return bot
        app = getattr(app, "app", None)
    return None


def _stop_executor(worker: Any, timeout: float) -> None:
    """Ask the executor of the worker's app to finish running handlers within ``timeout``."""
    if getattr(worker, "_ampalibe_stopped", False):
        return
    worker._ampalibe_stopped = True
    bot = _bot_of(worker)
    if bot is None:
        return
    log = getattr(worker, "log", logger)
    log.info("Waiting up to %.0f s for running bot handlers (pid %s)", timeout, os.getpid())
    try:
        bot.shutdown(timeout)
    except Exception:  # the worker is exiting anyway; say why the handlers may be cut short
        log.exception("Stopping the flask_ampalibe executor failed")


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: start the bot's executor, and note when SIGTERM arrives, so ``worker_exit``
    knows how much of ``graceful_timeout`` the arbiter still allows before it sends SIGKILL."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        if getattr(worker, "_ampalibe_stopping_since", None) is None:
            worker._ampalibe_stopping_since = time.monotonic()
            # Start no new handler while gunicorn finishes the requests in flight (up to 2 s
            # for kept-alive connections); worker_exit then waits for the running ones.
            bot = _bot_of(worker)
            if bot is not None:
                bot.stop_taking_work()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn does: let requests in flight finish
    # Start the executor now rather than on the first webhook: its sweeper takes over the
    # events a stopped or killed worker left behind, even when no new message arrives; and the
    # scheduler, so @schedule jobs run even on a bot nobody writes to.
    _show_library_logs(worker)
    bot = _bot_of(worker)
    if bot is not None:
        try:
            bot.start()
        except Exception as exc:
            from .schema import SchemaError

            if isinstance(exc, SchemaError):  # a database to upgrade: gunicorn prints this line and stops
                from gunicorn.errors import AppImportError

                raise AppImportError(f"Error: {exc}") from None
            raise


def _show_library_logs(worker: Any) -> None:
    """Send flask_ampalibe's log lines (events handled, database outages, handler errors) where
    gunicorn writes its own, at INFO, unless the app configured logging itself."""
    library = logging.getLogger("flask_ampalibe")
    if library.handlers or logging.getLogger().handlers:
        return
    handlers = getattr(getattr(getattr(worker, "log", None), "error_log", None), "handlers", None)
    if not handlers:
        return
    for handler in handlers:
        library.addHandler(handler)
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)


def worker_int(worker: Any) -> None:
    """gunicorn hook: a worker got SIGINT or SIGQUIT (quick shutdown)."""
    _stop_executor(worker, QUICK_SHUTDOWN_SECONDS)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: a worker stopped serving (graceful shutdown, reload, max_requests)."""
    graceful = float(getattr(getattr(worker, "cfg", None), "graceful_timeout", 30))
    since = getattr(worker, "_ampalibe_stopping_since", None)
    spent = time.monotonic() - since if since is not None else 0.0
    _stop_executor(worker, max(1.0, graceful - spent - EXIT_MARGIN_SECONDS))


# -- Prometheus multiprocess mode ---------------------------------------------------------------
_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
_created_dir: str | None = None


def on_starting(server: Any) -> None:
    """gunicorn hook (master, before the workers start): give prometheus_client a folder to
    share counts between workers, unless ``PROMETHEUS_MULTIPROC_DIR`` is set already."""
    global _created_dir
    if os.environ.get(_MULTIPROC) or os.environ.get(_MULTIPROC.lower()):
        return
    import importlib.util
    import tempfile

    # Not imported here: prometheus_client picks its mode when imported, and the workers inherit it.
    if importlib.util.find_spec("prometheus_client") is None:
        return

    _created_dir = tempfile.mkdtemp(prefix="ampalibe-prometheus-")
    os.environ[_MULTIPROC] = _created_dir


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (master): a worker is gone; its live gauges no longer count (its counters do)."""
    if not (os.environ.get(_MULTIPROC) or os.environ.get(_MULTIPROC.lower())):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """gunicorn hook (master, last): remove the folder :func:`on_starting` created."""
    global _created_dir
    if _created_dir is not None:
        import shutil

        shutil.rmtree(_created_dir, ignore_errors=True)
        if os.environ.get(_MULTIPROC) == _created_dir:
            del os.environ[_MULTIPROC]
        _created_dir = None


_defaults = settings()
bind = _defaults["bind"]
workers = _defaults["workers"]
worker_class = _defaults["worker_class"]
threads = _defaults["threads"]
timeout = _defaults["timeout"]
graceful_timeout = _defaults["graceful_timeout"]
proc_name = _defaults["proc_name"]
if "control_socket_disable" in _defaults:
    control_socket_disable = True
    # In __all__ too: the project's gunicorn.conf.py star-imports this module.
    __all__.append("control_socket_disable")
del _defaults
