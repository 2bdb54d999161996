"""The test suite's database server fixtures, over the servers of ``dbservers.py``.

Imported by ``tests/conftest.py``::

    from dbfixtures import database_url, mariadb_server, postgresql_server  # noqa: F401

``database_url`` is parametrized over ``sqlite``, ``mariadb`` and
``postgresql``; every test that uses it runs three times, each time on an
empty database.
"""
from __future__ import annotations

import pytest

from dbservers import MariaDBServer, PostgreSQLServer, ServerUnavailable, _Server

__all__ = ["start_or_fail", "mariadb_server", "postgresql_server", "database_url"]


def start_or_fail(cls: type[_Server]) -> _Server:
    """Start a server of ``cls`` or fail the test (never skip)."""
    try:
        return cls().start()
    except ServerUnavailable as exc:
        # No skips, in CI or elsewhere: a suite that silently skips the server
        # backends would prove nothing about them.
        pytest.fail(f"Could not start the {cls.name} test server: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def mariadb_server():
    """A running :class:`MariaDBServer`, started on first use, stopped at session end."""
    server = start_or_fail(MariaDBServer)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgresql_server():
    """A running :class:`PostgreSQLServer`, started on first use, stopped at session end."""
    server = start_or_fail(PostgreSQLServer)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def database_url(request, tmp_path):
    """SQLAlchemy URL of an empty database, once per backend.

    Server databases are emptied before each test (all tables dropped), so
    the URL is the same for every test of a session and engines cached per
    URL stay valid; code under test must create its schema (idempotently).
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ampalibe.db'}"
        return
    server = request.getfixturevalue(f"{request.param}_server")
    server.reset()
    yield server.url
