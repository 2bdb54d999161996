"""Durable references: the least a "nothing lost, nothing doubled" webhook needs, with no framework.

``POST /durable`` (system ``bare_durable``): bare_ack (signature, ``json.loads``) plus one SQLite
``INSERT OR IGNORE`` of each message keyed by its ``mid``, committed before the 200 (WAL,
``synchronous=NORMAL``, as flask_ampalibe's SQLite): an acknowledged event is on disk, and a
redelivered one is not recorded twice.  Plain ``sqlite3``, one connection per thread, SQLite's own
busy handler between writers.

``POST /durable_e2e`` (system ``bare_durable_e2e``): the same, then the event goes to one handler
thread per process, which sends the reply with ``requests`` (as bare_e2e does) and marks the row
done.  What a real bot would also need and this leaves out: sending again after a crash the rows
not done (the benchmark kills nothing), per-user order across processes, user state.
"""
import json
import os
import queue
import sqlite3
import threading
import traceback

import requests
from requests.adapters import HTTPAdapter

from bare_ack import app, parse

DB_FILE = os.environ.get("BENCH_DB_FILE", "bare_durable.db")
GRAPH = os.environ.get("BENCH_GRAPH_URL", "http://127.0.0.1:9").rstrip("/") + "/v24.0/me/messages"
TOKEN = os.environ.get("BENCH_ACCESS_TOKEN", "token")
_local = threading.local()
_handoff: "queue.SimpleQueue[tuple[str, str, str | None]]" = queue.SimpleQueue()
_handler_lock = threading.Lock()
_handler: threading.Thread | None = None


def connection() -> sqlite3.Connection:
    """This thread's connection (made on first use, the table with it)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = sqlite3.connect(DB_FILE, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("CREATE TABLE IF NOT EXISTS event (mid TEXT PRIMARY KEY, sender TEXT NOT NULL, "
                    "body TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0)")
    return con


def record() -> list[tuple[str, str, str | None]]:
    """Verify, parse and durably record the body's messages; return the new ones' ``(mid,
    sender, text)``."""
    body = parse()
    rows = []
    for entry in body.get("entry", ()):
        for item in entry.get("messaging", ()):
            msg = item.get("message") or {}
            if "mid" in msg and not msg.get("is_echo"):
                rows.append((msg["mid"], item["sender"]["id"], json.dumps(item), msg.get("text")))
    con = connection()
    new = []
    with con:  # one transaction, committed before the 200
        for mid, sender, item, text in rows:
            if con.execute("INSERT OR IGNORE INTO event (mid, sender, body) VALUES (?, ?, ?)",
                           (mid, sender, item)).rowcount:
                new.append((mid, sender, text))
    return new


@app.post("/durable")
def webhook_durable():
    record()
    return "EVENT_RECEIVED"


@app.post("/durable_e2e")
def webhook_durable_e2e():
    new = record()
    ensure_handler()
    for row in new:
        _handoff.put(row)
    return "EVENT_RECEIVED"


def ensure_handler() -> None:
    """Start this process's handler thread on first use (after gunicorn's fork)."""
    global _handler
    if _handler is None:
        with _handler_lock:
            if _handler is None:
                _handler = threading.Thread(target=handle_forever, name="bare-durable-handler", daemon=True)
                _handler.start()


def handle_forever() -> None:
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=2))
    con = connection()
    while True:
        mid, sender, text = _handoff.get()
        if text is not None:
            try:
                r = session.post(GRAPH, params={"access_token": TOKEN}, timeout=10, json={
                    "recipient": {"id": sender},
                    "messaging_type": "RESPONSE",
                    "message": {"text": "Hello " + mid},
                })
                r.raise_for_status()
            except requests.RequestException:
                traceback.print_exc()  # the row stays not done; the run counts the reply as lost
                continue
        with con:
            con.execute("UPDATE event SET done = 1 WHERE mid = ?", (mid,))
