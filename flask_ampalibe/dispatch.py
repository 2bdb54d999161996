"""Running one recorded event: middleware, routing, the handler, error hooks.

:class:`Dispatcher` is what executors call for each event taken from the inbox.  It pushes the
app context (so ``current_app`` works in handlers) and makes the app's payload codec current.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .inbox import USER_STATE_KINDS, Claimed
from .payload import _current_codec
from .router import call_handler, command_input, event_cmd

if TYPE_CHECKING:
    from .extension import AmpalibeState

__all__ = ["Dispatcher", "RESERVED"]

logger = logging.getLogger(__name__)

#: Keyword arguments the library passes itself; payload arguments cannot override them.
RESERVED = frozenset({"sender_id", "cmd", "message", "event", "lang", "redelivered"})


class Dispatcher:
    """Handles one event for an app's state."""

    def __init__(self, state: "AmpalibeState") -> None:
        self.state = state

    def __call__(self, claimed: Claimed) -> BaseException | None:
        state = self.state
        event = claimed.event
        base = {"sender_id": event.sender_id, "message": event.raw, "event": event,
                "redelivered": claimed.redelivered}
        with state.app.app_context():
            token = _current_codec.set(state.codec)
            try:
                router = state.router
                result, error = None, None
                # Middleware also gets ``cmd`` (Ampalibe 1.1.9's keyword), what the event carries.
                cmd = event_cmd(event, state.codec) if router.before or router.after else None
                try:
                    # A failing before_receive is the event's failure, reported like a handler's.
                    # One returning False stops the event; after_receive still runs, with res=None.
                    if all(call_handler(middleware, cmd=cmd, **base) is not False for middleware in router.before):
                        result = self._route(claimed, base)
                except Exception as exc:
                    error = exc
                    logger.exception("handler failed for %s event %s of user %s",
                                     event.kind, event.key, event.sender_id)
                    for hook in router.error_handlers:
                        self._quietly(hook, error=exc, **base)
                for middleware in router.after:
                    self._quietly(middleware, result=result, res=result, error=error, cmd=cmd, **base)
                return error
            finally:
                _current_codec.reset(token)

    def _route(self, claimed: Claimed, base: dict[str, Any]) -> Any:
        state, event = self.state, claimed.event
        router = state.router
        kind = "standby" if event.standby else event.kind
        # Without an @event('optin') handler, an opt-in goes to the commands, as in Ampalibe 1.1.9.
        if kind not in USER_STATE_KINDS and not router.routes_optin(event):
            fields = event.raw.get(event.kind if event.kind != "echo" else "message")
            extra = {k: v for k, v in fields.items() if k not in RESERVED} if isinstance(fields, dict) else {}
            if kind == "reaction":  # 1.1.9's keyword for the reaction
                extra["watermark"] = event_cmd(event)
            result = None
            for handler in router.events.get(kind, ()):
                result = call_handler(handler, **extra, **base)
            return result

        for handler in router.events.get(kind, ()):
            if call_handler(handler, **base) is False:
                return None
        text, _ = command_input(event)
        handle_internal = getattr(state.chat, "handle_internal", None)
        if handle_internal is not None and text.startswith("__amp_") and handle_internal(event.sender_id, text):
            return None
        # The inbox read the user's state when it handed the event out (same transaction).  Read
        # it again if code of the bot ran since (middleware, event handlers): it may have changed it.
        user = claimed.user
        if user is None or router.before or router.events.get(kind):
            user = state.store.touch_user(event.sender_id)
        action, action_args, lang = user
        match = router.resolve(event, action, action_args, state.codec)
        if match is None:
            logger.info("no handler for a %s of user %s: register @ampalibe.command('/')", kind, event.sender_id)
            return None
        if match.clear_action:
            state.store.set_action(event.sender_id, None)
        args = {k: v for k, v in match.args.items() if k not in RESERVED}
        # The user's language, None until they chose one (as in 1.1.9: bots offer a choice then).
        return call_handler(match.handler, cmd=match.cmd, lang=lang or None, **args, **base)

    @staticmethod
    def _quietly(func: Any, **kwargs: Any) -> None:
        try:
            call_handler(func, **kwargs)
        except Exception:
            logger.exception("hook %r raised", func)
