"""End-to-end ceiling: bare_ack plus one Send API call per message, inline, on a pooled Session."""
import os
import threading

import requests
from requests.adapters import HTTPAdapter

from bare_ack import app, parse

GRAPH = os.environ["BENCH_GRAPH_URL"].rstrip("/") + "/v24.0/me/messages"
TOKEN = os.environ.get("BENCH_ACCESS_TOKEN", "token")
_local = threading.local()


def session() -> requests.Session:
    # One keep-alive Session per worker thread (the pool then never waits for a free connection).
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
        s.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=2))
    return s


@app.post("/e2e")
def webhook_e2e():
    body = parse()
    for entry in body.get("entry", ()):
        for item in entry.get("messaging", ()):
            msg = item.get("message") or {}
            if "text" in msg and not msg.get("is_echo"):
                r = session().post(GRAPH, params={"access_token": TOKEN}, timeout=10, json={
                    "recipient": {"id": item["sender"]["id"]},
                    "messaging_type": "RESPONSE",
                    "message": {"text": "Hello " + msg.get("mid", "")},
                })
                r.raise_for_status()
    return "EVENT_RECEIVED"
