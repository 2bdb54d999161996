"""Throwaway MariaDB and PostgreSQL servers for the test suite and the benchmark.

Each server lives in its own temporary directory (data, socket, pid and log
files), listens on a free port of 127.0.0.1 and uses password authentication
for the application user. A missing server is installed from Debian packages
when we run as root (CI); otherwise the error says what to install.

No pytest here: the benchmark (``bench/run.py``) starts the same servers.
The test suite's fixtures are in ``dbfixtures.py``.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

__all__ = [
    "DATABASE_NAME",
    "ServerUnavailable",
    "MariaDBServer",
    "PostgreSQLServer",
]

DATABASE_NAME = "ampalibe_test"
APP_USER = "ampalibe"
# Throwaway credentials for servers that only listen on loopback and whose
# data is deleted at the end of the session.
APP_PASSWORD = "ampalibe-test-pw"
ADMIN_PASSWORD = "ampalibe-admin-pw"

START_TIMEOUT = 60.0  # generous for a loaded 2-core CI machine; typical start is 1-3 s
STOP_TIMEOUT = 30.0

INSTALL_HINT = (
    "Install the servers with `apt-get install mariadb-server postgresql` "
    "(Debian/Ubuntu) or run the suite with `bash tests/run.sh` as root, which does it for you."
)


class ServerUnavailable(RuntimeError):
    """A database server could not be installed or started."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_apt_lock = threading.Lock()
_apt_updated = False


def apt_install(*packages: str) -> None:
    """Install Debian packages (``apt-get update`` at most once per process).

    Services are kept from starting during the install (a temporary
    ``policy-rc.d``) since we only run private instances.
    """
    global _apt_updated
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServerUnavailable(
            f"{' and '.join(packages)} not installed and cannot be installed automatically "
            f"(need root and apt-get). {INSTALL_HINT}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q"]
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    with _apt_lock:
        try:
            if not policy.exists():
                policy.write_text("#!/bin/sh\nexit 101\n")
                policy.chmod(0o755)
                created_policy = True
            if not _apt_updated:
                _run(apt + ["update"], env=env, what="apt-get update")
                _apt_updated = True
            _run(apt + ["install", "-y", "--no-install-recommends", *packages], env=env,
                 what=f"apt-get install {' '.join(packages)}")
        finally:
            if created_policy:
                policy.unlink()


