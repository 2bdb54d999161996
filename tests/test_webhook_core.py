"""The framework-free webhook core (flask_ampalibe.webhook), driven without any Flask app."""
from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

import flask_ampalibe.webhook as webhook_module
from flask_ampalibe.signature import generate_signature
from flask_ampalibe.testing import message_event, page_body, read_event
from flask_ampalibe.webhook import Webhook, read_limited

SECRET = "core-secret"


class Recorder:
    def __init__(self, fail: Exception | None = None) -> None:
        self.events: list = []
        self.notified: list = []
        self.fail = fail

    def record(self, events):
        if self.fail is not None:
            raise self.fail
        self.events.extend(events)
        return list(dict.fromkeys(e.sender_id for e in events))

    def notify(self, users):
        self.notified.append(list(users))


def _signed(body) -> tuple[bytes, str]:
    raw = json.dumps(body).encode()
    return raw, generate_signature(SECRET, raw)


def test_the_core_imports_no_web_framework():
    tree = ast.parse(Path(webhook_module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not imported & {"flask", "werkzeug"}


def test_a_signed_body_is_recorded_then_notified():
    rec = Recorder()
    hook = Webhook(rec.record, rec.notify, secret=SECRET)
    raw, sig = _signed(page_body(message_event("u1", "a"), message_event("u2", "b")))
    assert hook.receive(raw, sig) == (200, "EVENT_RECEIVED")
    assert [e.sender_id for e in rec.events] == ["u1", "u2"]
    assert rec.notified == [["u1", "u2"]]


def test_forged_or_unsigned_bodies_are_403_and_not_recorded():
    rec = Recorder()
    hook = Webhook(rec.record, rec.notify, secret=SECRET)
    raw, sig = _signed(page_body(message_event("u1", "a")))
    assert hook.receive(raw, None).status == 403
    assert hook.receive(raw + b" ", sig).status == 403
    assert hook.receive(raw, "sha256=\u00e9").status == 403
    assert rec.events == [] and rec.notified == []


def test_without_a_secret_unsigned_bodies_are_accepted():
    rec = Recorder()
    raw, _ = _signed(page_body(message_event("u1", "a")))
    assert Webhook(rec.record, rec.notify).receive(raw, None).status == 200


def test_events_nobody_wants_are_not_recorded():
    rec = Recorder()
    hook = Webhook(rec.record, rec.notify, wants=lambda event: event.kind == "message")
    raw, _ = _signed(page_body(message_event("u1", "a"), read_event("u1")))
    assert hook.receive(raw, None).status == 200
    assert [e.kind for e in rec.events] == ["message"]


def test_a_database_outage_is_503_and_nobody_is_notified():
    rec = Recorder(fail=OperationalError("INSERT", {}, Exception("server closed the connection")))
    raw, _ = _signed(page_body(message_event("u1", "a")))
    assert Webhook(rec.record, rec.notify).receive(raw, None) == (503, "Service Unavailable")
    assert rec.notified == []


@pytest.mark.parametrize("raw", [b"", b"nope", b"[1]", b'{"object":"page"}', b"[" * 10000])
def test_not_a_page_webhook_is_400(raw):
    rec = Recorder()
    assert Webhook(rec.record, rec.notify).receive(raw, None).status == 400
    assert rec.notified == []


def test_read_limited_reads_at_most_one_byte_past_the_limit():
    stream = io.BytesIO(b"x" * 1000)
    assert read_limited(stream, 100) is None
    assert stream.tell() == 101
    assert read_limited(io.BytesIO(b"x" * 100), 100) == b"x" * 100
    untouched = io.BytesIO(b"x" * 10)
    assert read_limited(untouched, 100, length=101) is None and untouched.tell() == 0


def test_receive_stream_applies_the_limit_before_the_signature():
    rec = Recorder()
    hook = Webhook(rec.record, rec.notify, secret=SECRET, max_body=64)
    raw, sig = _signed(page_body(message_event("u1", "a" * 100)))
    assert hook.receive_stream(io.BytesIO(raw), None, sig).status == 413
    assert hook.receive_stream(io.BytesIO(raw), None, None).status == 413  # not 403: never looked at
    assert rec.events == []
