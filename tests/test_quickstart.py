"""The README's Quick start, run literally.

The one-line command of the "Quick start" section is read out of README.rst and run with ``sh -c``
in a copy of the source tree, with a fresh HOME, the system's python3 (Debian's, externally managed, when
there is one; tests/run.sh installs python3-venv for it) as ``python3``, and the suite's venv off PATH: as on a fresh machine. It must create
its venv, install the library, create the bot and serve it; the test then answers Facebook's
verification GET with the verify token ``create`` wrote.

pip installs from the package index (its cache is shared with the suite's, so it stays quick).
The port comes from ``AMP_PORT``/``AMP_HOST`` in the environment (they win over the bot's .env),
so the test does not need port 4555 to be free.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"

#: What pip needs to build the project; the rest of the clone does not matter for the quick start.
SOURCE = ("setup.py", "setup.cfg", "README.rst", "flask_ampalibe")


def quick_start_command() -> str:
    """The first literal block of the README's Quick start section, as one shell line."""
    text = README.read_text()
    section = re.search(r"^Quick start\n=+\n(.*?)(?=^\S[^\n]*\n=+\n)", text, re.S | re.M)
    assert section, "README.rst has no 'Quick start' section"
    block = re.search(r"::\n\n((?:    .*\n|\n)+)", section.group(1))
    assert block, "the Quick start section has no literal block"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, f"the Quick start command is not one line: {lines}"
    return lines[0]


def test_readme_command_is_the_one_tested() -> None:
    command = quick_start_command()
    assert command.startswith("python3 -m venv ") and "pip install ." in command
    assert command.endswith("ampalibe run")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pip_cache_dir() -> str:
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return os.path.join(base, "pip")


def externally_managed(python: str) -> bool:
    """Whether ``python`` refuses ``pip install`` outside a venv (PEP 668) and can make venvs."""
    check = ("import ensurepip, os, sysconfig, sys; "
             "sys.exit(not os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))")
    try:
        return subprocess.run([python, "-c", check], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def newcomer_python() -> Path:
    """Debian's own python3 when the machine has it (PEP 668 applies: a quick start without a venv
    fails there), else the base interpreter of the suite's venv."""
    system = Path("/usr/bin/python3")
    if system.exists() and externally_managed(str(system)):
        return system
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def fresh_machine_env(home: Path, bin_dir: Path, port: int) -> dict[str, str]:
    """The environment of a newcomer's shell: no active venv, ``python3`` = the base interpreter."""
    suite_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != suite_bin]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMP_", "AMPALIBE_", "DB_", "FLASK_", "GUNICORN_", "PYTHON"))
           and k not in ("VIRTUAL_ENV", "ADAPTER", "DATABASE_URL", "WERKZEUG_RUN_MAIN", "WERKZEUG_SERVER_FD")}
    env.update(
        HOME=str(home), PATH=os.pathsep.join([str(bin_dir), *path]), PIP_CACHE_DIR=pip_cache_dir(),
        PIP_DISABLE_PIP_VERSION_CHECK="1", AMP_HOST="127.0.0.1", AMP_PORT=str(port), PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.timeout(600)
def test_quick_start_on_a_fresh_machine(tmp_path: Path) -> None:
    command = quick_start_command()
    clone = tmp_path / "flask_ampalibe"
    clone.mkdir()
    for name in SOURCE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, clone / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, clone / name)
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(newcomer_python())

    port = free_port()
    log_path = tmp_path / "quickstart.log"
    with log_path.open("wb") as log:
        # Its own session, so the shell, pip and gunicorn's master and workers stop together.
        proc = subprocess.Popen(["sh", "-c", command], cwd=clone, env=fresh_machine_env(home, bin_dir, port),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            answer = None
            deadline = time.monotonic() + 480  # a venv and an install from pip's cache: well under this
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"the quick start exited with {proc.returncode}:\n{log_path.read_text()}")
                env_file = clone / "mybot" / ".env"
                if env_file.exists():
                    verify = dotenv_values(env_file).get("AMP_VERIF_TOKEN")
                    try:
                        answer = requests.get(f"http://127.0.0.1:{port}/", timeout=5, params={
                            "hub.mode": "subscribe", "hub.verify_token": verify, "hub.challenge": "4242",
                        })
                        break
                    except requests.ConnectionError:
                        pass
                time.sleep(0.5)
            assert answer is not None, f"no bot on port {port} in time:\n{log_path.read_text()}"
            assert (answer.status_code, answer.text) == (200, "4242"), log_path.read_text()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    output = log_path.read_text()
    assert (clone / ".venv" / "bin" / "ampalibe").exists()  # installed in the venv, not elsewhere
    assert f"Callback URL to give Facebook: http://127.0.0.1:{port}/" in output
