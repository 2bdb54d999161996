"""utf8mb4 tables on MySQL and MariaDB.

Revision 0001 declared utf8mb4 only on the key columns; the tables and their other text columns
took the server's default character set.  On a server whose default is latin1 (MariaDB's
compiled default, common on older installs) a webhook body, a temporary value or an action with
emoji or non-Latin text could not be stored (the inbox item was ``rejected``, ``set_temp``
failed).  This revision gives every flask_ampalibe table utf8mb4 (``utf8mb4_unicode_ci``) as its
default and on each text column, converting the rows, while the key columns keep the byte-exact
``utf8mb4_bin`` that 0001 declared.  Columns already right are left alone (a database created
utf8mb4 is not rebuilt).  Column types stay as they were: no ``CONVERT TO CHARACTER SET``, which
would widen TEXT to MEDIUMTEXT and, for a moment, make the key columns case-insensitive (two temp
keys that differ only in case would then collide).

SQLite and PostgreSQL: nothing to do (their text is always Unicode).  Downgrade: nothing either
(utf8mb4 tables are what 0001 itself now creates, and going back to latin1 could lose text).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 03:41:31.909186
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

CHARSET, COLLATION, KEY_COLLATION = "utf8mb4", "utf8mb4_unicode_ci", "utf8mb4_bin"
#: flask_ampalibe's tables and, for each, the columns 0001 declared utf8mb4_bin.
TABLES = {
    "amp_user": {"user_id"},
    "amp_temp": {"user_id", "key"},
    "amp_page": {"token", "user_id"},
    "amp_inbox": {"event_key", "user_id"},
    "amp_lease": {"user_id"},
    "amp_job": {"name"},
    "amp_meta": set(),
    "amp_alembic_version": set(),
}


def _changes(bind: sa.Connection, table: str, keys: set[str]) -> list[str]:
    """The ALTER TABLE clauses ``table`` needs (none when it is utf8mb4 already or missing)."""
    quote = bind.dialect.identifier_preparer.quote
    collation = bind.execute(sa.text(
        "SELECT table_collation FROM information_schema.tables WHERE table_schema = DATABASE() "
        "AND table_name = :table"), {"table": table}).scalar()
    if collation is None:
        return []
    changes = [] if collation == COLLATION else [f"DEFAULT CHARACTER SET {CHARSET} COLLATE {COLLATION}"]
    columns = bind.execute(sa.text(
        "SELECT column_name, column_type, is_nullable, character_set_name, collation_name "
        "FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = :table "
        "AND character_set_name IS NOT NULL ORDER BY ordinal_position"), {"table": table}).all()
    for name, column_type, nullable, charset, column_collation in columns:
        wanted = KEY_COLLATION if name in keys else COLLATION
        if (charset, column_collation) != (CHARSET, wanted):
            # Our text columns have no server default (1.1.9's amp_user: DEFAULT NULL only).
            null = "NULL" if nullable == "YES" else "NOT NULL"
            changes.append(f"MODIFY {quote(name)} {column_type} CHARACTER SET {CHARSET} COLLATE {wanted} {null}")
    return changes


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return
    for table, keys in TABLES.items():
        changes = _changes(bind, table, keys)
        if changes:  # one ALTER per table: its rows are rewritten once
            op.execute(f"ALTER TABLE {bind.dialect.identifier_preparer.quote(table)} {', '.join(changes)}")


def downgrade() -> None:
    pass
