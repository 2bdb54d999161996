"""``Model``: the spec's user-state object (``bot.query``) and base class for custom queries.

``bot.query.set_action(...)``, ``get_temp(...)`` and friends work on the SQL store.  As in the
spec (§1.5), a subclass can run its own SQL through ``self.cursor`` / ``self.db`` inside
methods decorated with :meth:`Model.verif_db`::

    class Database(Model):
        @Model.verif_db
        def get_list_users(self):
            self.cursor.execute("SELECT * from amp_user")
            data = self.cursor.fetchall()
            self.db.commit()
            return data
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any, Callable, TypeVar, cast

from .config import Settings
from .context import current_state
from .engine import bot_sql_engine, make_engine
from .errors import ConfigurationError
from .payload import Payload
from .storage import Store

__all__ = ["Model"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Model:
    """Per-user state and a DB-API connection to the bot's database.

    :param conf: the spec's ``Configuration``: the model uses the database
        ``ampalibe.init(conf)`` would (its ``DATABASE_URL``, else its ``ADAPTER``/``DB_*``, else
        ``AMPALIBE_DATABASE_URL``; see :meth:`~flask_ampalibe.config.Settings.load`), and,
        when the configured bot uses that database, the bot's store and engine (``bot.query``'s).
        Left out (``Model()``, as Ampalibe 1.1.9 bots write it), the model uses the configured
        bot's database from its first call on (before any bot is configured, ``ampalibe.db`` in
        the current folder).
    :param store: an existing :class:`~flask_ampalibe.storage.Store` (used by the extension).
    :param init: accepted for Ampalibe 1.1.9 (``Model(init=False)``); nothing connects before
        the first call anyway.
    """

    def __init__(self, conf: Any = None, *, store: Store | None = None, init: bool = True) -> None:
        #: The database ``conf`` names (``None``: the configured bot's, for ``Model()``).
        self._url = Settings.load(conf=conf, environ=os.environ).database_url if conf is not None else None
        self._store = store
        self._local = threading.local()

    @property
    def store(self) -> Store:
        """Where this model's data lives (for ``Model()``: the configured bot's store)."""
        if self._store is None:
            try:
                bot = current_state()
            except ConfigurationError:  # no bot (yet): a store of our own, on the engine of that URL
                url = self._url or f"sqlite:///{os.path.abspath('ampalibe.db')}"
                self._store = Store(make_engine(url))
            else:
                same = self._url is None or self._url == bot.database_url
                self._store = bot.store if same else Store(make_engine(str(self._url)))
        return self._store

    @store.setter
    def store(self, value: Store) -> None:
        self._store = value

    # -- the spec's user-state methods ---------------------------------------------------------
    def set_action(self, user_id: str, action: "str | Payload | None") -> None:
        """Send the user's next message to ``@ampalibe.action(action)``; ``None`` clears it.

        A :class:`~flask_ampalibe.Payload` may be given: its arguments reach the action
        handler as keyword arguments.
        """
        if isinstance(action, Payload):
            self.store.set_action(str(user_id), action.payload, action.data)
        else:
            self.store.set_action(str(user_id), action)

    def get_action(self, user_id: str) -> str | None:
        """The user's pending action, or ``None``."""
        return self.store.get_user(str(user_id))[0]

    def set_temp(self, user_id: str, key: str, value: Any) -> None:
        """Keep ``value`` (any JSON-serialisable value) for this user under ``key``."""
        self.store.set_temp(str(user_id), key, value)

    def get_temp(self, user_id: str, key: str) -> Any:
        """The value kept under ``key``, or ``None`` if there is none."""
        return self.store.get_temp(str(user_id), key)

    def del_temp(self, user_id: str, key: str) -> None:
        """Forget the value kept under ``key``."""
        self.store.del_temp(str(user_id), key)

    def set_lang(self, user_id: str, lang: str | None) -> None:
        """Remember the user's language (e.g. ``'fr'``); handlers receive it as ``lang``."""
        self.store.set_user_fields(str(user_id), lang=lang)

    def get_lang(self, user_id: str) -> str | None:
        """The user's language, or ``None`` if it was never set."""
        return self.store.get_user(str(user_id))[2]

    # -- Ampalibe 1.1.9's helpers -------------------------------------------------------------------
    def get(self, user_id: str, *fields: str) -> list[Any]:
        """The user's ``action`` and/or ``lang`` (1.1.9's ``query.get(sender_id, "action", "lang")``).

        :returns: one value per field asked, ``None`` for an unknown user.
        :raises ValueError: for another field name.
        """
        known = {"action": 0, "lang": 2}
        unknown = [f for f in fields if f not in known]
        if unknown:
            raise ValueError(f"Model.get() reads 'action' and 'lang', not {', '.join(map(repr, unknown))}.")
        row = self.store.get_user(str(user_id))
        return [row[known[f]] for f in fields]

    def _verif_user(self, user_id: str) -> None:
        """Record the user (if new) and the time they were last seen, as 1.1.9 did on each message."""
        self.store.touch_user(str(user_id))

    # -- raw DB-API access (spec §1.5) ------------------------------------------------------------
    @property
    def db(self) -> Any:
        """This thread's DB-API connection (has ``cursor()``, ``commit()``, ``rollback()``)."""
        conn = getattr(self._local, "db", None)
        if conn is None:
            self.store.ensure()
            # An engine of its own: a thread may keep this connection, and a decorated method may
            # call ``get_temp`` while it holds it; neither must take one of the handlers' few.
            conn = self._local.db = bot_sql_engine(self.store.engine).raw_connection()
            self._local.cursor = None
        return conn

    @property
    def cursor(self) -> Any:
        """A DB-API cursor on :attr:`db` (one per thread)."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self.db.cursor()
        return cursor

    def _reconnect(self) -> None:
        conn = getattr(self._local, "db", None)
        self._local.db = self._local.cursor = None
        if conn is not None:
            try:
                conn.invalidate()  # the pooled connection is dead: do not give it back to the pool
            except Exception:
                try:
                    conn.close()
                except Exception:
                    pass

    def _alive(self) -> bool:
        conn = getattr(self._local, "db", None)
        if conn is None:
            return False
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            cursor.close()
            conn.commit()
            return True
        except Exception:
            return False

    def _release(self) -> None:
        """Give this thread's connection back to the pool (rolled back if left uncommitted)."""
        conn, cursor = getattr(self._local, "db", None), getattr(self._local, "cursor", None)
        self._local.db = self._local.cursor = None
        for thing in (cursor, conn):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass

    @staticmethod
    def verif_db(func: F) -> F:
        """Decorator: ``self.db``/``self.cursor`` are connected while ``func`` runs.

        Each call takes a connection from the pool (checked with a ping, so one that dropped
        when the database restarted is replaced) and gives it back when the outermost decorated
        call returns, so handler threads never hoard connections.  If ``func`` fails because the
        connection died under it, it is retried once on a fresh connection.
        """
        @functools.wraps(func)
        def wrapper(self: "Model", *args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._local, "depth", 0)
            self._local.depth = depth + 1
            try:
                if depth:
                    return func(self, *args, **kwargs)
                self._release()
                try:
                    return func(self, *args, **kwargs)
                except Exception as exc:
                    if self._alive():
                        try:
                            self.db.rollback()
                        except Exception:
                            pass
                        raise
                    logger.warning("database connection lost (%s); reconnecting and retrying once", exc)
                    self._reconnect()
                    return func(self, *args, **kwargs)
            finally:
                self._local.depth = depth
                if not depth:
                    self._release()
        return cast(F, wrapper)
