"""Running one recorded event: middleware, routing, the handler, error hooks.

:class:`Dispatcher` is what executors call for each event taken from the inbox.  It pushes the
app context (so ``current_app`` works in handlers) and makes the app's payload codec current.
Any function of the bot may be ``async def``: see :class:`Dispatcher`.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine

from . import aio
from .aio import is_async
from .inbox import USER_STATE_KINDS, Claimed
from .internal import InternalCommands
from .payload import PayloadCodec, _current_codec
from .router import Router, call_handler, command_input, event_cmd
from .storage import Store

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["Dispatcher", "RESERVED"]

logger = logging.getLogger(__name__)

#: Keyword arguments the library passes itself; payload arguments cannot override them.
RESERVED = frozenset({"sender_id", "cmd", "message", "event", "lang", "redelivered"})
# ... and those of after_receive.
_HOOK_RESERVED = RESERVED | {"res", "result", "error"}


class Dispatcher:
    """Handles one event of an app.

    :param router: the bot's handlers, middleware and error hooks.
    :param store: the users' state (action, language).
    :param codec: the app's payload codec, made current while the event runs.
    :param internal: the library's own commands, looked up before routing.
    :param app_context: returns the context each event runs in (the app's ``app.app_context``).

    Two ways to run the same steps:

    - calling it (``dispatcher(claimed)``) runs the event in the calling thread; ``async def``
      functions it meets run on the process's event loop while the thread waits (inline
      executor, ``ampalibe worker``, any executor that wants a plain function);
    - :meth:`run_async` is a coroutine for the event loop: ``async def`` functions are awaited
      there, plain functions and the library's database statements run in threads
      (:func:`flask_ampalibe.aio.offload`), so no thread is held while an async handler waits.

    :attr:`wants_loop` says which one suits the bot: the loop when any of its functions is
    ``async def``.
    """

    def __init__(self, router: Router, store: Store, codec: PayloadCodec, internal: InternalCommands,
                 app_context: Callable[[], AbstractContextManager[Any]]) -> None:
        self.router = router
        self.store = store
        self.codec = codec
        self.internal = internal
        self.app_context = app_context

    @property
    def wants_loop(self) -> bool:
        """Whether the bot has ``async def`` handlers, middleware or error hooks (read at each call:
        late registrations count)."""
        router = self.router
        funcs = [*router.commands.values(), *router.actions.values(), *router.before, *router.after,
                 *router.error_handlers]
        for handlers in router.events.values():
            funcs.extend(handlers)
        return any(map(is_async, funcs))

    def __call__(self, claimed: Claimed) -> BaseException | None:
        return _drive(self._dispatch(claimed, _call_here, _io_here))

    async def run_async(self, claimed: Claimed) -> BaseException | None:
        """The event, handled on the running event loop (see the class docstring)."""
        return await self._dispatch(claimed, _call_on_loop, _io_offloaded)

    async def _dispatch(self, claimed: Claimed, call: _Call, io: _Io) -> BaseException | None:
        event = claimed.event
        base = {"sender_id": event.sender_id, "message": event.raw, "event": event,
                "redelivered": claimed.redelivered}
        started = time.monotonic()
        with self.app_context():
            token = _current_codec.set(self.codec)
            try:
                router = self.router
                result, error = None, None
                # Middleware also gets what Ampalibe 1.1.9 gave it: cmd, lang, the payload's arguments.
                hooks = await self._middleware_kwargs(claimed, io) if router.before or router.after else {}
                try:
                    # A failing before_receive is the event's failure, reported like a handler's.
                    # One returning False stops the event; after_receive still runs, with res=None.
                    stopped = False
                    for middleware in router.before:
                        if await call(middleware, **hooks, **base) is False:
                            stopped = True
                            break
                    if not stopped:
                        result = await self._route(claimed, base, call, io)
                except Exception as exc:
                    error = exc
                    logger.exception("handler failed for %s event %s of user %s",
                                     event.kind, event.key, event.sender_id)
                    for hook in router.error_handlers:
                        await self._quietly(call, hook, error=exc, **base)
                for middleware in router.after:
                    await self._quietly(call, middleware, result=result, res=result, error=error, **hooks, **base)
                if error is None:  # the event log: one line per handled event (failures are logged above)
                    logger.info("%s %s of user %s handled in %.0f ms%s", event.kind, event.key, event.sender_id,
                                (time.monotonic() - started) * 1000, " (redelivered)" if claimed.redelivered else "")
                return error
            finally:
                _current_codec.reset(token)

    async def _route(self, claimed: Claimed, base: dict[str, Any], call: _Call, io: _Io) -> Any:
        event, router = claimed.event, self.router
        kind = "standby" if event.standby else event.kind
        # Without an @event('optin') handler, an opt-in goes to the commands, as in Ampalibe 1.1.9.
        if kind not in USER_STATE_KINDS and not router.routes_optin(event):
            fields = event.raw.get(event.kind if event.kind != "echo" else "message")
            extra = {k: v for k, v in fields.items() if k not in RESERVED} if isinstance(fields, dict) else {}
            if kind == "reaction":  # 1.1.9's keyword for the reaction
                extra["watermark"] = event_cmd(event)
            result = None
            for handler in router.events.get(kind, ()):
                result = await call(handler, **extra, **base)
            return result

        for handler in router.events.get(kind, ()):
            if await call(handler, **base) is False:
                return None
        # The library's own buttons ("next page") come back as messages: their internal command
        # runs instead of the bot's handlers (see flask_ampalibe.internal).
        text, _ = command_input(event)
        internal = self.internal.find(text)
        if internal is not None:
            await io(internal, event.sender_id, text)
            return None
        # The inbox read the user's state when it handed the event out (same transaction).  Read
        # it again if code of the bot ran since (middleware, event handlers): it may have changed it.
        user = claimed.user
        if user is None or router.before or router.events.get(kind):
            user = await io(self.store.touch_user, event.sender_id)
        action, action_args, lang = user
        match = router.resolve(event, action, action_args, self.codec)
        if match is None:
            logger.info("no handler for a %s of user %s: register @ampalibe.command('/')", kind, event.sender_id)
            return None
        if match.clear_action:
            await io(self.store.set_action, event.sender_id, None)
        args = {k: v for k, v in match.args.items() if k not in RESERVED}
        # The user's language, None until they chose one (as in 1.1.9: bots offer a choice then).
        return await call(match.handler, cmd=match.cmd, lang=lang or None, **args, **base)

    async def _middleware_kwargs(self, claimed: Claimed, io: _Io) -> dict[str, Any]:
        """``cmd`` (what the event carries), ``lang`` (``None`` until chosen) and the payload's
        arguments, the keywords Ampalibe 1.1.9 gave ``before_receive``/``after_receive``."""
        event = claimed.event
        hooks: dict[str, Any] = {"cmd": event_cmd(event, self.codec), "lang": None}
        if event.kind in ("message", "postback", "optin"):
            user = claimed.user if claimed.user is not None else await io(self.store.get_user, event.sender_id)
            hooks["lang"] = user[2] or None
            text, _ = command_input(event)
            decoded = self.codec.decode(text) if text else None
            if decoded is not None:
                hooks.update((k, v) for k, v in decoded[1].items() if k not in _HOOK_RESERVED)
        return hooks

    @staticmethod
    async def _quietly(call: _Call, func: Any, **kwargs: Any) -> None:
        try:
            await call(func, **kwargs)
        except Exception:
            logger.exception("hook %r raised", func)


_Call = Callable[..., Awaitable[Any]]
_Io = Callable[..., Awaitable[Any]]


async def _call_here(func: Callable[..., Any], **kwargs: Any) -> Any:
    """Run bot code in this thread; a coroutine it returns runs on the process's loop."""
    result = call_handler(func, **kwargs)
    if inspect.isawaitable(result):
        result = aio.run(result)
    return result


async def _io_here(func: Callable[..., Any], *args: Any) -> Any:
    return func(*args)


async def _call_on_loop(func: Callable[..., Any], **kwargs: Any) -> Any:
    """On the loop: await ``async def`` bot code, run the rest in a thread."""
    if is_async(func):
        return await call_handler(func, **kwargs)
    result = await aio.offload(call_handler, func, **kwargs)
    if inspect.isawaitable(result):  # a plain function that returned a coroutine
        result = await result
    return result


async def _io_offloaded(func: Callable[..., Any], *args: Any) -> Any:
    return await aio.offload(func, *args)


def _drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (the thread mode of :class:`Dispatcher`) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the dispatch coroutine suspended in thread mode")  # pragma: no cover - a bug
