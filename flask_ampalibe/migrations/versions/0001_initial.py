"""The tables of flask_ampalibe 0.1.0 (what ``amp_meta.schema_version = 1`` meant).

A database created before migrations existed has these tables: it is stamped at this revision,
not rebuilt; the tables it lacks (a 1.1.9 database adapted by ``ampalibe migrate`` has only
``amp_user``) are created first (see :func:`flask_ampalibe.schema.prepare`).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The column types as they were at this revision (a migration never imports today's tables).
SECONDS: sa.Double[float] = sa.Double()
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


#: Tables in utf8mb4 on MySQL/MariaDB whatever the server's default (revision 0002 converts the
#: tables created before this).
UTF8MB4: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


def key(length: int) -> sa.String:
    """Compared byte for byte on MySQL/MariaDB (utf8mb4_bin)."""
    return sa.String(length).with_variant(mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"),
                                          "mysql", "mariadb")


def tables(metadata: sa.MetaData) -> None:
    """Declare this revision's tables on ``metadata`` (also used to complete a database from
    before migrations that lacks some of them, see :func:`flask_ampalibe.schema.prepare`)."""
    sa.Table(
        "amp_user", metadata,
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("user_id", key(64), nullable=False, unique=True),
        sa.Column("action", sa.Text, nullable=True),
        sa.Column("action_args", sa.Text, nullable=True),
        sa.Column("last_use", SECONDS, nullable=True),
        sa.Column("lang", sa.String(16), nullable=True),
        **UTF8MB4,
    )
    sa.Table(
        "amp_temp", metadata,
        sa.Column("user_id", key(64), primary_key=True),
        sa.Column("key", key(191), primary_key=True),
        sa.Column("value", LONG_TEXT, nullable=False),
        **UTF8MB4,
    )
    sa.Table(
        "amp_page", metadata,
        sa.Column("token", key(64), primary_key=True),
        sa.Column("user_id", key(64), nullable=False),
        sa.Column("data", LONG_TEXT, nullable=False),
        sa.Column("created_at", SECONDS, nullable=False),
        **UTF8MB4,
    )
    sa.Table(
        "amp_inbox", metadata,
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("event_key", key(191), nullable=False, unique=True),
        sa.Column("user_id", key(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("body", LONG_TEXT, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("received_at", SECONDS, nullable=False),
        sa.Column("finished_at", SECONDS, nullable=True),
        sa.Index("ix_amp_inbox_user_status", "user_id", "status", "timestamp"),
        sa.Index("ix_amp_inbox_status", "status", "received_at"),
        **UTF8MB4,
    )
    sa.Table(
        "amp_lease", metadata,
        sa.Column("user_id", key(64), primary_key=True),
        sa.Column("owner", sa.String(96), nullable=True),
        sa.Column("expires_at", SECONDS, nullable=False),
        sa.Index("ix_amp_lease_owner", "owner"),
        **UTF8MB4,
    )
    sa.Table(
        "amp_job", metadata,
        sa.Column("name", key(191), primary_key=True),
        sa.Column("slot", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(96), nullable=True),
        sa.Column("ran_at", SECONDS, nullable=True),
        **UTF8MB4,
    )
    sa.Table(
        "amp_meta", metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(191), nullable=False),
        **UTF8MB4,
    )


def upgrade() -> None:
    metadata = sa.MetaData()
    tables(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    for table in ("amp_meta", "amp_job", "amp_lease", "amp_inbox", "amp_page", "amp_temp", "amp_user"):
        op.drop_table(table)
