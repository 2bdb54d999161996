"""The schema of flask_ampalibe's own tables: versioned by Alembic, checked when a bot starts.

- The revisions are in ``flask_ampalibe/migrations/versions/`` (shipped with the package); the
  revision a database is at is kept in its own table, :data:`VERSION_TABLE`
  (``amp_alembic_version``), so a bot's own Alembic (``alembic_version``) never meets ours.
- At start (:func:`prepare`, on the first use of a :class:`~flask_ampalibe.storage.Store`), an
  empty database gets the tables and is stamped at the newest revision; a database created
  before migrations existed (``amp_meta.schema_version = 1``, no version table) is recognised and
  stamped at :data:`LEGACY_REVISION`, its data kept.  Then the database must be at the newest
  revision: behind it, :class:`SchemaError` says to run ``ampalibe db upgrade``; at a revision
  this release does not know (a newer release wrote it), the bot refuses to run.
- :func:`upgrade` (``ampalibe db upgrade``, ``flask ampalibe db upgrade``) runs the missing
  revisions.

Adding a revision (for flask_ampalibe's developers): change the tables in
:mod:`flask_ampalibe.tables`, then ``python -m flask_ampalibe.migrations revision "what changes"
--autogenerate`` writes ``versions/NNNN_what_changes.py`` (review it; without
``--autogenerate`` it is an empty revision to fill in).
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .errors import ConfigurationError

__all__ = ["VERSION_TABLE", "LEGACY_REVISION", "SchemaError", "SchemaStatus", "status", "prepare", "upgrade",
           "head", "include_name"]

#: The table that holds the revision of flask_ampalibe's tables (not Alembic's default name).
VERSION_TABLE = "amp_alembic_version"
#: Where the migrations are (a ``package:folder`` location; tests point it elsewhere).
SCRIPT_LOCATION = "flask_ampalibe:migrations"
#: The revision of the tables of releases without migrations (``amp_meta.schema_version = 1``).
LEGACY_REVISION = "0001"

UPGRADE_HINT = "run `ampalibe db upgrade` in the bot's folder (or `flask --app <your app> ampalibe db upgrade`)"


class SchemaError(ConfigurationError):
    """The database's tables are not at the revision this version of flask_ampalibe needs; the
    message says what to run."""


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands.

    :ivar state: ``empty`` (none of our tables), ``legacy`` (tables from before migrations),
        ``behind``, ``current`` or ``ahead`` (a revision this release does not know).
    :ivar revision: the database's revision (``None`` when empty or legacy).
    :ivar head: the newest revision this release knows.
    """

    state: str
    revision: str | None
    head: str


def _tables() -> Any:
    from .tables import metadata

    return metadata.tables


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """For autogenerate: only flask_ampalibe's own tables (a bot's tables are none of ours)."""
    if type_ == "table":
        return name in _tables()
    return True


_scripts: dict[str, Any] = {}


def _config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def _script() -> Any:
    from alembic.script import ScriptDirectory

    script = _scripts.get(SCRIPT_LOCATION)
    if script is None:
        script = _scripts[SCRIPT_LOCATION] = ScriptDirectory.from_config(_config())
    return script


def head() -> str:
    """The newest revision of this release."""
    return _script().get_current_head()


def _version_table() -> Table:
    """Alembic's version table under our name (Alembic creates it the same way)."""
    return Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), nullable=False),
                 PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
                 mysql_charset="utf8mb4", mysql_collate="utf8mb4_unicode_ci")


def _context(conn: Connection) -> Any:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})


def _status(conn: Connection) -> SchemaStatus:
    newest = head()
    names = set(inspect(conn).get_table_names())
    if VERSION_TABLE not in names:
        return SchemaStatus("legacy" if names & set(_tables()) else "empty", None, newest)
    revisions = _context(conn).get_current_heads()
    if not revisions:  # being created by another process (see prepare)
        return SchemaStatus("empty", None, newest)
    script = _script()
    known = []
    for revision in revisions:
        try:
            known.append(script.get_revision(revision))
        except Exception:  # alembic's ResolutionError/CommandError: a revision we do not have
            return SchemaStatus("ahead", ",".join(revisions), newest)
    if revisions == (newest,):
        return SchemaStatus("current", newest, newest)
    return SchemaStatus("behind", ",".join(revisions), newest)


def status(engine: Engine) -> SchemaStatus:
    """Where the database of ``engine`` stands (reads only)."""
    with engine.connect() as conn:
        return _status(conn)


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _version() -> str:
    from .version import __version__

    return __version__


