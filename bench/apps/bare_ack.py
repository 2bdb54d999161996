"""Ack ceiling: a bare Flask webhook that only verifies the signature and parses the JSON."""
import hashlib
import hmac
import json
import os

from flask import Flask, abort, request

SECRET = os.environ["BENCH_APP_SECRET"].encode()
VERIF_TOKEN = os.environ.get("BENCH_VERIF_TOKEN", "verif")

app = Flask(__name__)


@app.get("/")
def verify():
    if request.args.get("hub.verify_token") != VERIF_TOKEN:
        abort(403)
    return request.args.get("hub.challenge", "")


def parse() -> dict:
    raw = request.get_data()
    sig = request.headers.get("X-Hub-Signature-256", "")
    expected = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, expected):
        abort(403)
    try:
        body = json.loads(raw)
    except ValueError:
        abort(400)
    if not isinstance(body, dict) or body.get("object") != "page":
        abort(400)
    return body


@app.post("/")
def webhook():
    parse()
    return "EVENT_RECEIVED"
