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
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .errors import RoutingError
from .events import Event
from .payload import PayloadCodec

if TYPE_CHECKING:
    from .scheduler import Job

__all__ = ["Router", "Cmd", "Match", "call_handler", "event_cmd", "EVENT_KINDS"]

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
    lists every URL of that message.  As in Ampalibe 1.1.9, ``cmd.webhook`` says what the user
    did (``'message'``, ``'postback'``, ``'attachments'``, ``'optin'``, ``'reaction'``, ``'read'``,
    ``'delivery'``) and ``cmd.token`` is the notification token of an opt-in (else ``None``).
    """

    attachments: list[str]
    webhook: str
    token: str | None

    def __new__(cls, value: str = "", attachments: list[str] | None = None, webhook: str = "message",
                token: str | None = None) -> "Cmd":
        self = super().__new__(cls, value)
        self.attachments = list(attachments or ())
        self.webhook = webhook
        self.token = token
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
    """Holds one bot's commands, actions, event handlers, middleware and scheduled jobs.

    Each :class:`~flask_ampalibe.Ampalibe` owns one (unless given one to share); the
    module-level decorators (``@ampalibe.command``) register on the default app's.
    Decorators return the function unchanged, so handlers stay ordinary functions (also inside
    a class body).  Registering the same command, action or job name twice raises
    :class:`RoutingError`.
    """

    def __init__(self) -> None:
        self.commands: dict[str, Callable[..., Any]] = {}
        self.actions: dict[str, Callable[..., Any]] = {}
        self.events: dict[str, list[Callable[..., Any]]] = {}
        self.before: list[Callable[..., Any]] = []
        self.after: list[Callable[..., Any]] = []
        self.error_handlers: list[Callable[..., Any]] = []
        #: Scheduled jobs by name (:class:`flask_ampalibe.scheduler.Job`; ``@schedule`` adds them).
        self.jobs: dict[str, Job] = {}

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

    def before_receive(self, func: F | None = None) -> Any:
        """Run ``func(sender_id=…, message=…, event=…)`` before each event; returning ``False`` stops it.

        Usable bare (``@router.before_receive``) or called (``@router.before_receive()``, as in
        later Ampalibe releases); either way the function comes back unchanged.
        """
        return _append(self.before, func)

    def after_receive(self, func: F | None = None) -> Any:
        """Run ``func(sender_id=…, result=…, error=…, …)`` after each event's handler (bare or called)."""
        return _append(self.after, func)

    def on_error(self, func: F | None = None) -> Any:
        """Run ``func(error=…, sender_id=…, message=…, event=…)`` when a handler raises (bare or called)."""
        return _append(self.error_handlers, func)

    def add_job(self, job: Job) -> None:
        """Add a scheduled job (a :class:`flask_ampalibe.scheduler.Job`; ``@schedule`` builds it).

        :raises RoutingError: another function already has the job's name.
        """
        old = self.jobs.get(job.name)
        if old is not None and old.func is not job.func and _qualname(old.func) != _qualname(job.func):
            raise RoutingError(
                f"@schedule(name={job.name!r}) is already used by {_qualname(old.func)}; "
                f"{_qualname(job.func)} needs another name."
            )
        self.jobs[job.name] = job  # the same function again (module re-imported) replaces it

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
        if self.routes_optin(event):
            return bool(self.commands or self.actions)
        return bool(self.events.get(event.kind))

    def routes_optin(self, event: Event) -> bool:
        """Whether ``event`` is an opt-in that goes to the commands like a message, with its
        token in ``cmd.token`` (Ampalibe 1.1.9): one with a payload, when no ``@event('optin')``
        handler is registered."""
        return event.kind == "optin" and not event.standby and not self.events.get("optin") \
            and bool(command_input(event)[0])

    def resolve(self, event: Event, action: str | None, action_args: dict[str, Any] | None,
                codec: PayloadCodec | None) -> Match | None:
        """Pick the handler of a ``message`` or ``postback`` event.

        :param action: the user's pending action, if any.
        :param codec: decodes signed payloads; ``None`` treats every text as plain.
        :returns: ``None`` when nothing handles it (no command matched, no action, no ``'/'``).
        """
        text, attachments = command_input(event)
        kind, token = _cmd_kind(event, attachments)

        def cmd(value: str) -> Cmd:
            return Cmd(value, attachments, kind, token)

        decoded = codec.decode(text) if codec is not None else None
        if decoded is not None:
            route, args = decoded
            handler = self.commands.get(route)
            if handler is not None:
                return Match(handler, route, "command", cmd(""), dict(args), clear_action=bool(action))
            text = route
        else:
            args = {}
            words = text.split(maxsplit=1)
            if words and words[0] in self.commands:
                route = words[0]
                rest = words[1] if len(words) > 1 else ""
                return Match(self.commands[route], route, "command", cmd(rest), {}, clear_action=bool(action))
        if action and action in self.actions:
            merged = dict(action_args or {})
            merged.update(args)
            return Match(self.actions[action], action, "action", cmd(text), merged)
        if action:
            logger.warning("pending action %r has no @action handler; falling back to the '/' command", action)
        if _MAIN in self.commands:
            return Match(self.commands[_MAIN], _MAIN, "command", cmd(text), args)
        return None


def command_input(event: Event) -> tuple[str, list[str]]:
    """The text a message or postback routes on, and its attachment URLs."""
    raw = event.raw
    if event.kind in ("postback", "optin"):
        body = raw.get(event.kind) if isinstance(raw.get(event.kind), dict) else {}
        return str(body.get("payload") or ""), []
    message = raw.get("message") if isinstance(raw.get("message"), dict) else {}
    urls = []
    attachments = message.get("attachments")
    for attachment in attachments if isinstance(attachments, list) else ():
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


def _cmd_kind(event: Event, attachments: list[str]) -> tuple[str, str | None]:
    """``cmd.webhook`` and ``cmd.token`` of an event, as Ampalibe 1.1.9 sets them."""
    if event.kind == "message":
        return ("attachments" if attachments else "message"), None
    if event.kind == "optin":
        body = event.raw.get("optin") if isinstance(event.raw.get("optin"), dict) else {}
        token = body.get("one_time_notif_token") or body.get("notification_messages_token")
        return "optin", (str(token) if token else None)
    return event.kind, None


def event_cmd(event: Event, codec: PayloadCodec | None = None) -> Cmd:
    """The ``cmd`` of any event, as middleware and 1.1.9-style event handlers get it.

    For a message, postback or opt-in: the whole text or payload (a signed payload gives its
    command, without its arguments); for a reaction: the reaction (``'love'``); for ``read`` and
    ``delivery``: the watermark.  ``webhook`` and ``token`` are set as for handlers.
    """
    if event.kind in ("message", "postback", "optin"):
        text, attachments = command_input(event)
        decoded = codec.decode(text) if codec is not None and text else None
        kind, token = _cmd_kind(event, attachments)
        return Cmd(decoded[0] if decoded is not None else text, attachments, kind, token)
    body = event.raw.get(event.kind) if isinstance(event.raw.get(event.kind), dict) else {}
    value = body.get("reaction") if event.kind == "reaction" else body.get("watermark")
    return Cmd("" if value is None else str(value), None, event.kind)


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


def _append(hooks: list[Callable[..., Any]], func: F | None) -> Any:
    """Add ``func`` to ``hooks`` and return it; without ``func``, a decorator that does."""
    if func is None:
        return lambda f: _append(hooks, f)
    hooks.append(func)
    return func


def _qualname(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
