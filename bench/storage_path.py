"""CPU per event of the storage hot path, two versions of flask_ampalibe in the same run.

    python bench/storage_path.py                      # this checkout against `git main`, SQLite
    python bench/storage_path.py --base HEAD~3 --rounds 7 --url postgresql+psycopg://u:p@127.0.0.1:5432/db

No HTTP, no Flask, no threads: only what the webhook and the executor ask of the database per
event, through the public API of :class:`~flask_ampalibe.inbox.Inbox` and
:class:`~flask_ampalibe.storage.Store`, as the hello bot of bench/run.py does it:

- ``record``: one ``Inbox.record`` per event (one event per webhook request);
- ``handle``: ``take``, then ``next_event(finished=...)`` until the user has nothing left, and the
  bot's own ``get_temp`` + ``set_temp`` for each event, between the two: while the event is
  handed out, as a handler runs them (since the state commits with the event, they are served by
  the user's unit and written in ``next_event``'s finish transaction).

``--per-user 1`` (the default) records one event and drains it at once, like a chat where every
message is answered before the next one; ``--per-user 10`` records ten per user first (bursts,
the steady ``next_event`` path).  The base version (``--base``, a git revision) is exported with
``git archive``; each round runs both versions, alternately, in fresh processes, so a busy machine
slows both alike.  Reported: median CPU µs per event (process time of a single-threaded process)
and the ratio this checkout / base, plus SQL statements, write transactions (commits) and
read-only transactions (rolled back) per event.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

WORKER = r"""
import json, os, sys, time
import sqlalchemy as sa
from flask_ampalibe.events import parse_body
from flask_ampalibe.inbox import Inbox
from flask_ampalibe.engine import make_engine
from flask_ampalibe.storage import Store
from flask_ampalibe.tables import metadata
from flask_ampalibe.testing import message_event, page_body

url, users, per_user, count_only = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
engine = make_engine(url)
if not url.startswith("sqlite"):  # every table, the schema revision's too, or nothing would be created again
    existing = sa.MetaData()
    existing.reflect(engine)
    existing.drop_all(engine)
store = Store(engine)
store.create_all()
inbox = Inbox(store, webhook_engine=make_engine(url, webhook=True))  # as the app makes it
with engine.begin() as conn:  # the users already exist, as in bench/run.py's hello scenario
    conn.execute(sa.insert(metadata.tables["amp_user"]), [{"user_id": f"u{i}", "last_use": 0.0} for i in range(users)])
bodies = [[parse_body(page_body(message_event(f"u{u}", "hi", mid=f"m.{u}.{n}", timestamp=1000 + n)))
           for n in range(per_user)] for u in range(users)]
counts = {"statements": 0, "transactions": 0, "reads": 0}
if count_only:
    for counted in {engine, inbox.webhook_engine}:  # one engine on an SQLite file's
        sa.event.listen(counted, "before_cursor_execute",
                        lambda *a: counts.__setitem__("statements", counts["statements"] + 1))
        sa.event.listen(counted, "commit", lambda *a: counts.__setitem__("transactions", counts["transactions"] + 1))
        sa.event.listen(counted, "rollback", lambda *a: counts.__setitem__("reads", counts["reads"] + 1))

def handle(user):
    claimed = inbox.take(user, "bench", 30.0)
    while claimed is not None:
        value = store.get_temp(user, "n") or 0
        store.set_temp(user, "n", value + 1)
        claimed = inbox.next_event(user, "bench", 30.0, finished=claimed)

record = handling = 0.0
for u in range(users):
    user = f"u{u}"
    t0 = time.process_time()
    for events in bodies[u]:
        inbox.record(events)
    t1 = time.process_time()
    handle(user)
    t2 = time.process_time()
    record += t1 - t0
    handling += t2 - t1
n = users * per_user
assert inbox.stats()["done"] == n, inbox.stats()
print(json.dumps({"record_us": record / n * 1e6, "handle_us": handling / n * 1e6,
                  "statements": counts["statements"] / n, "transactions": counts["transactions"] / n,
                  "reads": counts["reads"] / n}))
"""


def export(rev: str, dest: str) -> str:
    """``flask_ampalibe`` of git revision ``rev`` under ``dest``; returns the folder to import it from."""
    archive = subprocess.run(["git", "-C", REPO, "archive", rev, "flask_ampalibe"], check=True,
                             capture_output=True).stdout
    path = os.path.join(dest, "lib")
    os.makedirs(path)
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(path, filter="data")
    return path


def run_once(lib: str, url: str, users: int, per_user: int, count_only: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": lib}
    out = subprocess.run([sys.executable, "-c", WORKER, url, str(users), str(per_user), "1" if count_only else "0"],
                         env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"benchmark worker failed ({lib}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--url", default="", help="database URL (default: a fresh SQLite file per run); "
                        "a server database is emptied (its amp_ tables dropped) before each run")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--per-user", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ampbench-") as tmp:
        libs = {"base": export(args.base, tmp), "this": REPO}
        results: dict[str, list[dict]] = {"base": [], "this": []}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for name in (("base", "this") if r % 2 == 0 else ("this", "base")):
                url = args.url or f"sqlite:///{tmp}/{name}-{r}.db"
                results[name].append(run_once(libs[name], url, args.users, args.per_user, False))
        counts = {name: run_once(libs[name], args.url or f"sqlite:///{tmp}/{name}-count.db",
                                 min(args.users, 50), args.per_user, True) for name in libs}
        load_after = os.getloadavg()

    print(f"storage hot path, {args.users} users x {args.per_user} event(s), {args.rounds} rounds, "
          f"{(args.url or 'sqlite').split(':')[0]}; base = {args.base}; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'':10}{'record µs/event':>18}{'handle µs/event':>18}{'total':>10}{'statements':>12}{'transactions':>14}"
          f"{'read-only':>11}")
    medians = {}
    for name in ("base", "this"):
        rec = statistics.median(x["record_us"] for x in results[name])
        han = statistics.median(x["handle_us"] for x in results[name])
        medians[name] = (rec, han, rec + han)
        c = counts[name]
        print(f"{name:10}{rec:18.0f}{han:18.0f}{rec + han:10.0f}{c['statements']:12.1f}{c['transactions']:14.1f}"
              f"{c.get('reads', 0):11.1f}")
    b, t = medians["base"], medians["this"]
    print(f"{'this/base':10}{t[0] / b[0]:18.2f}{t[1] / b[1]:18.2f}{t[2] / b[2]:10.2f}")


if __name__ == "__main__":
    main()
