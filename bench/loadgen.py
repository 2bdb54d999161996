"""Webhook bodies and the HTTP load generators (wrk, or a small asyncio fallback).

Bodies are generated once per scenario into a file, one request per line:
``<hex HMAC-SHA256 of the raw body with the app secret>\\t<compact JSON body>``.
Each body is one page webhook with one text message with a unique ``mid`` (except the
deliberate repeats of the redelivery scenario), spread over many users, with per-user
increasing timestamps.

Both generators are closed-loop (each connection sends its next request when the previous
answer arrived), bounded in duration and concurrency, loopback only, and return the same dict::

    {"requests", "duration_s", "rps", "status": {"2xx", "4xx", "5xx", "other"},
     "socket_errors", "latency_ms": {"p50", "p90", "p99", "max", "mean"},
     "issued": [per-thread count of requests handed out], "tool"}
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "wrk_webhook.lua")
PAGE_ID = "100000000000001"


def user_id(n: int) -> str:
    """The PSID the benchmark uses for user number ``n`` (also used to pre-populate tables)."""
    return "7%015d" % n


@dataclass
class Bodies:
    """A generated bodies file and what it holds."""

    path: str
    count: int
    mids: list = field(repr=False, default_factory=list)  # mid of line i

    def unique_in_issued(self, issued: list[int], threads: int) -> int:
        """How many distinct mids are among the lines the threads handed out."""
        seen = set()
        for tid, n in enumerate(issued):
            for k in range(n):
                line = tid + threads * (k % max(1, (self.count - tid + threads - 1) // threads))
                seen.add(self.mids[line])
        return len(seen)


def make_bodies(path: str, count: int, secret: str, *, users: int = 1000, user_pool: int | None = None,
                redeliver: float = 0.0, tag: str = "b", seed: int = 1) -> Bodies:
    """Write ``count`` signed bodies to ``path``.

    :param users: how many distinct users the load is spread over.
    :param user_pool: draw those users at random from ``1..user_pool`` (default: ``1..users``),
        so a large pre-populated table is read all over, not only at its start.
    :param redeliver: fraction of lines that repeat an earlier line byte for byte (same mid, same
        signature), as Meta's at-least-once delivery does.
    """
    rnd = random.Random(seed)
    pool = user_pool or users
    chosen = rnd.sample(range(1, pool + 1), users) if pool > users else list(range(1, users + 1))
    key = secret.encode()
    base_ms = int(time.time() * 1000) - 3_600_000
    lines: list[bytes] = []
    mids: list[str] = []
    with open(path, "wb") as fh:
        for i in range(count):
            if redeliver and i > 50 and rnd.random() < redeliver:
                j = i - rnd.randint(1, 50)
                line, mid = lines[j], mids[j]
            else:
                sender = user_id(chosen[i % users])
                ts = base_ms + i
                mid = "m_%s%d" % (tag, i)
                body = json.dumps({
                    "object": "page",
                    "entry": [{"id": PAGE_ID, "time": ts, "messaging": [{
                        "sender": {"id": sender}, "recipient": {"id": PAGE_ID}, "timestamp": ts,
                        "message": {"mid": mid, "text": "hello bot"},
                    }]}],
                }, separators=(",", ":")).encode()
                sig = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
                line = sig + b"\t" + body + b"\n"
            lines.append(line)
            mids.append(mid)
            fh.write(line)
    return Bodies(path, count, mids)


def read_lines(path: str) -> list[tuple[bytes, bytes]]:
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            sig, _, body = line.rstrip(b"\n").partition(b"\t")
            out.append((sig, body))
    return out


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, bodies: Bodies, *, connections: int, duration: float, threads: int = 1,
            timeout: float = 10.0) -> dict:
    """Run wrk with the webhook script; return the common result dict."""
    threads = max(1, min(threads, connections))  # wrk wants at least one connection per thread
    host_path = url.split("://", 1)[1]
    path = "/" + host_path.split("/", 1)[1] if "/" in host_path else "/"
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, int(round(duration)))}s",
           f"--timeout={int(timeout)}s", "-s", LUA, url, "--", bodies.path, path, str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 60)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (rc={proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    raw = json.loads(line[len("BENCHJSON "):])
    threads_info = sorted(raw["threads"], key=lambda t: t["tid"])
    dur = raw["duration_us"] / 1e6
    st = {k: sum(t["s" + k] for t in threads_info) for k in ("2xx", "4xx", "5xx", "other")}
    e = raw["errors"]
    lat = raw["latency_us"]
    return {
        "tool": "wrk",
        "requests": raw["requests"],
        "duration_s": dur,
        "rps": st["2xx"] / dur if dur else 0.0,
        "status": st,
        "socket_errors": e["connect"] + e["read"] + e["write"] + e["timeout"],
        "latency_ms": {k: lat[k] / 1000.0 for k in ("p50", "p90", "p99", "max", "mean")},
        "issued": [t["issued"] for t in threads_info],
        "wrapped": sum(t["wrapped"] for t in threads_info),
        "threads": threads,
    }


# --- fallback: asyncio raw-socket client (used only when wrk is not installed) -------------------

def _percentile(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


async def _pyload(host: str, port: int, path: str, reqs: list[bytes], connections: int,
                  duration: float, timeout: float) -> dict:
    lat: list[float] = []
    status = {"2xx": 0, "4xx": 0, "5xx": 0, "other": 0}
    errors = 0
    state = {"next": 0, "wrapped": 0}
    deadline = time.perf_counter() + duration

    async def one_conn():
        nonlocal errors
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors += 1
            return
        try:
            while time.perf_counter() < deadline:
                i = state["next"]
                state["next"] += 1
                if i >= len(reqs):
                    state["wrapped"] += 1
                t0 = time.perf_counter()
                writer.write(reqs[i % len(reqs)])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                code = int(head.split(b" ", 2)[1])
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                lat.append(time.perf_counter() - t0)
                status["2xx" if 200 <= code < 300 else "4xx" if 400 <= code < 500
                       else "5xx" if 500 <= code < 600 else "other"] += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one_conn() for _ in range(connections)))
    dur = time.perf_counter() - t0
    lat.sort()
    return {
        "tool": "python",
        "requests": len(lat),
        "duration_s": dur,
        "rps": status["2xx"] / dur if dur else 0.0,
        "status": status,
        "socket_errors": errors,
        "latency_ms": {"p50": _percentile(lat, 50) * 1e3, "p90": _percentile(lat, 90) * 1e3,
                       "p99": _percentile(lat, 99) * 1e3, "max": (lat[-1] if lat else 0) * 1e3,
                       "mean": (sum(lat) / len(lat) if lat else 0) * 1e3},
        "issued": [state["next"]],
        "wrapped": state["wrapped"],
        "threads": 1,
    }


def run_python(url: str, bodies: Bodies, *, connections: int, duration: float, timeout: float = 10.0,
               **_ignored) -> dict:
    """Same load as :func:`run_wrk`, from one asyncio thread (slower: use wrk for real numbers)."""
    host_port, _, path = url.split("://", 1)[1].partition("/")
    host, _, port = host_port.partition(":")
    path = "/" + path
    reqs = [
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"X-Hub-Signature-256: sha256=%s\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), host_port.encode(), sig, len(body), body)
        for sig, body in read_lines(bodies.path)
    ]
    return asyncio.run(_pyload(host, int(port), path, reqs, connections, duration, timeout))


def run_load(url: str, bodies: Bodies, *, tool: str = "auto", **kw) -> dict:
    if tool == "wrk" or (tool == "auto" and have_wrk()):
        return run_wrk(url, bodies, **kw)
    return run_python(url, bodies, **kw)


if __name__ == "__main__":  # tiny self-check: python bench/loadgen.py URL
    import sys, tempfile

    with tempfile.TemporaryDirectory() as d:
        b = make_bodies(os.path.join(d, "b.txt"), 2000, "s3cret")
        print(json.dumps(run_load(sys.argv[1], b, connections=8, duration=2)))
