"""The type check is part of the suite: ``python -m mypy flask_ampalibe`` (settings in setup.cfg's
``[mypy]`` section) reports no error.  The package ships ``py.typed``, so its hints are what
applications type-check against.

mypy is in the ``test`` extra (Python 3.10 and later: mypy 2.4 needs it); ``tests/run.sh`` installs
the newest versions of it and of the libraries whose hints it reads.  ``tox -e oldest`` leaves this
module out: older libraries ship other hints.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.version_info < (3, 10), reason="mypy 2.4, the oldest the check is set for, needs Python 3.10")
def test_mypy_reports_no_error() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "flask_ampalibe"], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"mypy found errors (exit code {result.returncode}):\n{result.stdout}{result.stderr}"
