"""Alembic's environment for flask_ampalibe's own tables.

It is run by :mod:`flask_ampalibe.schema`, which passes the connection in
``config.attributes["connection"]``.  Only the ``amp_*`` tables of
:data:`flask_ampalibe.tables.metadata` are ours: autogenerate never looks at a bot's own
tables, and the version lives in its own table (:data:`~flask_ampalibe.schema.VERSION_TABLE`),
so a bot's own Alembic in the same database never meets ours.
"""
from __future__ import annotations

from typing import Any

from alembic import context

from flask_ampalibe.schema import VERSION_TABLE, include_name
from flask_ampalibe.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - always run through flask_ampalibe.schema
    raise RuntimeError("flask_ampalibe's migrations run through `ampalibe db upgrade`, not the alembic command.")

options: dict[str, Any] = {
    "connection": connection,
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "include_name": include_name,
    "compare_type": True,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    "render_as_batch": connection.dialect.name == "sqlite",
}
context.configure(**options)
with context.begin_transaction():
    context.run_migrations()