def _refuse(engine: Engine, found: SchemaStatus) -> SchemaError:
    if found.state == "ahead":
        return SchemaError(
            f"The database {_where(engine)} is at schema revision {found.revision}, which flask_ampalibe "
            f"{_version()} does not know (its newest is {found.head}): a newer flask_ampalibe upgraded it. "
            "Refusing to use it: install that newer release (pip install -U flask_ampalibe)."
        )
    return SchemaError(
        f"The database {_where(engine)} is at schema revision {found.revision}; flask_ampalibe {_version()} "
        f"needs {found.head}: {UPGRADE_HINT}."
    )


def _with_retries(engine: Engine, work: Any) -> Any:
    """Run ``work(conn)`` in a transaction; again if another process raced us to a CREATE or
    a stamp (the second attempt sees what the other one did)."""
    attempts = 10  # MariaDB refuses to read a table another connection is creating (error 1684)
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _complete_legacy(conn: Connection) -> None:
    """Create the tables of :data:`LEGACY_REVISION` that a database from before migrations lacks
    (an interrupted first start; a 1.1.9 database that ``ampalibe migrate`` adapted has only
    ``amp_user``), as that revision declares them; existing tables are left as they are."""
    metadata = MetaData()
    _script().get_revision(LEGACY_REVISION).module.tables(metadata)
    metadata.create_all(conn, checkfirst=True)


def prepare(engine: Engine) -> SchemaStatus:
    """Make sure the database is ready for this release, as at a bot's start.

    An empty database gets the tables, stamped at the newest revision; a database from before
    migrations is stamped at :data:`LEGACY_REVISION` (nothing else changes).

    :raises SchemaError: when the database is behind (run ``ampalibe db upgrade``) or ahead.
    """
    from .tables import metadata

    def work(conn: Connection) -> SchemaStatus:
        found = _status(conn)
        if found.state == "empty":
            # The version table first: a process racing us then never takes our new tables for
            # ones from before migrations (MySQL commits each CREATE at once).
            _version_table().create(conn, checkfirst=True)
            metadata.create_all(conn, checkfirst=True)
            _context(conn).stamp(_script(), found.head)
            return SchemaStatus("current", found.head, found.head)
        if found.state == "legacy":
            _complete_legacy(conn)
            _context(conn).stamp(_script(), LEGACY_REVISION)
            found = _status(conn)
        return found

    found = _with_retries(engine, work)
    if found.state != "current":
        raise _refuse(engine, found)
    return found


def upgrade(engine: Engine, revision: str = "head") -> tuple[SchemaStatus, SchemaStatus]:
    """Run the revisions the database lacks (all of them on an empty database).

    :returns: the status before and after.
    :raises SchemaError: when the database is at a revision this release does not know.
    """
    from alembic import command

    def work(conn: Connection) -> tuple[SchemaStatus, SchemaStatus]:
        before = _status(conn)
        if before.state == "ahead":
            raise _refuse(engine, before)
        if before.state == "legacy":
            _complete_legacy(conn)
            _context(conn).stamp(_script(), LEGACY_REVISION)
        command.upgrade(_config(conn), revision)
        return before, _status(conn)

    return _with_retries(engine, work)


# -- writing a revision (developers of flask_ampalibe) ------------------------------------------
def _next_id() -> str:
    numbers = [int(rev.revision) for rev in _script().walk_revisions() if rev.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def new_revision(message: str, autogenerate: bool = False) -> str:
    """Write the next revision file; with ``autogenerate``, filled with what differs between the
    tables of :mod:`flask_ampalibe.tables` and a database upgraded to the current head.

    :returns: the path of the new file.
    """
    from alembic import command
    from alembic.script import Script

    from .engine import make_engine

    rev_id = _next_id()
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "revision"
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{os.path.join(folder, 'head.db')}")
        try:
            upgrade(engine)
            with engine.begin() as conn:
                script = command.revision(_config(conn), message, autogenerate=autogenerate, rev_id=rev_id,
                                          head="head")
        finally:
            engine.dispose()
    assert isinstance(script, Script)  # a single head gives a single new script
    path = script.path
    target = os.path.join(os.path.dirname(path), f"{rev_id}_{slug}.py")
    os.replace(path, target)
    _scripts.clear()
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flask_ampalibe.migrations",
                                     description="Write a new revision of flask_ampalibe's tables.")
    sub = parser.add_subparsers(dest="command", required=True)
    rev = sub.add_parser("revision", help="write versions/NNNN_<message>.py")
    rev.add_argument("message")
    rev.add_argument("--autogenerate", action="store_true",
                     help="fill it with the difference between tables.py's tables and the current head")
    args = parser.parse_args(argv)
    print(new_revision(args.message, args.autogenerate))
    return 0
