"""The Router: which handler gets an event.  Deciding (:meth:`Router.resolve`) is kept apart
from running (:func:`call_handler`), and nothing here imports Flask.

Routing follows Ampalibe: every message, quick reply, postback or attachment is a *command*.
The first word of the text (or payload) selects a ``@command``; that word is removed from
``cmd``.  Otherwise a pending action (``query.set_action``) gets the whole text, and failing
that the ``'/'`` command does.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from .errors import RoutingError
from .events import Event
from .payload import PayloadCodec

__all__ = ["Router", "Cmd", "Match", "call_handler", "EVENT_KINDS"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Kinds accepted by :meth:`Router.event`.
EVENT_KINDS = frozenset({
    "message", "postback", "read", "delivery", "reaction", "optin", "referral", "echo", "standby",
    "pass_thread_control", "take_thread_control", "request_thread_control", "app_roles",
    "account_linking", "policy_enforcement", "message_edit",
})
_MAIN = "/"


class Cmd(str):
    """The ``cmd`` a handler receives: a ``str`` that also carries the message's attachments.

    For an attachment message ``cmd`` is the first attachment's URL and ``cmd.attachments``
    lists every URL of that message.
    """

    attachments: list[str]

    def __new__(cls, value: str = "", attachments: list[str] | None = None) -> "Cmd":
        self = super().__new__(cls, value)
        self.attachments = list(attachments or ())
        return self


@dataclass
class Match:
    """What :meth:`Router.resolve` decided for one message or postback."""

    handler: Callable[..., Any]
    route: str
    kind: str  # "command" or "action"
    cmd: Cmd
    args: dict[str, Any] = field(default_factory=dict)
    clear_action: bool = False


class Router:
    """Holds commands, actions, event handlers and middleware.

    Decorators return the function unchanged, so handlers stay ordinary functions (also inside
    a class body).  Registering the same command or action twice raises :class:`RoutingError`.
    """

    def __init__(self) -> None:
        self.commands: dict[str, Callable[..., Any]] = {}
        self.actions: dict[str, Callable[..., Any]] = {}
        self.events: dict[str, list[Callable[..., Any]]] = {}
        self.before: list[Callable[..., Any]] = []
        self.after: list[Callable[..., Any]] = []
        self.error_handlers: list[Callable[..., Any]] = []

    # -- registration ---------------------------------------------------------------------
    def command(self, name: str) -> Callable[[F], F]:
        """Register the decorated function as the handler of command ``name`` (e.g. ``'/eat'``)."""
        return self._register(self.commands, "command", name)

    def action(self, name: str) -> Callable[[F], F]:
        """Register the decorated function as the handler of the pending action ``name``."""
        return self._register(self.actions, "action", name)

    def event(self, kind: str) -> Callable[[F], F]:
        """Register the decorated function for webhook events of ``kind`` (``read``, ``delivery``, …)."""
        if kind not in EVENT_KINDS:
            raise RoutingError(f"@event({kind!r}): unknown kind; use one of {', '.join(sorted(EVENT_KINDS))}.")

        def deco(func: F) -> F:
            self.events.setdefault(kind, []).append(func)
            return func
        return deco

    def before_receive(self, func: F) -> F:
        """Run ``func(sender_id=…, message=…, event=…)`` before each event; returning ``False`` stops it."""
        self.before.append(func)
        return func

    def after_receive(self, func: F) -> F:
        """Run ``func(sender_id=…, result=…, error=…, …)`` after each event's handler."""
        self.after.append(func)
        return func

    def on_error(self, func: F) -> F:
        """Run ``func(error=…, sender_id=…, message=…, event=…)`` when a handler raises."""
        self.error_handlers.append(func)
        return func

    def _register(self, table: dict[str, Callable[..., Any]], what: str, name: str) -> Callable[[F], F]:
        if not isinstance(name, str) or not name.strip() or name.split()[0] != name:
            raise RoutingError(f"@{what}({name!r}): the name must be one word without spaces, e.g. '/eat'.")

        def deco(func: F) -> F:
            old = table.get(name)
            if old is not None and old is not func and _qualname(old) != _qualname(func):
                raise RoutingError(
                    f"@{what}({name!r}) is already handled by {_qualname(old)}; "
                    f"{_qualname(func)} cannot handle it too. Rename one of them."
                )
            table[name] = func  # re-registering the same function (module re-imported) replaces it
            return func
        return deco

    # -- resolution -----------------------------------------------------------------------
    def wants(self, event: Event) -> bool:
        """Whether anything here handles ``event`` (events nobody handles are not recorded)."""
        if event.standby:
            return "standby" in self.events
        if event.kind in ("message", "postback"):
            return bool(self.commands or self.actions or self.events.get(event.kind))
        return bool(self.events.get(event.kind))

    def resolve(self, event: Event, action: str | None, action_args: dict[str, Any] | None,
                codec: PayloadCodec | None) -> Match | None:
        """Pick the handler of a ``message`` or ``postback`` event.

        :param action: the user's pending action, if any.
        :param codec: decodes signed payloads; ``None`` treats every text as plain.
        :returns: ``None`` when nothing handles it (no command matched, no action, no ``'/'``).
        """
        text, attachments = command_input(event)
        decoded = codec.decode(text) if codec is not None else None
        if decoded is not None:
            route, args = decoded
            handler = self.commands.get(route)
            if handler is not None:
                return Match(handler, route, "command", Cmd("", attachments), dict(args), clear_action=bool(action))
            text = route
        else:
            args = {}
            words = text.split(maxsplit=1)
            if words and words[0] in self.commands:
                route = words[0]
                rest = words[1] if len(words) > 1 else ""
                return Match(self.commands[route], route, "command", Cmd(rest, attachments), {},
                             clear_action=bool(action))
        if action and action in self.actions:
            merged = dict(action_args or {})
            merged.update(args)
            return Match(self.actions[action], action, "action", Cmd(text, attachments), merged)
        if action:
            logger.warning("pending action %r has no @action handler; falling back to the '/' command", action)
        if _MAIN in self.commands:
            return Match(self.commands[_MAIN], _MAIN, "command", Cmd(text, attachments), args)
        return None


