"""Database errors in one line, and how an outage after start is reported.

:func:`describe` turns a driver's error into one line naming the database (password masked) and
the cause, telling a wrong password or a missing database (fix a setting) from a server that
does not answer (an outage).  :class:`Outage` is the per-process record of an outage: the first
failure is logged in one line, then each retry of the executor's backoff (growing intervals) in
one line, and the recovery in one line; no traceback, however long it lasts.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from sqlalchemy.engine import Engine, make_url

__all__ = ["describe", "kind_of", "is_unavailable", "is_deadlock", "Outage", "outage_for", "masked"]

logger = logging.getLogger("flask_ampalibe.database")

#: MySQL/MariaDB error codes (PyMySQL's ``exc.args[0]``).
_MYSQL_AUTH = {1045, 1044, 1698}
_MYSQL_NO_DATABASE = {1049}
_MYSQL_UNREACHABLE = {2002, 2003, 2005, 2006, 2013, 2055}
_MYSQL_DEADLOCK = {1213}


def masked(url: Any) -> str:
    """The database URL with its password replaced by ``***``."""
    try:
        return make_url(str(url) if not hasattr(url, "render_as_string") else url).render_as_string(
            hide_password=True)
    except Exception:  # not a URL: show nothing of it rather than a password
        return "(unparsable DATABASE_URL)"


def _driver_error(exc: BaseException) -> BaseException:
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def kind_of(exc: BaseException) -> str:
    """``auth`` (wrong user or password), ``no-database``, ``unreachable`` (the server does not
    answer, or dropped the connection) or ``other``."""
    err = _driver_error(exc)
    text = str(err).lower()
    code = err.args[0] if err.args and isinstance(err.args[0], int) else None
    sqlstate = getattr(err, "sqlstate", None) or ""
    if code in _MYSQL_AUTH or sqlstate.startswith("28") or "password authentication failed" in text \
            or "access denied" in text or "no password supplied" in text:
        return "auth"
    if code in _MYSQL_NO_DATABASE or sqlstate == "3D000" or ("database" in text and "does not exist" in text) \
            or "unknown database" in text:
        return "no-database"
    if code in _MYSQL_UNREACHABLE or sqlstate.startswith("08") or any(word in text for word in (
            "connection refused", "could not connect", "can't connect", "timeout expired", "timed out",
            "server closed the connection", "connection reset", "lost connection", "gone away",
            "no route to host", "name or service not known", "could not translate host name",
            "connection is closed", "the database system is starting up", "the database system is shutting down",
            "terminating connection", "unable to open database file")):
        return "unreachable"
    return "other"


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be used right now (as opposed to a bug in a
    statement): connection errors, wrong credentials, a missing database."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    return (exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError)
            or (isinstance(exc, sa_exc.OperationalError) and kind_of(exc) != "other"))


def is_deadlock(exc: BaseException) -> bool:
    """Whether the server rolled the transaction back to break a deadlock (MySQL/MariaDB 1213,
    PostgreSQL 40P01): nothing was written, and running it again is the cure."""
    err = _driver_error(exc)
    code = err.args[0] if err.args and isinstance(err.args[0], int) else None
    return code in _MYSQL_DEADLOCK or getattr(err, "sqlstate", None) == "40P01"


def describe(url: Any, exc: BaseException) -> str:
    """One line: which database, what is wrong, what to check."""
    from .errors import AmpalibeError

    if isinstance(exc, AmpalibeError):  # SchemaError: its message says it all
        return " ".join(str(exc).split())
    where = masked(url)
    err = _driver_error(exc)
    cause = " ".join(f"{type(err).__name__}: {err}".split())
    kind = kind_of(exc)
    if kind == "auth":
        return (f"the database {where} refused the login: wrong user or password ({cause}). "
                "Check DATABASE_URL (or DB_USER / DB_PASSWORD).")
    if kind == "no-database":
        return f"the database {where} does not exist ({cause}). Create it, or fix its name in DATABASE_URL (DB_NAME)."
    if kind == "unreachable":
        if where.startswith("sqlite"):
            return f"cannot open the SQLite database {where} ({cause}): does its folder exist, and is it writable?"
        return (f"cannot reach the database server of {where} ({cause}): is it running, and are the host and "
                "port right?")
    return f"the database {where} failed: {cause}"


class Outage:
    """One process's view of whether its database is reachable.

    :param url: for the messages (shown with the password masked).
    :param clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, url: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.clock = clock
        self._lock = threading.Lock()
        self.since: float | None = None
        self.refused = 0  # webhook posts answered 503 during this outage

    @property
    def down(self) -> bool:
        return self.since is not None

    def _start(self, exc: BaseException, what: str) -> None:
        self.since = self.clock()
        logger.error("%s; %s", describe(self.url, exc), what)

    def webhook_failed(self, exc: BaseException) -> None:
        """A webhook post could not be recorded (it is answered 503): one line when the outage starts."""
        with self._lock:
            self.refused += 1
            if self.since is None:
                self._start(exc, "answering 503 to webhook posts (Facebook sends them again) until it is back")

    def retry_failed(self, exc: BaseException, next_try: float) -> None:
        """The executor's upkeep failed again: one line per backoff step."""
        with self._lock:
            if self.since is None:
                self._start(exc, f"retrying in {next_try:.1f} s")
                return
            reason = "schema not upgraded" if kind_of(exc) == "other" else kind_of(exc)
            logger.warning("database %s still unusable after %.0f s (%s); next try in %.1f s", masked(self.url),
                           self.clock() - self.since, reason, next_try)

    def failed(self, exc: BaseException) -> None:
        """Some work could not be done (it stays recorded): one line when the outage starts."""
        with self._lock:
            if self.since is None:
                self._start(exc, "recorded events wait until it is back")

    def failed_at_start(self, exc: BaseException) -> None:
        """The worker could not check the database at start: it starts anyway and keeps trying."""
        with self._lock:
            if self.since is None:
                self._start(exc, "starting anyway: webhook posts are answered 503 until it is back")

    def succeeded(self) -> None:
        """Something worked: say so once if an outage was going on."""
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            lasted, refused = self.clock() - self.since, self.refused
            self.since, self.refused = None, 0
        logger.warning("database %s reachable again after %.0f s (%d webhook post%s answered 503 meanwhile)",
                       masked(self.url), lasted, refused, "" if refused == 1 else "s")


_outages: dict[int, Outage] = {}
_outages_lock = threading.Lock()


def outage_for(engine: Engine) -> Outage:
    """The :class:`Outage` of ``engine`` in this process (shared by the webhook and the executor)."""
    with _outages_lock:
        found = _outages.get(id(engine))
        if found is None or found.url is not engine.url:
            found = _outages[id(engine)] = Outage(engine.url)
        return found
