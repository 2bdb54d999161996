"""flask_ampalibe: Facebook Messenger bots as a Flask extension, with Ampalibe's programming model.

The spec's way::

    import flask_ampalibe as ampalibe
    from conf import Configuration

    bot = ampalibe.init(Configuration())

    @ampalibe.command('/')
    def main(sender_id, cmd, **extends):
        bot.chat.send_message(sender_id, "Hello, Ampalibe")

The Flask way: ``Ampalibe(app)`` or ``app.register_blueprint(ampalibe.bp)``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import constant
from .aio import offload
from .blueprint import bp
from .compat import Logger, download_file
from .constant import (
    Action, Content_type, Filetype, Messaging_type, Notification_cta_text, Notification_frequency,
    Notification_reoptin, Notification_type, Tag, Type,
)
from .errors import (
    AmpalibeError, ConfigurationError, GraphError, GraphTimeout, LimitError, PayloadError, RoutingError,
)
from .config import Settings
from .context import current_state, default_router, set_default_router
from .extension import Ampalibe, default_app, init
from .i18n import translate
from .model import Model
from .payload import Payload
from .router import Cmd, Router
from .scheduler import schedule
from .signature import generate_signature, verify_signature
from .state import Bot
from .ui import Button, Element, QuickReply
from .version import __version__

if TYPE_CHECKING:
    # Served by __getattr__ below: importing it here would pull in requests at every
    # ``import flask_ampalibe`` (and so at every ``flask`` command, through the CLI plugin).
    from .messenger import Messenger

__all__ = [
    "Action", "Content_type", "Filetype", "Logger", "Messaging_type", "Notification_cta_text",
    "Notification_frequency", "Notification_reoptin", "Notification_type", "Tag", "Type", "constant",
    "download_file",
    "Ampalibe", "AmpalibeError", "Bot", "Button", "Cmd", "ConfigurationError", "Element", "GraphError",
    "GraphTimeout", "LimitError", "Messenger", "Model", "Payload", "PayloadError", "QuickReply", "Router",
    "RoutingError", "Settings", "action", "after_receive", "before_receive",
    "bp", "celery_app", "command", "crontab", "current_state", "event", "generate_signature", "init", "offload",
    "on_error", "schedule",
    "default_router", "set_default_router", "translate", "verify_signature", "webserver",
]

F = TypeVar("F", bound=Callable[..., Any])


def command(name: str) -> Callable[[F], F]:
    """Register the decorated function as the handler of command ``name`` (returns it unchanged).

    The first word of a message or payload selects the command; it is removed from ``cmd``.
    ``'/'`` is the main command, which gets every message nothing else handles.
    """
    return default_router().command(name)


def action(name: str) -> Callable[[F], F]:
    """Register the decorated function for the action ``name`` set with ``query.set_action``."""
    return default_router().action(name)


def event(kind: str) -> Callable[[F], F]:
    """Register the decorated function for webhook events of ``kind`` (``read``, ``delivery``, …)."""
    return default_router().event(kind)


def before_receive(func: F | None = None) -> Any:
    """Run ``func`` before each event's handler; returning ``False`` stops the event.

    Usable bare (``@ampalibe.before_receive``) or called (``@ampalibe.before_receive()``, as in
    later Ampalibe releases).
    """
    return default_router().before_receive(func)


def after_receive(func: F | None = None) -> Any:
    """Run ``func`` after each event's handler, with ``result`` and ``error`` (bare or called)."""
    return default_router().after_receive(func)


#: Later Ampalibe releases name the scheduler ``crontab``.
crontab = schedule


def on_error(func: F | None = None) -> Any:
    """Run ``func(error=…, sender_id=…, message=…)`` when a handler raises (bare or called)."""
    return default_router().on_error(func)


def celery_app(app: Any = None) -> Any:
    """The Celery app of ``app`` (default: the bot :func:`init` set up) with ``AMPALIBE_EXECUTOR=celery``.

    For ``celery -A module worker``; see :func:`flask_ampalibe.celery_executor.celery_app`.
    """
    from .celery_executor import celery_app as find

    return find(app)


def __getattr__(name: str) -> Any:
    # ``webserver`` is the default Flask app, created on first access, never at import.
    if name == "webserver":
        return default_app()
    if name == "Messenger":
        from .messenger import Messenger
        return Messenger
    raise AttributeError(f"module 'flask_ampalibe' has no attribute {name!r}")
