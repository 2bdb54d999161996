"""SQL storage on SQLAlchemy Core: users' pending actions, temporary data, pagination pages.

One :class:`Store` per app, on one engine per database URL.  Every operation is one short
transaction, so any number of gunicorn workers and hosts can share the database, except a
user's state while one of their events is handled: it commits with the event (see
:class:`Store`).  The webhook inbox lives in :mod:`flask_ampalibe.inbox`, on the same tables'
metadata.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any, Iterable

from sqlalchemy import Table, bindparam, select
from sqlalchemy.engine import Connection, Engine

from .engine import read_only
from .forks import renew_in_child
from .tables import inbox, leases, pages, temps, users
from .unit import PREFETCH_TEMPS, RawUser, Unit

__all__ = ["Store", "upsert", "insert_ignore"]


def _dialect_insert(dialect_name: str, table: Table) -> Any:
    if dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    if dialect_name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        return mysql_insert(table)
    return None


# Statement *constructs* are built once and executed with parameters: building one costs several
# times more than running it, and a prebuilt construct keeps its cache key, so the engine's
# compiled cache finds its SQL at once.  Each engine compiles them for its own driver (psycopg's
# named and pg8000's positional parameters are both "postgresql").
_constructs: dict[tuple[Any, ...], Any] = {}


def _insert_ignore_stmt(dialect_name: str, table: Table, first: str) -> Any:
    key = ("insert_ignore", dialect_name, table.name, first)
    stmt = _constructs.get(key)
    if stmt is None:
        stmt = _dialect_insert(dialect_name, table)
        if stmt is not None:
            if dialect_name in ("mysql", "mariadb"):
                stmt = stmt.on_duplicate_key_update({first: stmt.inserted[first]})
            else:
                stmt = stmt.on_conflict_do_nothing()
        _constructs[key] = stmt
    return stmt


def _upsert_stmt(dialect_name: str, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    key = ("upsert", dialect_name, table.name, columns, keys)
    stmt = _constructs.get(key)
    if stmt is None:
        stmt = _dialect_insert(dialect_name, table)
        changes = [c for c in columns if c not in keys]
        if stmt is not None:
            if dialect_name in ("mysql", "mariadb"):
                stmt = stmt.on_duplicate_key_update({k: stmt.inserted[k] for k in changes})
            else:
                stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                                  set_={k: stmt.excluded[k] for k in changes})
        _constructs[key] = stmt
    return stmt


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (all with the same columns), silently keeping existing rows with the same
    unique key; one statement (an ``executemany`` for several rows)."""
    if not rows:
        return
    stmt = _insert_ignore_stmt(conn.dialect.name, table, next(iter(rows[0])))
    if stmt is None:
        for row in rows:  # portable fallback: check first
            key = {c.name: row[c.name] for c in table.primary_key.columns if c.name in row}
            if not conn.execute(select(table).filter_by(**key)).first():
                conn.execute(table.insert().values(**row))
        return
    conn.execute(stmt, rows)


def upsert(conn: Connection, table: Table, values: dict[str, Any], keys: Iterable[str]) -> None:
    """Insert ``values`` or, when a row with the same ``keys`` exists, update its other columns."""
    keys = tuple(keys)
    stmt = _upsert_stmt(conn.dialect.name, table, tuple(values), keys)
    if stmt is None:
        changes = {k: v for k, v in values.items() if k not in keys}
        where = [table.c[k] == values[k] for k in keys]
        if conn.execute(table.update().where(*where).values(**changes)).rowcount == 0:
            conn.execute(table.insert().values(**values))
        return
    conn.execute(stmt, values)


_user_state = select(users.c.action, users.c.action_args, users.c.lang).where(users.c.user_id == bindparam("uid"))
_user_used = users.update().where(users.c.user_id == bindparam("uid")).values(last_use=bindparam("now"))
# Where the database has UPDATE ... RETURNING (SQLite >= 3.35, PostgreSQL; not MySQL/MariaDB):
# set last_use and read the state in one statement.
_user_used_state = _user_used.returning(users.c.action, users.c.action_args, users.c.lang)
_temp_value = select(temps.c.value).where(temps.c.user_id == bindparam("uid"), temps.c.key == bindparam("k"))
_temps_of = (select(temps.c.key, temps.c.value).where(temps.c.user_id == bindparam("uid"))
             .limit(PREFETCH_TEMPS + 1))