def _run(cmd: list[str], *, what: str, timeout: float = 900, **kwargs) -> str:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerUnavailable(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        raise ServerUnavailable(f"{what} failed with exit code {proc.returncode}:\n{proc.stdout[-3000:]}")
    return proc.stdout


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Server:
    """What both servers share: temp dir, process handling, readiness wait."""

    name = "server"
    scheme = ""
    query = ""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.user = APP_USER
        self.password = APP_PASSWORD
        self.database = DATABASE_NAME
        self.tmpdir: Path | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    # -- public API

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database, as the application user."""
        return (f"{self.scheme}://{self.user}:{self.password}@{self.host}:{self.port}/"
                f"{self.database}{self.query}")

    def start(self) -> "_Server":
        """Create the data directory and start the server (once)."""
        if self.tmpdir is not None:
            raise RuntimeError(f"{self.name} already started")
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"amp-{self.name}-", dir=self._temp_base()))
        self.log_path = self.tmpdir / "server.log"
        atexit.register(self.stop)
        try:
            self._init_datadir()
            for attempt in range(3):
                self.port = free_port()
                try:
                    self._launch()
                    break
                except ServerUnavailable as exc:
                    # Another process may have taken the port between
                    # free_port() and the bind.
                    if attempt == 2 or "in use" not in str(exc):
                        raise
            self._setup()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """Stop the server and start it again on the same port and data dir."""
        self._shutdown()
        self._launch()

    def stop(self) -> None:
        """Stop the server and delete its temporary directory."""
        try:
            self._shutdown()
        finally:
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None

    def reset(self) -> None:
        """Drop everything in the test database (fast: no new database)."""
        raise NotImplementedError

    def _temp_base(self) -> str | None:
        return None  # tempfile's default

    # -- process handling

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _server_pid(self) -> int | None:
        """Pid of the server process itself (may differ from the Popen child)."""
        return self._proc.pid if self._proc else None

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    def _launch(self) -> None:
        assert self.tmpdir is not None and self.log_path is not None
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmpdir,
        )
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = _tail(self.log_path)
                self._close_proc()
                raise ServerUnavailable(f"{self.name} exited during start-up; log:\n{log}")
            try:
                self._ping()
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet, any driver error
                last_error = exc
                time.sleep(0.1)
        log = _tail(self.log_path)
        self._shutdown()
        raise ServerUnavailable(
            f"{self.name} did not accept connections within {START_TIMEOUT:.0f} s "
            f"(last error: {last_error!r}); log:\n{log}"
        )

    def _shutdown(self) -> None:
        if self._proc is None:
            return
        pid = self._server_pid()
        if pid is not None and _pid_alive(pid):
            try:
                os.kill(pid, self._stop_signal())
            except ProcessLookupError:
                pass
        try:
            self._proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in {pid, self._proc.pid} - {None}:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._proc.wait(STOP_TIMEOUT)
        # The Popen child may be a wrapper (runuser); make sure the server is gone
        # before someone reuses its port or data dir.
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid is not None and _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._close_proc()

    def _close_proc(self) -> None:
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- per-server hooks

    def _init_datadir(self) -> None:
        raise NotImplementedError

    def _ping(self) -> None:
        raise NotImplementedError

    def _setup(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} dir={self.tmpdir}>"


# --------------------------------------------------------------------------- MariaDB


def _find_mariadb() -> tuple[str, str] | None:
    server = (shutil.which("mariadbd") or shutil.which("mysqld")
              or next((p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if os.path.exists(p)), None))
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if server and install:
        return server, install
    return None


class MariaDBServer(_Server):
    """A private MariaDB instance with database ``ampalibe_test`` (utf8mb4)."""

    name = "mariadb"
    scheme = "mysql+pymysql"
    query = "?charset=utf8mb4"

    def __init__(self) -> None:
        super().__init__()
        found = _find_mariadb()
        if found is None:
            apt_install("mariadb-server")
            found = _find_mariadb()
            if found is None:
                raise ServerUnavailable(f"mariadb-server installed but mariadbd not found. {INSTALL_HINT}")
        self.mariadbd, self.install_db = found

    @property
    def socket_path(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "mysqld.sock"

    def _init_datadir(self) -> None:
        assert self.tmpdir is not None
        _run([self.install_db, "--no-defaults", f"--datadir={self.tmpdir / 'data'}", "--user=root",
              "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
             what="mariadb-install-db", timeout=120)

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        cmd = [
            self.mariadbd, "--no-defaults",
            f"--datadir={self.tmpdir / 'data'}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.tmpdir / 'mysqld.pid'}",
            f"--port={self.port}", "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
            "--max-connections=500",
            # Durability is not the point of a throwaway server; speed is.
            "--innodb-flush-log-at-trx-commit=2", "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=64M", "--skip-log-bin",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        return cmd

    def _admin(self, **kwargs):
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket_path), user="root", password=ADMIN_PASSWORD,
                               charset="utf8mb4", autocommit=True, connect_timeout=5, **kwargs)

    def _ping(self) -> None:
        import pymysql

        try:
            pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                            connect_timeout=2).close()
        except pymysql.err.OperationalError as exc:
            # "Access denied": the server answers, the app user is just not created yet.
            if exc.args[0] != 1045:
                raise

    def _setup(self) -> None:
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True,
                               connect_timeout=5)
        try:
            with conn.cursor() as cur:
                # Only a passworded root over the private socket, and the app user.
                cur.execute("DELETE FROM mysql.global_priv WHERE User = '' OR "
                            "(User = 'root' AND Host <> 'localhost')")
                cur.execute("FLUSH PRIVILEGES")
                cur.execute(f"CREATE DATABASE {self.database} "
                            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
                for host in ("127.0.0.1", "localhost", "%"):
                    cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
                    cur.execute(f"GRANT ALL PRIVILEGES ON {self.database}.* TO %s@%s", (self.user, host))
                cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (ADMIN_PASSWORD,))
        finally:
            conn.close()

    def reset(self) -> None:
        conn = self._admin(database=self.database)
        try:
            with conn.cursor() as cur:
                # Fail instead of hanging if a test left a transaction open.
                cur.execute("SET SESSION lock_wait_timeout = 20")
                cur.execute("SET SESSION foreign_key_checks = 0")
                cur.execute("SELECT table_name, table_type FROM information_schema.tables "
                            "WHERE table_schema = %s", (self.database,))
                rows = cur.fetchall()
                views = [f"`{name}`" for name, kind in rows if kind == "VIEW"]
                tables = [f"`{name}`" for name, kind in rows if kind != "VIEW"]
                if views:
                    cur.execute(f"DROP VIEW IF EXISTS {', '.join(views)}")
                if tables:
                    cur.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}")
        finally:
            conn.close()


# --------------------------------------------------------------------------- PostgreSQL


def _find_postgres_bindir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).parent
    return None


class PostgreSQLServer(_Server):
    """A private PostgreSQL instance with database ``ampalibe_test`` (UTF8, scram auth).

    PostgreSQL refuses to run as root: when we are root, the data dir belongs to
    the ``postgres`` user and the server runs through ``runuser -u postgres``.
    """

    name = "postgresql"
    scheme = "postgresql+psycopg"

    def __init__(self) -> None:
        super().__init__()
        bindir = _find_postgres_bindir()
        if bindir is None:
            apt_install("postgresql")
            bindir = _find_postgres_bindir()
            if bindir is None:
                raise ServerUnavailable(f"postgresql installed but initdb not found. {INSTALL_HINT}")
        self.bindir = bindir
        self.run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable(
                    "PostgreSQL cannot run as root and there is no `postgres` user; "
                    "install the Debian `postgresql` package, which creates it."
                ) from None
            self.run_as = "postgres"

    def _temp_base(self) -> str | None:
        # The postgres user must be able to reach its data dir; a TMPDIR under
        # /root would not do.
        base = Path(tempfile.gettempdir()).resolve()
        if self.run_as and not all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
            return "/tmp"
        return None

    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def _init_datadir(self) -> None:
        assert self.tmpdir is not None
        pwfile = self.tmpdir / "pwfile"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.tmpdir, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        _run(self._as_owner([
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
            "--no-sync",
        ]), what="initdb", timeout=120, cwd=self.tmpdir)
        pwfile.unlink()

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        return self._as_owner([
            str(self.bindir / "postgres"), "-D", str(self.datadir),
            "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.tmpdir),
            "-c", "max_connections=300",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "shared_buffers=64MB",
        ])

    def _server_pid(self) -> int | None:
        # With runuser in between, the postmaster is not our child: its pid is in
        # postmaster.pid. Without runuser both are the same.
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, AssertionError):
            return self._proc.pid if self._proc and not self.run_as else None

    def _stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: do not wait for clients to leave

    def _launch(self) -> None:
        try:
            super()._launch()
        except ServerUnavailable as exc:
            if "could not bind" in str(exc) or "Address already in use" in str(exc):
                raise ServerUnavailable(f"port in use: {exc}") from exc
            raise

    def _admin(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user="postgres", password=ADMIN_PASSWORD,
                               dbname=dbname, autocommit=True, connect_timeout=5)

    def _ping(self) -> None:
        self._admin().close()

    def _setup(self) -> None:
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(self.user), sql.Literal(self.password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(self.database), sql.Identifier(self.user)))
        self.reset()

    def reset(self) -> None:
        from psycopg import sql

        with self._admin(self.database) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute(sql.SQL("CREATE SCHEMA public AUTHORIZATION {}").format(sql.Identifier(self.user)))
