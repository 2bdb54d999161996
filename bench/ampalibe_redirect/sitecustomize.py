"""Installed by bench/run.py into the Ampalibe 1.1.9 virtualenv only (bench/.work/ampvenv).

Ampalibe hard-codes https://graph.facebook.com. When AMPALIBE_BENCH_GRAPH_URL is set (only the
harness sets it), every requests call to that host is rewritten to the fake Graph API on
loopback. The rewrite sits in requests.Session.request, under Ampalibe's own requests.post, so
its real client path (a new Session and TCP connection per call) is what gets measured.
"""
import os

_TARGET = os.environ.get("AMPALIBE_BENCH_GRAPH_URL")
_REAL = "https://graph.facebook.com"

if _TARGET:
    import requests.sessions

    _request = requests.sessions.Session.request

    def request(self, method, url, *args, **kwargs):
        if isinstance(url, str) and url.startswith(_REAL):
            url = _TARGET.rstrip("/") + url[len(_REAL):]
        return _request(self, method, url, *args, **kwargs)

    requests.sessions.Session.request = request
