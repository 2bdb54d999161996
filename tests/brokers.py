"""A throwaway Redis server for the Celery executor's tests, started like the database servers.

It lives in its own temporary directory, listens on a free port of 127.0.0.1, keeps nothing
on disk (no RDB snapshot, no AOF: a restart loses every queued message, the worst case for the
bot), and is installed from the Debian package ``redis-server`` when missing and we are root.
"""
from __future__ import annotations

import os
import shutil
import socket

import pytest

from dbfixtures import start_or_fail
from dbservers import ServerUnavailable, _Server, apt_install

__all__ = ["RedisServer", "redis_server"]

INSTALL_HINT = ("Install it with `apt-get install redis-server` (Debian/Ubuntu) or run the suite with "
                "`bash tests/run.sh` as root, which does it for you.")


def _find_redis() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)), None)


class RedisServer(_Server):
    """A private redis-server; :attr:`url` is a Celery broker URL (database 0)."""

    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        found = _find_redis()
        if found is None:
            apt_install("redis-server")
            found = _find_redis()
            if found is None:
                raise ServerUnavailable(f"redis-server installed but not found. {INSTALL_HINT}")
        self.binary = found

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _init_datadir(self) -> None:
        pass

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        return [self.binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.tmpdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
                "--maxclients", "1000"]

    def command(self, *words: str) -> bytes:
        """Send one command (inline protocol) and return the first reply line."""
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.strip()

    def _ping(self) -> None:
        if self.command("PING") != b"+PONG":
            raise ServerUnavailable("redis-server does not answer PING yet")

    def _launch(self) -> None:
        try:
            super()._launch()
        except ServerUnavailable as exc:
            if "Address already in use" in str(exc):
                raise ServerUnavailable(f"port in use: {exc}") from exc
            raise

    def _setup(self) -> None:
        pass

    def reset(self) -> None:
        self.command("FLUSHALL")

    def stop_now(self) -> None:
        """Stop the server, keeping its port and directory (start it again with :meth:`start_again`)."""
        self._shutdown()

    def start_again(self) -> None:
        self._launch()


@pytest.fixture(scope="session")
def redis_server():
    """A running :class:`RedisServer`, started on first use, stopped at session end."""
    server = start_or_fail(RedisServer)
    yield server
    server.stop()
