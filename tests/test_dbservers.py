"""The throwaway database servers of ``tests/dbservers.py`` work as the other tests expect."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

TEXTS = [
    "😀",  # 4-byte UTF-8: needs utf8mb4 on MariaDB
    "مرحبا بالعالم",  # right-to-left
    "𝄞 𠜎 👩🏽‍💻 e\u0301",  # astral plane, ZWJ sequence, combining mark
]


@pytest.fixture
def engine(database_url):
    engine = sa.create_engine(database_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


def _notes_table() -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        "notes", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.String(200)),
        sa.Column("body", sa.Text),
    )
    return metadata, table


def test_database_starts_empty_and_unicode_round_trips(engine):
    assert sa.inspect(engine).get_table_names() == []
    metadata, notes = _notes_table()
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [{"text": t, "body": t * 3} for t in TEXTS])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(notes.c.text, notes.c.body).order_by(notes.c.id)).all()
    assert [tuple(r) for r in rows] == [(t, t * 3) for t in TEXTS]
    # Comparisons happen in the database too, not only storage.
    with engine.connect() as conn:
        assert conn.execute(sa.select(notes.c.id).where(notes.c.text == "😀")).scalar() == 1


@pytest.mark.parametrize("name", ["mariadb", "postgresql"])
def test_restart_keeps_data_and_pool_recovers(request, name):
    server = request.getfixturevalue(f"{name}_server")
    server.reset()
    engine = sa.create_engine(server.url, pool_pre_ping=True)
    try:
        metadata, notes = _notes_table()
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(notes.insert().values(text="before 😀"))
        port = server.port
        server.restart()
        assert server.port == port
        # The pooled connection died with the server; pre-ping replaces it.
        with engine.begin() as conn:
            conn.execute(notes.insert().values(text="after"))
            texts = conn.execute(sa.select(notes.c.text).order_by(notes.c.id)).scalars().all()
        assert texts == ["before 😀", "after"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", ["mariadb", "postgresql"])
def test_password_is_checked(request, name):
    server = request.getfixturevalue(f"{name}_server")
    url = sa.make_url(server.url).set(password="wrong")
    engine = sa.create_engine(url)
    try:
        with pytest.raises(sa.exc.OperationalError):
            with engine.connect():
                pass
    finally:
        engine.dispose()


def test_mariadb_defaults_to_utf8mb4(mariadb_server):
    engine = sa.create_engine(mariadb_server.url)
    try:
        with engine.connect() as conn:
            charset = conn.execute(sa.text("SELECT @@character_set_database")).scalar()
        assert charset == "utf8mb4"
    finally:
        engine.dispose()


def test_url_schemes(mariadb_server, postgresql_server):
    assert mariadb_server.url.startswith("mysql+pymysql://")
    assert mariadb_server.url.endswith("?charset=utf8mb4")
    assert postgresql_server.url.startswith("postgresql+psycopg://")
