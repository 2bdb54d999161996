"""``ampalibe migrate``: port an Ampalibe 1.1.9 project folder in place.

What it does, each step idempotent (running it twice changes nothing the second time):

- rewrites the import lines of the project's ``.py`` files (``import ampalibe`` →
  ``import flask_ampalibe as ampalibe``, ``from ampalibe… import`` → ``from flask_ampalibe… import``);
  nothing else in them changes;
- makes ``conf.py`` read ``.env`` itself (three lines at its top), so the settings also reach it
  outside ``ampalibe run`` (``gunicorn core:app``, a script); ``requirements.txt`` names
  ``flask_ampalibe``; ``.env`` gets an ``AMP_APP_SECRET`` line to fill in;
- copies 1.1.9's temporary data (the TinyDB file ``assets/private/_db.json``, one document per
  user) into the bot's SQL store (``amp_temp``), then renames the file ``_db.json.migrated``;
- adapts 1.1.9's ``amp_user`` table in place (its rows stay as they are): adds the
  ``action_args`` column and turns ``last_use`` into epoch seconds; then creates the other tables
  and upgrades them to this release's schema revision (as ``ampalibe db upgrade``).

``--dry-run`` prints the file changes as a diff and what would be copied, and changes nothing.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import click

from . import loader
from .loader import ProjectError

__all__ = ["Plan", "plan", "apply", "port_imports", "register"]

TINYDB = Path("assets") / "private" / "_db.json"

# 1.1.9 modules whose names we do not have: what they exported is at our top level.
_TOP_LEVEL = {"utils", "logger", "decorators", "core", "tools", "source", "cmd"}
_IMPORT = re.compile(r"^(?P<indent>[ \t]*)import ampalibe(?P<rest>(?:[ \t]+as[ \t]+\w+)?[ \t]*(?:#.*)?)$")
_FROM = re.compile(r"^(?P<indent>[ \t]*)from ampalibe(?:\.(?P<module>\w+))?(?P<rest>[ \t]+import\b.*)$")
_CONF_HEADER = (
    "# Added by `ampalibe migrate`: read the .env next to this file (Ampalibe 1.1.9's `ampalibe run`\n"
    "# exported it), so these settings also reach a bot started another way.\n"
    "import os as _os\n"
    "from dotenv import load_dotenv as _load_dotenv\n"
    "_load_dotenv(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), \".env\"), override=False)\n"
)
_SECRET_LINES = (
    "\n# APP SECRET (App Dashboard > App settings > Basic): flask_ampalibe checks every webhook's signature\n"
    "export AMP_APP_SECRET=\n"
)
_SKIP_DIRS = {"__pycache__", "venv", "env", "node_modules", "site-packages", "build", "dist"}


def port_imports(text: str) -> str:
    """``text`` with its Ampalibe import lines rewritten for flask_ampalibe; other lines unchanged."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        match = _IMPORT.match(body)
        if match:
            rest = match.group("rest")
            alias = "" if re.match(r"[ \t]+as[ \t]", rest) else " as ampalibe"
            body = f"{match.group('indent')}import flask_ampalibe{alias}{rest}"
        else:
            match = _FROM.match(body)
            if match:
                module = match.group("module")
                target = "flask_ampalibe" if module in (None, *_TOP_LEVEL) else f"flask_ampalibe.{module}"
                body = f"{match.group('indent')}from {target}{match.group('rest')}"
        out.append(body + end)
    return "".join(out)


@dataclass
class Plan:
    """What :func:`apply` would do to one project folder."""

    folder: Path
    #: ``{path: (old text, new text)}`` of the files to rewrite.
    files: dict[Path, tuple[str, str]] = field(default_factory=dict)
    #: ``{user_id: {key: value}}`` from the TinyDB file.
    temps: dict[str, dict[str, Any]] = field(default_factory=dict)
    database_url: str = ""

    def diff(self) -> str:
        """The file changes as a unified diff (paths relative to the folder)."""
        chunks: list[str] = []
        for path, (old, new) in self.files.items():
            name = path.relative_to(self.folder).as_posix()
            chunks.extend(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                               f"a/{name}", f"b/{name}"))
        return "".join(c if c.endswith("\n") else c + "\n" for c in chunks)


def plan(folder: str | os.PathLike[str]) -> Plan:
    """Look at ``folder`` (an Ampalibe 1.1.9 project) and say what migrating it changes.

    :raises ProjectError: when the folder has no ``core.py`` or its TinyDB file is unreadable.
    """
    path = loader.find_project(folder)
    result = Plan(path)
    for py in _python_files(path):
        old = py.read_text(encoding="utf-8")
        new = port_imports(old)
        if py == path / loader.CONF and "load_dotenv" not in new:
            new = _with_header(new)
        if new != old:
            result.files[py] = (old, new)
    for name, change in (("requirements.txt", _requirements), (".env", _env)):
        file = path / name
        if file.is_file():
            old = file.read_text(encoding="utf-8")
            new = change(old)
            if new != old:
                result.files[file] = (old, new)
    result.temps = _read_tinydb(path / TINYDB)
    result.database_url = _database_url(path)
    return result


def apply(migration: Plan) -> None:
    """Carry ``migration`` out: write the files, adapt ``amp_user``, copy the temporary data."""
    from .. import schema
    from ..engine import make_engine
    from ..storage import Store

    for file, (_, new) in migration.files.items():
        tmp = file.with_name(file.name + ".migrating")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, file)
    engine = make_engine(migration.database_url)
    try:
        _adapt_users(engine)
        schema.upgrade(engine)  # the other tables, at this release's revision
        # One transaction: a migration that fails half-way leaves no half of the data behind.
        Store(engine).set_temps((user_id, key, value) for user_id, values in migration.temps.items()
                                for key, value in values.items())
    finally:
        engine.dispose()
    tinydb = migration.folder / TINYDB
    if migration.temps and tinydb.is_file():
        os.replace(tinydb, tinydb.with_name(tinydb.name + ".migrated"))


