"""Benchmark of the Celery executor: the `celery` rows of bench/RESULTS.md.

    python bench/celery_bench.py            # about 4 minutes on 2 cores; rewrites the Celery section of RESULTS.md
    python bench/celery_bench.py --quick    # smoke run (tiny load), report to --out only

The same hello bot as bench/run.py (apps/flask_ampalibe_bot: read and write one temp value,
send one reply) under `gunicorn -c python:flask_ampalibe.gunicorn_conf` (2 workers), one SQLite
file (one host), a throwaway `redis-server` on loopback, and 1, 2 or 4 `ampalibe worker --celery`
processes (threads pool, 8 threads each: the per-process concurrency is fixed).

- `hello`: wrk (or the Python load generator) for --duration seconds, 32 connections; e2e
  replies/s as in bench/run.py.  Reference: the thread executor (handlers in the web workers) on
  the same host, same load.  Target: celery hello replies/s >= 0.8 x thread's.
- `slow`: each handler first sleeps 1 s (waiting on I/O).  A backlog of 8 rounds of 8 x N events,
  each of another user, is posted at once; replies/s = events / (last reply - first post).
  Target: with 4 processes >= 0.8 x 4 x the 1-process figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
import run as harness  # noqa: E402

THREADS = 8  # per Celery worker process (ampalibe worker --celery --threads)
BEGIN, END = "<!-- celery rows: bench/celery_bench.py -->", "<!-- /celery rows -->"


class Redis:
    """A throwaway redis-server on loopback, nothing on disk."""

    def __init__(self, workdir: str) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise SystemExit("redis-server is needed: apt-get install redis-server")
        self.port = harness.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", workdir,
                                      "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                                     stdout=open(os.path.join(workdir, "redis.log"), "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def command(self, *words: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            return sock.recv(4096).strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(executor: str, processes: int, sleep: float, rundir: str, graph: harness.FakeGraph,
          redis: Redis | None) -> tuple[harness.Server, list[harness.Server], str]:
    """The web server (and the Celery workers) of one run."""
    os.makedirs(rundir)
    port = harness.free_port()
    env = harness.base_env(graph, sleep)
    proj = os.path.join(rundir, "project")
    shutil.copytree(os.path.join(HERE, "apps", "flask_ampalibe_bot"), proj)
    env.update(BENCH_DB_FILE=os.path.join(rundir, "bench.db"), BENCH_PORT=str(port), AMPALIBE_EXECUTOR=executor,
               PYTHONPATH=os.pathsep.join([proj, harness.LIB]))
    if redis is not None:
        env["AMPALIBE_CELERY_BROKER_URL"] = redis.url
    gargs, _ = harness.gunicorn_args()
    web = harness.Server("web", [sys.executable, "-m", "gunicorn", *gargs, "-b", f"127.0.0.1:{port}", "core:app"],
                         proj, env, port, os.path.join(rundir, "server.log"))
    web.wait_ready()
    workers = []
    for n in range(processes):
        worker = harness.Server(f"celery{n}", [sys.executable, "-m", "flask_ampalibe.cli", "worker", "--celery",
                                               "--threads", str(THREADS)],
                                proj, env, port, os.path.join(rundir, f"celery{n}.log"))
        workers.append(worker)
    deadline = time.time() + 60
    for worker in workers:
        while " ready." not in worker.tail(200):
            if worker.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"Celery worker did not start:\n{worker.tail()}")
            time.sleep(0.2)
    return web, workers, f"http://127.0.0.1:{port}/"


def post_all(url: str, bodies: loadgen.Bodies, threads: int = 8) -> float:
    """Post every body once (several threads); returns when the first post went out."""
    lines = loadgen.read_lines(bodies.path)
    started = time.time()

    def send(part: list[tuple[bytes, bytes]]) -> None:
        for sig, body in part:
            req = urllib.request.Request(url, data=body, method="POST", headers={
                "Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + sig.decode()})
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()

    workers = [threading.Thread(target=send, args=(lines[n::threads],)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return started


def measure(executor: str, processes: int, scenario: str, cfg: argparse.Namespace, graph: harness.FakeGraph,
            redis: Redis | None, workroot: str) -> dict:
    sleep = 1.0 if scenario == "slow" else 0.0
    name = f"{executor}{processes if executor == 'celery' else ''}-{scenario}"
    rundir = os.path.join(workroot, name)
    res: dict = {"executor": executor, "processes": processes, "scenario": scenario, "threads": THREADS,
                 "loadavg_before": harness.loadavg()}
    web, workers, url = start(executor, processes, sleep, rundir, graph, redis)
    try:
        graph.reset()
        warm = loadgen.make_bodies(os.path.join(rundir, "warm.txt"), 50, harness.SECRET, users=50, tag="w")
        post_all(url, warm, threads=4)
        st, drained = harness.drain(graph, 50, 60.0, quiet=10.0)
        if drained != "complete":
            raise RuntimeError(f"the warm-up was not handled ({st}):\n{web.tail()}\n{workers[0].tail() if workers else ''}")
        graph.reset()
        t0 = time.time()
        if scenario == "hello":
            bodies = loadgen.make_bodies(os.path.join(rundir, "bodies.txt"), cfg.bodies, harness.SECRET,
                                         users=1000, tag="b")
            load = loadgen.run_load(url, bodies, tool=cfg.loadgen, connections=32, duration=cfg.duration,
                                    threads=2)
            acked = load["status"]["2xx"]
            issued_unique = bodies.unique_in_issued(load["issued"], load["threads"])
            expected = max(0, issued_unique - (sum(load["issued"]) - acked))
            st, drained = harness.drain(graph, expected, cfg.drain, quiet=cfg.quiet)
            span = max(st["last_reply"] - st["first_reply"], load["duration_s"]) if st["replies"] > 1 else 0
            res.update(acked=acked, acked_rps=load["rps"], p99_ms=load["latency_ms"]["p99"],
                       replies=st["replies"], unique=st["unique_texts"], expected=expected, drained=drained,
                       replies_per_s=st["replies"] / span if span else 0.0)
        else:
            count = cfg.rounds * THREADS * processes
            bodies = loadgen.make_bodies(os.path.join(rundir, "bodies.txt"), count, harness.SECRET,
                                         users=count, tag="s")
            first = post_all(url, bodies)
            st, drained = harness.drain(graph, count, 60.0 + 2 * cfg.rounds, quiet=cfg.quiet)
            span = st["last_reply"] - first if st["replies"] else 0
            res.update(acked=count, replies=st["replies"], unique=st["unique_texts"], expected=count,
                       drained=drained, replies_per_s=st["replies"] / span if span > 0 else 0.0)
        res["wall_s"] = time.time() - t0
        res["duplicates"] = res["replies"] - res["unique"]
    finally:
        for worker in workers:
            worker.stop()
        web.stop()
    harness.log(f"{name}: {res['replies_per_s']:.1f} replies/s ({res['replies']} replies, {res['drained']}, "
                f"load before {res['loadavg_before']:.1f})")
    return res


def report(results: list[dict], cfg: argparse.Namespace, took: float) -> str:
    def find(executor: str, processes: int, scenario: str) -> dict | None:
        return next((r for r in results if (r["executor"], r["processes"], r["scenario"]) ==
                     (executor, processes, scenario)), None)

    loads = ", ".join(f"{r['loadavg_before']:.1f}" for r in results)
    tool = "wrk" if cfg.loadgen == "wrk" or (cfg.loadgen == "auto" and loadgen.have_wrk()) else "the Python load generator"
    L = [BEGIN, "## Celery executor (`python bench/celery_bench.py`)", "",
         f"Run on {time.strftime('%Y-%m-%d %H:%M')} ({took:.0f} s) at {harness.library_status()}. One host: gunicorn "
         f"(2 gthread workers) records and sends the tasks, {THREADS} threads per `ampalibe worker --celery` process "
         f"(threads pool), one SQLite file, a local redis-server. hello: {tool}, 32 connections, {cfg.duration} s; "
         f"slow: a backlog of {cfg.rounds} × {THREADS} × processes events (one user each), every handler sleeping "
         "1 s first. The machine is shared with other work: 1-minute load average before each run: "
         f"{loads}.", "",
         "| executor | worker processes | scenario | acked req/s | replies/s | replies / expected | dup |",
         "|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        procs = str(r["processes"]) if r["executor"] == "celery" else "– (in the 2 web workers)"
        acked = f"{r['acked_rps']:.0f}" if "acked_rps" in r else "–"
        L.append(f"| {r['executor']} | {procs} | {r['scenario']}{' 1 s' if r['scenario'] == 'slow' else ''} | "
                 f"{acked} | {r['replies_per_s']:.1f} | {r['replies']:,} / {r['expected']:,}"
                 f"{'' if r['drained'] == 'complete' else ' (' + r['drained'] + ')'} | {r['duplicates']} |")
    L += ["", "| measure | value | target | met |", "|---|---:|---:|---|"]
    s1, s4, h = find("celery", 1, "slow"), find("celery", 4, "slow"), find("thread", 0, "hello")
    if s1 and s4 and s1["replies_per_s"]:
        v = s4["replies_per_s"] / (4 * s1["replies_per_s"])
        L.append(f"| slow replies/s, 4 processes / (4 × 1 process) | {v:.2f} | ≥ 0.80 | {'yes' if v >= 0.8 else '**no**'} |")
    s2 = find("celery", 2, "slow")
    if s1 and s2 and s1["replies_per_s"]:
        L.append(f"| slow replies/s, 2 processes / (2 × 1 process) | {s2['replies_per_s'] / (2 * s1['replies_per_s']):.2f} | – | – |")
    for n in (1, 2, 4):
        c = find("celery", n, "hello")
        if c and h and h["replies_per_s"]:
            v = c["replies_per_s"] / h["replies_per_s"]
            met = "yes" if v >= 0.8 else "**no**"
            L.append(f"| hello replies/s, celery ({n} process{'es' if n > 1 else ''}) / thread executor | {v:.2f} | "
                     f"≥ 0.80 | {met} |")
    L += ["", END]
    return "\n".join(L)


def splice(path: str, section: str) -> None:
    """Put ``section`` in ``path`` in place of the previous one (or at the end)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Celery executor benchmark (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny load")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="the report whose Celery section is rewritten")
    p.add_argument("--json", default=None)
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--rounds", type=int, default=8, help="slow: backlog of rounds x threads x processes events")
    p.add_argument("--loadgen", default="auto", choices=("auto", "wrk", "python"))
    p.add_argument("--workdir", default=None)
    cfg = p.parse_args(argv)
    cfg.bodies, cfg.drain, cfg.quiet = 60000, 90.0, 5.0
    if cfg.quick:
        cfg.processes, cfg.duration, cfg.rounds, cfg.bodies, cfg.drain, cfg.quiet = "1", 2, 1, 2000, 20.0, 3.0
    processes = [int(n) for n in cfg.processes.split(",")]
    workroot = cfg.workdir or tempfile.mkdtemp(prefix="amp-celery-bench-")
    os.makedirs(workroot, exist_ok=True)
    t0 = time.time()
    graph = harness.FakeGraph(workroot)
    redis = Redis(workroot)
    results = []
    try:
        results.append(measure("thread", 0, "hello", cfg, graph, None, workroot))
        for scenario in ("hello", "slow"):
            for n in processes:
                redis.command("FLUSHALL")
                results.append(measure("celery", n, scenario, cfg, graph, redis, workroot))
    finally:
        redis.stop()
        graph.stop()
        if not cfg.workdir:
            shutil.rmtree(workroot, ignore_errors=True)
    section = report(results, cfg, time.time() - t0)
    splice(cfg.out, section)
    if cfg.json:
        with open(cfg.json, "w") as fh:
            json.dump({"results": results}, fh, indent=1)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
