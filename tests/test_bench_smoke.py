"""Smoke run of the benchmark harness (bench/run.py --quick): it must produce numbers.

Never a timing assertion: this only checks that the harness starts the fake Graph API, the
systems and the load generator, and writes a results table.  Deselect with ``-m "not bench"``.
"""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.bench, pytest.mark.timeout(120)]


def test_quick_run_writes_numbers(tmp_path: Path) -> None:
    out, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--systems",
         "flask_ampalibe,bare,bare_durable,bare_durable_e2e",
         "--out", str(out), "--json", str(raw), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["system"]: r for r in json.loads(raw.read_text())["results"]}
    assert set(results) == {"flask_ampalibe", "bare_ack", "bare_e2e", "bare_durable", "bare_durable_e2e"}
    for name, r in results.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["acked"] > 0 and r["acked_rps"] > 0, name
        assert r["peak_rss_mb"] > 0, name
    for name in ("flask_ampalibe", "bare_e2e", "bare_durable_e2e"):
        assert results[name]["replies"] > 0, name
    for name in ("flask_ampalibe", "bare_durable_e2e"):
        assert results[name]["duplicates"] == 0, name
    # bare_durable recorded every acknowledged event, once
    with sqlite3.connect(tmp_path / "work" / "bare_durable-hello" / "bench.db") as con:
        assert con.execute("SELECT count(*) FROM event").fetchone()[0] >= results["bare_durable"]["acked_unique_min"]

    table = out.read_text()
    for name in results:
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert re.search(r"\| [\d,]+ \| [\d.]+ \| [\d.]+ \|", row), row
    assert "flask_ampalibe / bare ack ceiling" in table
    assert "flask_ampalibe / bare_durable |" in table and "flask_ampalibe / bare_durable_e2e |" in table


def test_quick_run_on_postgresql(tmp_path: Path) -> None:
    """The hello bot on a throwaway PostgreSQL server, next to SQLite, and their ratios."""
    out, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--systems", "flask_ampalibe,flask_ampalibe_pg",
         "--out", str(out), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pg = {r["system"]: r for r in json.loads(raw.read_text())["results"]}["flask_ampalibe_pg"]
    assert pg["database"] == "postgresql"
    assert pg["acked"] > 0 and pg["replies"] > 0 and pg["duplicates"] == 0, pg
    assert pg["db_cpu_ms_per_event"] > 0  # the PostgreSQL server's own CPU, measured apart
    table = out.read_text()
    assert re.search(r"^\| flask_ampalibe_pg \| hello .*\| [\d.]+ \+ [\d.]+ db \|", table, re.M), table
    assert re.search(r"^\| acked req/s, hello: PostgreSQL / SQLite \| [\d.]+ \| ≥ 0.70 \|", table, re.M), table
    assert "PostgreSQL (postgres (PostgreSQL)" in table  # the server's version in the settings


def test_celery_quick_run_writes_its_rows(tmp_path: Path) -> None:
    out, raw = tmp_path / "RESULTS.md", tmp_path / "celery.json"
    out.write_text("# Benchmark results\n\nearlier rows\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "celery_bench.py"), "--quick", "--out", str(out), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(raw.read_text())["results"]
    assert [(r["executor"], r["processes"], r["scenario"]) for r in results] == [
        ("thread", 0, "hello"), ("celery", 1, "hello"), ("celery", 1, "slow")]
    for r in results:
        assert r["replies"] > 0 and r["replies_per_s"] > 0 and r["duplicates"] == 0, r
    table = out.read_text()
    assert table.startswith("# Benchmark results\n\nearlier rows\n")  # the section is added, the rest kept
    assert re.search(r"^\| celery \| 1 \| slow 1 s \| – \| [\d.]+ \|", table, re.M), table
    assert "hello replies/s, celery (1 process) / thread executor" in table
