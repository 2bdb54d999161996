"""CPU per handled event, split by stage, single-threaded, against the durable floors.

    python bench/breakdown.py                     # 2,000 events per run, 3 rounds, writes nothing
    python bench/breakdown.py --events 5000 --rounds 5 --json breakdown.json

No gunicorn, no load generator, no contention: each system runs in a fresh process that posts
``--events`` signed hello webhooks through Flask's test client, one after the other, to

- ``flask_ampalibe``: the bench's hello bot (``bench/apps/flask_ampalibe_bot``) with
  ``AMPALIBE_EXECUTOR=inline``, so each post records the event, handles it (claim, the bot's
  ``get_temp``/``set_temp``, one ``send_message``), finishes it and answers, all in the thread;
- ``flask_ampalibe_ack``: the same bot with ``AMPALIBE_EXECUTOR=worker``: the post only records
  (the durable ack path alone; no worker runs);
- ``bare_ack``, ``bare_e2e``, ``bare_durable``, ``bare_durable_e2e``: the bare references of
  ``bench/run.py`` (``bench/apps/``); ``bare_durable_e2e``'s handler thread is waited for.

The Send API is ``bench/fakegraph.py`` on loopback (another process: its CPU is not counted).
Reported per event: the process's CPU time (user + system, every thread) over the posts, divided by
the events; for ``flask_ampalibe`` it is split by stage from a ``py-spy record`` of that process
(1,000 samples/s, non-idle samples: running or runnable, so on a busy machine the wait for a CPU
counts too, spread over the stages), each sample given to the outermost frame that belongs to a
stage: the signature check (``signature.py``), parsing (``events.py``, ``envelope.py``, the
webhook's ``json.loads``), the durable record (``Inbox.record``, group commit), claiming
(``Inbox.take``: the lease, the first event, and since state commits with its event the user's state),
the bot's own calls for its state (``storage.py``, ``model.py``, ``unit.py``),
the Send API call (``graph.py``, ``messenger.py``: JSON, ``requests``, the socket), finishing
(``Inbox.next_event``/``finish``/``release``: done, the state's writes, the lease given back); what is in none of
them is dispatch (``dispatch.py``, ``router.py``, the executor, the bot's own code) or the Flask
request (the test client's WSGI environ, Flask's request and app contexts, the Blueprint and the
webhook core's glue).  The test client stands in for gunicorn's request parsing, the same for
every system.  Medians over ``--rounds`` fresh processes, the systems alternating.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SECRET, VERIF, TOKEN = "bench-app-secret", "bench-verif", "bench-page-token"
SYSTEMS = ("flask_ampalibe", "flask_ampalibe_ack", "bare_ack", "bare_e2e", "bare_durable", "bare_durable_e2e")
PATHS = {"flask_ampalibe": "/", "flask_ampalibe_ack": "/", "bare_ack": "/", "bare_e2e": "/e2e", "bare_durable": "/durable",
         "bare_durable_e2e": "/durable_e2e"}
USERS = 1000

#: Stages, in the order of the report: (name, file under flask_ampalibe/, function regex or None).
STAGES = (
    ("signature check", "signature.py", None),
    ("parsing", "events.py", None),
    ("parsing", "envelope.py", None),
    ("parsing", "webhook.py", r"_loads$"),
    ("durable record", "inbox.py", r"^record$"),
    ("durable record", "groupcommit.py", None),
    ("claiming", "inbox.py", r"^(take|claim)$"),
    ("bot's state", "storage.py", None),
    ("bot's state", "model.py", None),
    ("bot's state", "unit.py", None),
    ("Send API call", "graph.py", None),
    ("Send API call", "messenger.py", None),
    ("Send API call", "page.py", None),
    ("Send API call", "pagination.py", None),
    ("finishing", "inbox.py", r"^(next_event|finish|release|putback)$"),
)
DISPATCH_FILES = ("dispatch.py", "router.py", "executor/", "context.py", "payload.py", "i18n.py", "internal.py")
ORDER = ("Flask request", "signature check", "parsing", "durable record", "claiming", "dispatch", "bot's state",
         "Send API call", "finishing")
#: Samples whose stack py-spy could not read whole; left out of the shares (spread over the stages).
UNATTRIBUTED = "unattributed"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def bodies(count: int, tag: str) -> list[tuple[bytes, str]]:
    """``count`` signed hello bodies spread over :data:`USERS` users, with distinct mids."""
    out = []
    base_ms = int(time.time() * 1000) - 3_600_000
    for i in range(count):
        ts = base_ms + i
        body = json.dumps({"object": "page", "entry": [{"id": "100000000000001", "time": ts, "messaging": [{
            "sender": {"id": str(7000000000000000 + 1 + i % USERS)}, "recipient": {"id": "100000000000001"},
            "timestamp": ts, "message": {"mid": f"m_{tag}{i}", "text": "hello bot"}}]}]},
            separators=(",", ":")).encode()
        out.append((body, "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()))
    return out


# --- one system in this process (--worker) -------------------------------------------------------

def load_app(system: str, workdir: str):
    """The system's Flask app, its environment set as bench/run.py sets it."""
    os.environ.update(BENCH_APP_SECRET=SECRET, BENCH_VERIF_TOKEN=VERIF, BENCH_ACCESS_TOKEN=TOKEN,
                      BENCH_DB_FILE=os.path.join(workdir, "bench.db"), BENCH_SLEEP="0")
    if system.startswith("flask_ampalibe"):
        # inline: handled in the request; worker: only recorded (the ack path alone)
        os.environ["AMPALIBE_EXECUTOR"] = "inline" if system == "flask_ampalibe" else "worker"
        sys.path[:0] = [os.path.join(HERE, "apps", "flask_ampalibe_bot"), REPO]
        os.chdir(workdir)
        import core  # noqa: the bench's hello bot

        return core.app
    sys.path[:0] = [os.path.join(HERE, "apps"), REPO]
    module = __import__("bare_durable" if system.startswith("bare_durable") else system)
    return module.app


