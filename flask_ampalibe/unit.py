"""A user's state while one of their events is handled: read with the event, written with its outcome.

The inbox opens a :class:`Unit` in the transaction that hands out an event (with the user's
``(action, action_args, lang)`` and, once the bot reads temporary data, their temporary values);
the :class:`~flask_ampalibe.storage.Store` serves the user's reads from it and buffers their
writes in it until the inbox writes them in the transaction that records the event's outcome.
It holds no SQL: the store runs the statements.  Values are JSON text, as stored, so every read
returns a fresh object.
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["Unit", "PREFETCH_TEMPS", "RawUser"]

#: How many of a user's temporary values the transaction that hands out an event reads: up to
#: this many rows are all of them (a key that is not there has no value); a user with more has
#: the others read one by one when asked for.
PREFETCH_TEMPS = 64

#: ``(action, action_args as JSON text, lang)`` as stored in ``amp_user``.
RawUser = tuple["str | None", "str | None", "str | None"]


class Unit:
    """User ``user_id``'s state while one of their events is handled in this process.

    Thread-safe: ``ampalibe.offload`` and ``async def`` handlers reach it from other threads.
    Once :meth:`take_writes` or :meth:`close` ran, it answers nothing and takes no write (each
    method says so), and the store goes to the database instead.

    :param user: the user's row as read when the event was handed out (``None``: not read).
    :param temps: temporary values read then, JSON text by key.
    :param complete: whether ``temps`` holds all of them (a missing key has no value).
    """

    def __init__(self, user_id: str, user: RawUser | None = None, temps: dict[str, str] | None = None,
                 complete: bool = False) -> None:
        self.user_id = user_id
        self.closed = False
        self._lock = threading.Lock()
        self._user = user
        self._fields: dict[str, Any] = {}  # amp_user columns written during the event
        self._temps: dict[str, str | None] = dict(temps or {})  # None: known to have no value
        self._complete = complete
        self._written: set[str] = set()  # keys of _temps to write

    # -- reads: (False, None) when the unit cannot answer -----------------------------------------
    def temp(self, key: str) -> tuple[bool, str | None]:
        """``(True, JSON text or None)`` when the value under ``key`` is known."""
        with self._lock:
            if self.closed:
                return False, None
            if key in self._temps:
                return True, self._temps[key]
            return self._complete, None

    def user(self) -> tuple[bool, RawUser]:
        """``(True, row)`` when the user's row is known (``(None, None, None)``: no row)."""
        with self._lock:
            if self.closed or self._user is None:
                return False, (None, None, None)
            return True, self._with_fields(self._user)

    def learn_temp(self, key: str, text: str | None) -> None:
        """Keep a value just read from the database (unless one was written meanwhile)."""
        with self._lock:
            if not self.closed:
                self._temps.setdefault(key, text)

    def learn_user(self, user: RawUser) -> None:
        """Keep the user's row just read from the database."""
        with self._lock:
            if not self.closed and self._user is None:
                self._user = user

    def _with_fields(self, user: RawUser) -> RawUser:
        fields = self._fields
        if not fields:
            return user
        return (fields.get("action", user[0]), fields.get("action_args", user[1]), fields.get("lang", user[2]))

    # -- writes: False when the unit is closed (the caller writes to the database itself) -------------
    def set_temp(self, key: str, text: str | None) -> bool:
        """Buffer the value (JSON text) under ``key``; ``None`` deletes it."""
        with self._lock:
            if self.closed:
                return False
            self._temps[key] = text
            self._written.add(key)
            return True

    def set_fields(self, fields: dict[str, Any]) -> bool:
        """Buffer columns of the user's ``amp_user`` row."""
        with self._lock:
            if self.closed:
                return False
            self._fields.update(fields)
            return True

    # -- what others did meanwhile ------------------------------------------------------------------
    def stored(self, key: str, text: str) -> None:
        """``key`` was written to the database directly (``Store.set_temps``): that value stands."""
        with self._lock:
            if not self.closed:
                self._temps[key] = text
                self._written.discard(key)

    def forgotten(self) -> None:
        """The user's data was deleted (``Store.forget_user``): no value, no row, nothing to write."""
        with self._lock:
            if not self.closed:
                self._user, self._fields = (None, None, None), {}
                self._temps, self._complete, self._written = {}, True, set()

    # -- the end ----------------------------------------------------------------------------------------
    def take_writes(self) -> tuple[dict[str, str | None], dict[str, Any]]:
        """Close the unit and return what to write: ``({key: JSON text or None to delete}, {column: value})``
        (empty once closed)."""
        with self._lock:
            if self.closed:
                return {}, {}
            self.closed = True
            return {k: self._temps[k] for k in sorted(self._written)}, self._fields

    def close(self) -> None:
        """Drop the buffered writes (the event was not finished here)."""
        with self._lock:
            self.closed = True

    @property
    def has_writes(self) -> bool:
        """Whether writes are buffered (or were, until :meth:`take_writes`)."""
        return bool(self._written or self._fields)
