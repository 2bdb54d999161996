"""The library's tables (SQLAlchemy Core): users, temporary data, pages, the webhook inbox,
leases, scheduled jobs' runs and ``amp_meta``.

Their own module so that :mod:`flask_ampalibe.storage` (which runs statements on them) and
:mod:`flask_ampalibe.schema` / the Alembic migrations (which compare and create them) both import
them without importing each other.  A change here needs a migration: see the README's schema
section.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Double, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.dialects import mysql

__all__ = ["metadata", "users", "temps", "pages", "inbox", "leases", "jobs", "meta"]

metadata = MetaData()
# Epoch seconds: MySQL's FLOAT is single precision (a 128 s step at today's epoch), so ask for a
# double everywhere.
_Seconds: Double[float] = Double()
_LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _Key(length: int) -> String:
    """A key column compared byte for byte: MySQL's default collations would equate 'a' and 'A',
    'cafe' and 'café', and every emoji with every other."""
    return String(length).with_variant(mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"),
                                       "mysql", "mariadb")


_Id = BigInteger().with_variant(Integer(), "sqlite")
#: MySQL/MariaDB: utf8mb4 tables whatever the server's default character set (a latin1 default
#: could not store emoji or non-Latin text); key columns stay utf8mb4_bin.
_UTF8MB4: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}

users = Table(
    "amp_user", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("user_id", _Key(64), nullable=False, unique=True),
    Column("action", Text, nullable=True),
    Column("action_args", Text, nullable=True),
    Column("last_use", _Seconds, nullable=True),
    Column("lang", String(16), nullable=True),
    **_UTF8MB4,
)

temps = Table(
    "amp_temp", metadata,
    Column("user_id", _Key(64), primary_key=True),
    Column("key", _Key(191), primary_key=True),
    Column("value", _LongText, nullable=False),
    **_UTF8MB4,
)

pages = Table(
    "amp_page", metadata,
    Column("token", _Key(64), primary_key=True),
    Column("user_id", _Key(64), nullable=False),
    Column("data", _LongText, nullable=False),
    Column("created_at", _Seconds, nullable=False),
    **_UTF8MB4,
)

inbox = Table(
    "amp_inbox", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("event_key", _Key(191), nullable=False, unique=True),
    Column("user_id", _Key(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("body", _LongText, nullable=False),
    Column("status", String(8), nullable=False),  # pending, running, done, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("received_at", _Seconds, nullable=False),
    Column("finished_at", _Seconds, nullable=True),
    Index("ix_amp_inbox_user_status", "user_id", "status", "timestamp"),
    Index("ix_amp_inbox_status", "status", "received_at"),
    **_UTF8MB4,
)

leases = Table(
    "amp_lease", metadata,
    Column("user_id", _Key(64), primary_key=True),
    Column("owner", String(96), nullable=True),
    Column("expires_at", _Seconds, nullable=False, default=0.0),
    Index("ix_amp_lease_owner", "owner"),
    **_UTF8MB4,
)

jobs = Table(
    "amp_job", metadata,
    Column("name", _Key(191), primary_key=True),
    Column("slot", BigInteger, nullable=False),
    Column("owner", String(96), nullable=True),
    Column("ran_at", _Seconds, nullable=True),
    **_UTF8MB4,
)

meta = Table(
    "amp_meta", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(191), nullable=False),
    **_UTF8MB4,
)