_temp_delete = temps.delete().where(temps.c.user_id == bindparam("uid"), temps.c.key == bindparam("k"))
_page_data = select(pages.c.data).where(pages.c.token == bindparam("token"), pages.c.user_id == bindparam("uid"))
_page_delete = pages.delete().where(pages.c.token == bindparam("token"), pages.c.user_id == bindparam("uid"))
_page_take = _page_delete.returning(pages.c.data)


class Store:
    """Per-user state in SQL: the pending action, temporary data, language, pagination pages.

    **A handler's state commits with its event.**  While an event of a user is handled in this
    process, from the moment the inbox hands it out until its outcome is committed, the store
    serves that user's state from a :class:`~flask_ampalibe.unit.Unit`: :meth:`set_temp`,
    :meth:`del_temp`, :meth:`set_user_fields` (and :meth:`set_action`) are buffered in it,
    :meth:`get_temp`, :meth:`get_user` and :meth:`touch_user` see those writes, and the inbox
    writes them in the transaction that records the event's outcome
    (:meth:`write_unit`), so a worker that dies mid-handler leaves neither.  Values are
    serialised when set, so a value JSON cannot encode still raises in the handler.  Units are
    kept by user id for the whole process (not per thread): ``ampalibe.offload`` and ``async
    def`` handlers reach the same one.  Pagination pages, :meth:`set_temps` and
    :meth:`forget_user` are written at once, as is everything outside a handled event.

    :param engine: from :func:`make_engine`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ready = False
        self._ready_lock = threading.Lock()
        #: Whether this process's handlers read temporary data: from then on the transaction that
        #: hands out an event also reads the user's temporary values (bots that never do pay nothing).
        self.prefetch_temps = False
        self._forget_units()
        renew_in_child(self._forget_units)

    def _forget_units(self) -> None:
        self._units: dict[str, Unit] = {}  # user id -> the unit of their event being handled here
        self._units_lock = threading.Lock()

    def create_all(self) -> None:
        """Make the database ready (idempotent, safe to race): create the tables of an empty
        database, recognise one from before migrations, check the schema revision.

        :raises SchemaError: the database is behind (run ``ampalibe db upgrade``) or newer than
            this release.
        """
        from .schema import prepare

        with self._ready_lock:
            if self._ready:
                return
            prepare(self.engine)
            self._ready = True

    def ensure(self) -> None:
        """Create the tables on first use."""
        if not self._ready:
            self.create_all()

    # -- the state of an event being handled (see the class docstring) -------------------------------
    def open_unit(self, user_id: str, conn: Connection, touch: bool
                  ) -> tuple[Unit, tuple[str | None, dict[str, Any], str | None] | None]:
        """In the transaction that hands out an event of ``user_id``: read their state into a new
        unit (not yet serving: see :meth:`adopt_unit`).

        :param touch: also :meth:`touch_user` (for the events routed by the user's state).
        :returns: the unit, and the user's ``(action, action_args, lang)`` when ``touch``.
        """
        raw = self._touch(conn, user_id) if touch else None
        temps_read: dict[str, str] = {}
        complete = False
        if self.prefetch_temps:
            rows = conn.execute(_temps_of, {"uid": user_id}).all()
            temps_read = {row.key: row.value for row in rows}
            complete = len(rows) <= PREFETCH_TEMPS
        unit = Unit(user_id, raw, temps_read, complete)
        return unit, (None if raw is None else _user(raw))

    def adopt_unit(self, unit: Unit) -> None:
        """Serve the user's state from ``unit`` (its event was handed out: the transaction committed),
        instead of any unit left from an earlier event."""
        with self._units_lock:
            old = self._units.get(unit.user_id)
            self._units[unit.user_id] = unit
        if old is not None:
            old.close()

    def write_unit(self, conn: Connection, user_id: str,
                   writes: tuple[dict[str, str | None], dict[str, Any]]) -> None:
        """Write a unit's buffered writes (:meth:`Unit.take_writes`) in ``conn``, the transaction of
        the event's outcome."""
        written, fields = writes
        if fields:
            upsert(conn, users, {"user_id": user_id, **fields}, ["user_id"])
        stored = [{"user_id": user_id, "key": k, "value": v} for k, v in written.items() if v is not None]
        if stored:
            self._upsert_temps(conn, stored)
        deleted = [{"uid": user_id, "k": k} for k, v in written.items() if v is None]
        if deleted:
            conn.execute(_temp_delete, deleted)

    def close_unit(self, unit: Unit) -> None:
        """Stop serving from ``unit`` (its outcome committed, or its writes are dropped)."""
        unit.close()
        with self._units_lock:
            if self._units.get(unit.user_id) is unit:
                del self._units[unit.user_id]

    def close_units_of(self, user_id: str) -> None:
        """Stop serving ``user_id``'s state from a unit (their lease is given back)."""
        with self._units_lock:
            unit = self._units.pop(user_id, None)
        if unit is not None:
            unit.close()

    # -- users ----------------------------------------------------------------------------
    def touch_user(self, user_id: str, conn: Connection | None = None
                   ) -> tuple[str | None, dict[str, Any], str | None]:
        """Record that ``user_id`` wrote now; return their ``(action, action_args, lang)``.

        :param conn: a write transaction to run in (the inbox's, when it hands out the event);
            by default a transaction of its own (or, while an event of the user is handled, the
            user's unit: the inbox recorded the time when it handed the event out).
        """
        if conn is not None:
            return _user(self._touch(conn, user_id))
        unit = self._units.get(user_id)
        if unit is not None:
            known, raw = unit.user()
            if known:
                return _user(raw)
            if unit.set_fields({"last_use": time.time()}):
                return self.get_user(user_id)
        self.ensure()
        with self.engine.begin() as own:
            return _user(self._touch(own, user_id))

    @staticmethod
    def _touch(conn: Connection, user_id: str) -> RawUser:
        now = time.time()
        if conn.dialect.update_returning:
            row = conn.execute(_user_used_state, {"uid": user_id, "now": now}).first()
        else:
            row = conn.execute(_user_state, {"uid": user_id}).first()
            if row is not None:
                conn.execute(_user_used, {"uid": user_id, "now": now})
        if row is None:
            insert_ignore(conn, users, [{"user_id": user_id, "last_use": now}])
            return None, None, None
        return row.action, row.action_args, row.lang

    def get_user(self, user_id: str) -> tuple[str | None, dict[str, Any], str | None]:
        """``(action, action_args, lang)`` of ``user_id`` (``(None, {}, None)`` when unknown)."""
        unit = self._units.get(user_id)
        if unit is not None:
            known, raw = unit.user()
            if known:
                return _user(raw)
        self.ensure()
        with read_only(self.engine) as conn:
            row = conn.execute(_user_state, {"uid": user_id}).first()
        raw = (None, None, None) if row is None else (row.action, row.action_args, row.lang)
        if unit is not None:
            unit.learn_user(raw)
            known, with_writes = unit.user()
            if known:
                return _user(with_writes)
        return _user(raw)

    def set_user_fields(self, user_id: str, **fields: Any) -> None:
        """Set columns of the user's row (created if missing)."""
        unit = self._units.get(user_id)
        if unit is not None and unit.set_fields(fields):
            return
        self.ensure()
        with self.engine.begin() as conn:
            upsert(conn, users, {"user_id": user_id, **fields}, ["user_id"])

    def set_action(self, user_id: str, action: str | None, args: dict[str, Any] | None = None) -> None:
        """Set (or clear, with ``None``) the action the user's next message goes to."""
        self.set_user_fields(user_id, action=action, action_args=json.dumps(args) if args else None)

    # -- temporary data -------------------------------------------------------------------
    def set_temp(self, user_id: str, key: str, value: Any) -> None:
        """Keep ``value`` (JSON-serialisable) under ``key`` for ``user_id``."""
        data = _dumps(value)
        unit = self._units.get(user_id)
        if unit is not None and unit.set_temp(key, data):
            return
        self.ensure()
        with self.engine.begin() as conn:
            upsert(conn, temps, {"user_id": user_id, "key": key, "value": data}, ["user_id", "key"])

    def set_temps(self, items: Iterable[tuple[str, str, Any]]) -> int:
        """Keep many ``(user_id, key, value)`` in one transaction (all or none); returns how many.

        Written at once, even for users whose event is being handled (their units then serve
        these values)."""
        self.ensure()
        rows = [{"user_id": user_id, "key": key, "value": json.dumps(value, ensure_ascii=False)}
                for user_id, key, value in items]
        with self.engine.begin() as conn:
            self._upsert_temps(conn, rows)
        if self._units:
            for row in rows:
                unit = self._units.get(row["user_id"])
                if unit is not None:
                    unit.stored(row["key"], row["value"])
        return len(rows)

    @staticmethod
    def _upsert_temps(conn: Connection, rows: list[dict[str, Any]]) -> None:
        keys = ("user_id", "key")
        stmt = _upsert_stmt(conn.dialect.name, temps, ("user_id", "key", "value"), keys)
        if stmt is None:
            for row in rows:
                upsert(conn, temps, row, keys)
        else:
            for start in range(0, len(rows), 1000):  # executemany, in bounded batches
                conn.execute(stmt, rows[start:start + 1000])

    def get_temp(self, user_id: str, key: str) -> Any:
        """The value kept under ``key``, or ``None``."""
        unit = self._units.get(user_id)
        if unit is not None:
            self.prefetch_temps = True
            known, text = unit.temp(key)
            if known:
                return _loads(text)
        self.ensure()
        with read_only(self.engine) as conn:
            value = conn.execute(_temp_value, {"uid": user_id, "k": key}).scalar()
        if unit is not None:
            unit.learn_temp(key, value)
        return _loads(value)

    def del_temp(self, user_id: str, key: str) -> None:
        """Forget the value kept under ``key`` (no error if there is none)."""
        unit = self._units.get(user_id)
        if unit is not None and unit.set_temp(key, None):
            return
        self.ensure()
        with self.engine.begin() as conn:
            conn.execute(_temp_delete, {"uid": user_id, "k": key})

    # -- pagination pages (used by the Messenger client) --------------------------------------
    def save_page(self, user_id: str, data: dict[str, Any]) -> str:
        """Keep the rest of a paginated send; return the token its "next" button carries."""
        self.ensure()
        token = secrets.token_urlsafe(16)
        with self.engine.begin() as conn:
            conn.execute(pages.insert().values(token=token, user_id=user_id, data=_dumps(data),
                                               created_at=time.time()))
        return token

    def take_page(self, token: str, user_id: str) -> dict[str, Any] | None:
        """Return the page saved under ``token`` once; ``None`` when already taken, unknown or not the user's."""
        self.ensure()
        params = {"token": token, "uid": user_id}
        with self.engine.begin() as conn:
            if conn.dialect.delete_returning:  # SQLite >= 3.35, PostgreSQL, MariaDB >= 10.5
                row = conn.execute(_page_take, params).first()
                return None if row is None else _loads(row.data)
            row = conn.execute(_page_data, params).first()
            if row is None:
                return None
            taken = conn.execute(_page_delete, params).rowcount
        return _loads(row.data) if taken == 1 else None

    # -- operators ------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> dict[str, int]:
        """Delete everything kept about ``user_id``: state, temporary data, pages, events, lease.

        :returns: how many rows went, by table.
        """
        self.ensure()
        with self.engine.begin() as conn:
            counts = {table.name: conn.execute(table.delete().where(table.c.user_id == user_id)).rowcount
                      for table in (users, temps, pages, inbox, leases)}
        unit = self._units.get(user_id)
        if unit is not None:  # an event of theirs is being handled: it must not write their state back
            unit.forgotten()
        return counts


def _user(raw: RawUser) -> tuple[str | None, dict[str, Any], str | None]:
    """``(action, action_args, lang)`` of a raw ``amp_user`` row."""
    return raw[0], _loads(raw[1]) or {}, raw[2]


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _dumps(value: Any) -> str:
    """JSON text every database stores: readable characters as they are, but a lone surrogate
    (from a user's message, which UTF-8 cannot encode) as a ``\\uXXXX`` escape."""
    text = json.dumps(value, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value)
    return text
