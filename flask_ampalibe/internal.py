"""The library's own commands: payloads of the buttons Ampalibe itself sends.

A "next page" quick reply (:mod:`flask_ampalibe.pagination`) comes back through the webhook like
any message the user sends.  Each app keeps a table of such internal commands
(``app.extensions["ampalibe"].internal``); the dispatcher looks up the first word of a message,
quick reply or postback there, after the bot's ``@event`` handlers and before any routing to
its commands and actions.  A match runs the internal command instead of the bot's handlers;
anything else goes on to them, so the bot may use any other command name, ``__amp_``-prefixed
ones included.

Registering one (a library component does it when the app is set up)::

    state = app.extensions["ampalibe"]
    state.internal.register("__amp_page", functools.partial(pagination.next_page, state.chat))

The function is called ``func(sender_id, text)`` with the whole text or payload; what it
returns is ignored.
"""
from __future__ import annotations

from typing import Callable, Iterator

__all__ = ["InternalCommands", "INTERNAL_PREFIX"]

#: The prefix every internal command name carries, so that none shadows a word users type.
INTERNAL_PREFIX = "__amp_"

InternalCommand = Callable[[str, str], object]


class InternalCommands:
    """An app's internal commands: command word → ``func(sender_id, text)``."""

    def __init__(self) -> None:
        self._commands: dict[str, InternalCommand] = {}

    def register(self, name: str, func: InternalCommand) -> InternalCommand:
        """Make ``func`` the internal command ``name``; returns ``func``.

        :raises ValueError: ``name`` is not one word starting with ``__amp_``, or is taken.
        """
        if not name.startswith(INTERNAL_PREFIX) or name.split() != [name]:
            raise ValueError(f"An internal command name is one word starting with {INTERNAL_PREFIX!r}, "
                             f"not {name!r}.")
        old = self._commands.get(name)
        if old is not None and old is not func:
            raise ValueError(f"The internal command {name!r} is already {old!r}; {func!r} cannot be it too.")
        self._commands[name] = func
        return func

    def find(self, text: str) -> InternalCommand | None:
        """The internal command ``text`` invokes: its first word, up to the first space."""
        if not text.startswith(INTERNAL_PREFIX):  # the common case, without a split
            return None
        return self._commands.get(text.partition(" ")[0])

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __iter__(self) -> Iterator[str]:
        return iter(self._commands)