# -- the pieces --------------------------------------------------------------------------------------
def _python_files(path: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(root) / name


def _with_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    at = 0
    if lines and lines[0].startswith("#!"):
        at = 1
    while at < len(lines) and lines[at].startswith("from __future__"):
        at += 1
    return "".join(lines[:at]) + _CONF_HEADER + "".join(lines[at:])


def _requirements(text: str) -> str:
    return re.sub(r"(?im)^ampalibe\b[^\n]*$", "flask_ampalibe", text)


def _env(text: str) -> str:
    if re.search(r"(?m)^\s*(export\s+)?AMP_APP_SECRET\s*=", text):
        return text
    return text.rstrip("\n") + "\n" + _SECRET_LINES


def _read_tinydb(file: Path) -> dict[str, dict[str, Any]]:
    """``{user_id: {key: value}}`` from 1.1.9's TinyDB file (``{"_default": {"1": {...}}}``)."""
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8") or "{}")
    except ValueError as exc:
        raise ProjectError(f"{file} is not valid JSON ({exc}); fix or remove it, then run `ampalibe migrate` "
                           "again.") from None
    out: dict[str, dict[str, Any]] = {}
    for table in (data.values() if isinstance(data, dict) else ()):
        for doc in (table.values() if isinstance(table, dict) else ()):
            if not isinstance(doc, dict) or doc.get("user_id") is None:
                continue
            values = out.setdefault(str(doc["user_id"]), {})
            values.update({str(k): v for k, v in doc.items() if k != "user_id"})
    return {user: values for user, values in out.items() if values}


def _database_url(path: Path) -> str:
    """The database the project's bot uses: the URL ``ampalibe.init`` would find (see
    :meth:`~flask_ampalibe.config.Settings.load`), with ``conf.py`` and ``.env`` read here."""
    from ..config import Settings

    conf = loader._configuration(path)  # conf.py read with .env, in a throw-away namespace
    with loader._isolated(path):
        loader.load_env(path)
        url = Settings.load(conf=conf, environ=os.environ, base_dir=str(path)).database_url
    return url or f"sqlite:///{path / 'ampalibe.db'}"


def _adapt_users(engine: Any) -> None:
    """Give a 1.1.9 ``amp_user`` table the columns and types flask_ampalibe writes; rows stay."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    if not inspector.has_table("amp_user"):
        return
    columns = {c["name"]: c for c in inspector.get_columns("amp_user")}
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if "action_args" not in columns:
            conn.execute(text("ALTER TABLE amp_user ADD COLUMN action_args TEXT"))
        last_use = columns.get("last_use")
        if last_use is None:
            return
        kind = str(last_use["type"]).upper()
        if dialect == "sqlite":
            # SQLite keeps 1.1.9's text timestamps in the column: turn them into seconds.
            conn.execute(text("UPDATE amp_user SET last_use = CAST(strftime('%s', last_use) AS REAL) "
                              "WHERE typeof(last_use) = 'text'"))
        elif "TIME" in kind or "DATE" in kind:
            if dialect == "postgresql":
                conn.execute(text("ALTER TABLE amp_user ALTER COLUMN last_use DROP DEFAULT, "
                                  "ALTER COLUMN last_use DROP NOT NULL, ALTER COLUMN last_use TYPE DOUBLE PRECISION "
                                  "USING EXTRACT(EPOCH FROM last_use)"))
            else:  # MySQL / MariaDB
                conn.execute(text("ALTER TABLE amp_user ADD COLUMN last_use_seconds DOUBLE NULL"))
                conn.execute(text("UPDATE amp_user SET last_use_seconds = UNIX_TIMESTAMP(last_use)"))
                conn.execute(text("ALTER TABLE amp_user DROP COLUMN last_use"))
                conn.execute(text("ALTER TABLE amp_user CHANGE last_use_seconds last_use DOUBLE NULL"))


# -- the command ---------------------------------------------------------------------------------------
@click.command("migrate")
@click.argument("directory", required=False, default=".",
                type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print what would change (a diff) and change nothing.")
def migrate(directory: Path, dry_run: bool) -> None:
    """Port the Ampalibe 1.1.9 project in DIRECTORY (default: here) in place.

    Rewrites the import lines, keeps conf.py and .env working, and copies the temporary data
    of assets/private/_db.json into the bot's database.
    """
    migration = plan(directory)
    diff = migration.diff()
    if diff:
        click.echo(diff, nl=False)
    users = len(migration.temps)
    values = sum(len(v) for v in migration.temps.values())
    if users:
        verb = "Would copy" if dry_run else "Copying"
        click.echo(f"{verb} {values} temporary value(s) of {users} user(s) from {TINYDB.as_posix()} "
                   f"into {_safe_url(migration.database_url)}.")
    if dry_run:
        click.echo("Dry run: nothing was changed." if diff or users else "Nothing to migrate.")
        return
    apply(migration)
    click.echo(f"Migrated {len(migration.files)} file(s). Next: fill in AMP_APP_SECRET in .env, then `ampalibe run`.")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def register(cli: click.Group) -> None:
    """Add ``migrate`` to the ``ampalibe`` group."""
    cli.add_command(migrate)