def command_input(event: Event) -> tuple[str, list[str]]:
    """The text a message or postback routes on, and its attachment URLs."""
    raw = event.raw
    if event.kind == "postback":
        body = raw.get("postback") if isinstance(raw.get("postback"), dict) else {}
        return str(body.get("payload") or ""), []
    message = raw.get("message") if isinstance(raw.get("message"), dict) else {}
    urls = []
    for attachment in message.get("attachments") or ():
        if isinstance(attachment, dict):
            url = (attachment.get("payload") or {}).get("url") if isinstance(attachment.get("payload"), dict) else None
            if url:
                urls.append(str(url))
    quick = message.get("quick_reply")
    if isinstance(quick, dict) and quick.get("payload") is not None:
        return str(quick["payload"]), urls
    if message.get("text") is not None:
        return str(message["text"]), urls
    return (urls[0] if urls else ""), urls


_SIGNATURES: dict[Callable[..., Any], tuple[bool, frozenset[str]]] = {}


def call_handler(func: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``func`` with the keyword arguments it accepts.

    A handler with ``**extends`` gets everything; one without gets only what it names, so a
    handler may leave out ``cmd`` (``def login(sender_id, **extends)``) or even ``**extends``.
    """
    info = _SIGNATURES.get(func)
    if info is None:
        params = inspect.signature(func).parameters.values()
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        info = _SIGNATURES[func] = (takes_all, names)
    takes_all, names = info
    if takes_all:
        return func(**kwargs)
    return func(**{k: v for k, v in kwargs.items() if k in names})


def _qualname(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