def wait_done(system: str, workdir: str, expected: int, timeout: float = 120.0) -> None:
    """bare_durable_e2e: until its handler thread marked ``expected`` rows done."""
    if system != "bare_durable_e2e":
        return
    import sqlite3

    con = sqlite3.connect(os.path.join(workdir, "bench.db"))
    deadline = time.time() + timeout
    while con.execute("SELECT count(*) FROM event WHERE done = 1").fetchone()[0] < expected:
        if time.time() > deadline:
            raise RuntimeError("bare_durable_e2e's handler did not finish")
        time.sleep(0.01)
    con.close()


def worker(system: str, events: int, workdir: str, profile: str | None) -> dict:
    app = load_app(system, workdir)
    client = app.test_client()
    path = PATHS[system]

    def post(items):
        for body, sig in items:
            r = client.post(path, data=body, headers={"X-Hub-Signature-256": sig,
                                                      "Content-Type": "application/json"})
            if r.status_code != 200:
                raise RuntimeError(f"{system}: {r.status_code} {r.get_data(as_text=True)[:200]}")

    warm = bodies(300, "w")
    post(warm)
    wait_done(system, workdir, len(warm))
    measured = bodies(events, "b")
    spy = None
    if profile:
        spy = subprocess.Popen([pyspy(), "record", "--pid", str(os.getpid()), "--rate", "1000", "--nonblocking",
                                "--format", "raw", "--output", profile],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # attached; the samples of this idle wait are not on-CPU, so not recorded
    cpu0, wall0 = time.process_time(), time.perf_counter()
    post(measured)
    wait_done(system, workdir, len(warm) + events)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if spy:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    return {"system": system, "events": events, "cpu_ms": 1000.0 * cpu / events, "wall_ms": 1000.0 * wall / events}


def pyspy() -> str:
    """py-spy next to this Python (a venv's), else on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return local if os.path.exists(local) else "py-spy"


# --- the profile's stages --------------------------------------------------------------------------

def stage_of(stack: list[str]) -> str:
    """The stage of one sample (frames outermost first): see the module's docstring."""
    if not stack or not stack[0].startswith("<module> (") or "breakdown.py" not in stack[0]:
        return UNATTRIBUTED  # py-spy --nonblocking read a stack while it changed: its root is missing
    parsed = []
    for frame in stack:
        m = _FRAME.match(frame)
        if m:
            parsed.append((m.group("func"), m.group("file").replace(os.sep, "/")))
    dispatch = False
    for func, path in parsed:
        func = func.rsplit(".", 1)[-1]  # py-spy gives Class.method
        if path.startswith("flask_ampalibe/") or "/flask_ampalibe/" in path:
            rel = path.rsplit("flask_ampalibe/", 1)[1]
            for name, file, pattern in STAGES:
                if rel == file and (pattern is None or re.search(pattern, func)):
                    return name
            dispatch = dispatch or rel.startswith(DISPATCH_FILES)
        elif path.endswith("flask_ampalibe_bot/core.py") or path == "core.py":
            dispatch = True
    return "dispatch" if dispatch else "Flask request"


def stages(profile: str) -> dict[str, int]:
    """Samples per stage in a py-spy raw file."""
    counts: dict[str, int] = {}
    with open(profile) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            name = stage_of(frames)
            counts[name] = counts.get(name, 0) + int(n)
    return counts


# --- the parent ----------------------------------------------------------------------------------

def run(cfg) -> dict:
    sys.path.insert(0, HERE)
    from run import FakeGraph

    work = tempfile.mkdtemp(prefix="ampbreakdown-")
    graph = FakeGraph(work)
    results: dict[str, list[dict]] = {s: [] for s in cfg.systems}
    samples: dict[str, int] = {}
    try:
        for rnd in range(cfg.rounds):
            order = cfg.systems if rnd % 2 == 0 else list(reversed(cfg.systems))
            for system in order:
                wd = os.path.join(work, f"{system}-{rnd}")
                os.makedirs(wd)
                profile = os.path.join(wd, "pyspy.txt") if system == "flask_ampalibe" and cfg.profile else None
                env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "AMPALIBE_", "AMP_"))}
                env["BENCH_GRAPH_URL"] = graph.url
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", system, "--events", str(cfg.events),
                       "--workdir", wd] + (["--profile-out", profile] if profile else [])
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    raise RuntimeError(f"{system} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[system].append(r)
                if profile and os.path.exists(profile):
                    for name, n in stages(profile).items():
                        samples[name] = samples.get(name, 0) + n
                print(f"round {rnd + 1}: {system:18} {r['cpu_ms']:.3f} ms CPU/event", file=sys.stderr, flush=True)
        replies = graph.stats()
    finally:
        graph.stop()
    med = {s: statistics.median(r["cpu_ms"] for r in rs) for s, rs in results.items()}
    return {"events": cfg.events, "rounds": cfg.rounds, "cpu_ms": med,
            "cpu_ms_rounds": {s: [round(r["cpu_ms"], 3) for r in rs] for s, rs in results.items()},
            "samples": samples, "graph": replies, "load_average": os.getloadavg()}


def report(res: dict) -> str:
    cpu, samples = res["cpu_ms"], res["samples"]
    lost = samples.get(UNATTRIBUTED, 0)
    total = sum(samples.values()) - lost
    L = [f"CPU per event, single thread, {res['events']:,} events x {res['rounds']} rounds (medians); "
         f"load average {res['load_average'][0]:.1f}", ""]
    if "flask_ampalibe" in cpu and total:
        fa = cpu["flask_ampalibe"]
        L += ["| flask_ampalibe, per handled event | CPU ms | share |", "|---|---:|---:|"]
        for name in ORDER:
            n = samples.get(name, 0)
            L.append(f"| {name} | {fa * n / total:.3f} | {100.0 * n / total:.0f} % |")
        L.append(f"| **total** | **{fa:.3f}** | {total:,} samples (+ {lost:,} with a partial stack, left out) |")
        L.append("")
    L += ["| system | CPU ms/event |", "|---|---:|"]
    L += [f"| {system} | {v:.3f} |" for system, v in cpu.items()]
    L += ["", "| flask_ampalibe against | events/s per core, ratio |", "|---|---:|"]
    for ours, ref, label in (("flask_ampalibe_ack", "bare_durable", "durable ack floor (bare_durable), ack only"),
                             ("flask_ampalibe_ack", "bare_ack", "ack ceiling (bare_ack, keeps nothing), ack only"),
                             ("flask_ampalibe", "bare_durable_e2e", "durable end-to-end floor (bare_durable_e2e)"),
                             ("flask_ampalibe", "bare_e2e", "end-to-end ceiling (bare_e2e, keeps nothing)")):
        if ours in cpu and ref in cpu:
            L.append(f"| {label} | {cpu[ref] / cpu[ours]:.2f} |")
    return "\n".join(L)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of " + ", ".join(SYSTEMS))
    p.add_argument("--no-profile", dest="profile", action="store_false", help="no py-spy (totals only)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.worker:
        print(json.dumps(worker(cfg.worker, cfg.events, cfg.workdir, cfg.profile_out)))
        return 0
    cfg.systems = cfg.systems.split(",")
    for s in cfg.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    res = run(cfg)
    print(report(res))
    if cfg.json:
        with open(cfg.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
