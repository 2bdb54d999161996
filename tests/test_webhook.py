"""The webhook routes: verification, signatures, parsing, the inbox's guarantees, assets, health."""
from __future__ import annotations

import http.client
import io
import json
import threading

import pytest
from flask import Flask
from werkzeug.serving import make_server

import flask_ampalibe
from flask_ampalibe.signature import HEADER, generate_signature
from flask_ampalibe.tables import inbox as inbox_table
from flask_ampalibe.webhook import MAX_BODY
from flask_ampalibe.testing import (
    WebhookClient, delivery_event, echo_event, handover_event, message_event, optin_event, page_body,
    reaction_event, read_event, referral_event,
)
from conftest import SECRET, VERIFY, FakeClock


@pytest.fixture
def seen(ext):
    got = []

    @ext.router.command("/")
    def main(sender_id, cmd, **extends):
        got.append((sender_id, str(cmd)))

    return got


def _count_inbox(app):
    state = app.extensions["ampalibe"]
    state.store.ensure()
    with state.store.engine.connect() as conn:
        return len(conn.execute(inbox_table.select()).all())


# -- verification ----------------------------------------------------------------------------------
@pytest.mark.parametrize("params, status", [
    ({"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "c123"}, 200),
    ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "c123"}, 403),
    ({"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "c123"}, 403),
    ({"hub.mode": "subscribe", "hub.verify_token": VERIFY}, 403),
    ({"hub.mode": "subscribe", "hub.challenge": "c123"}, 403),
    ({}, 403),
])
def test_verify(client, params, status):
    response = client.get("/", query_string=params)
    assert response.status_code == status
    assert response.mimetype == "text/plain"
    if status == 200:
        assert response.data == b"c123"


# -- signatures ----------------------------------------------------------------------------------
def test_missing_or_wrong_signature_is_403_and_nothing_recorded(app, hook, seen):
    body = page_body(message_event("u", "hello"))
    assert hook.post_body(body, sign=False).status_code == 403
    assert hook.post_body(body, signature="sha256=" + "0" * 64).status_code == 403
    assert hook.post_body(body, signature="sha1=abc").status_code == 403
    assert seen == [] and _count_inbox(app) == 0
    assert hook.post_body(body).status_code == 200
    assert seen == [("u", "hello")]


def test_signature_is_over_the_raw_bytes(hook, seen):
    # Meta signs the escaped-unicode body it sends; re-serialising would change the bytes.
    raw = b'{"object":"page","entry":[{"id":"1","time":1,"messaging":[{"sender":{"id":"u"},' \
          b'"recipient":{"id":"1"},"timestamp":5,"message":{"mid":"m.1","text":"caf\\u00e9 \\ud83d\\ude00"}}]}]}'
    assert hook.post_body(raw).status_code == 200
    assert seen == [("u", "café 😀")]


# -- parsing -------------------------------------------------------------------------------------
def test_every_event_of_a_batch_is_handled(hook, seen):
    body = {"object": "page", "entry": [
        {"id": "p", "time": 1, "messaging": [message_event(f"u{e}", f"e{e}m{m}") for m in range(2)]}
        for e in range(3)
    ]}
    assert hook.post_body(body).status_code == 200
    assert sorted(seen) == sorted((f"u{e}", f"e{e}m{m}") for e in range(3) for m in range(2))


def test_echoes_are_never_routed_as_user_messages(hook, seen):
    assert hook.post(echo_event("u", "I am the page")).status_code == 200
    assert seen == []


@pytest.mark.parametrize("item", [
    read_event("u"), delivery_event("u", ["m1"]), reaction_event("u", "m1"), optin_event("u", payload=""),
    referral_event("u", "ad"), handover_event("u"), handover_event("u", "app_roles", **{"1": ["primary"]}),
    {"sender": {"id": "u"}, "recipient": {"id": "p"}, "timestamp": 1, "brand_new_kind": {"x": 1}},
    {"sender": {"id": "u"}},
    {"weird": True},
    "not an object",
])
def test_every_unknown_or_unhandled_kind_is_acknowledged(hook, seen, item):
    assert hook.post(item).status_code == 200
    assert seen == []


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[1, 2]", b'"page"', b'{"object": "user", "entry": []}', b'{"object": "page"}',
    b'{"object": "page", "entry": {"id": 1}}', b"\xff\xfe\x00", b'{"object": "page", "entry": [' * 50,
])
def test_malformed_bodies_are_400(hook, seen, raw):
    assert hook.post_body(raw).status_code == 400
    assert seen == []


def test_invalid_items_are_kept_as_rejected_and_the_rest_of_the_batch_is_handled(app, hook, seen, caplog):
    body = {"object": "page", "entry": [
        "junk", {"id": "p", "messaging": "not a list"}, {"id": "p", "messaging": [None, 5, message_event("u", "ok")]},
        {"id": "p", "messaging": [{"sender": {"id": "v"}, "timestamp": "soon", "message": {"mid": "x", "text": "t"}}]},
        {"id": "p", "messaging": [{"sender": {"id": "w"}, "timestamp": 1, "message": "a string"}]},
    ]}
    with caplog.at_level("WARNING", logger="flask_ampalibe.webhook"):
        assert hook.post_body(body).status_code == 200
    assert seen == [("u", "ok")]
    inbox = app.extensions["ampalibe"].inbox
    assert inbox.stats()["rejected"] == 6 and inbox.stats()["done"] == 1
    reasons = sorted(row["error"] for row in inbox.rejected())
    assert reasons == sorted(["entry 0 is not an object", "entry 1: messaging is not a list",
                              "the item is not an object", "the item is not an object",
                              "timestamp is not an integer", "message is not an object"])
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 6  # logged once each
    # A redelivery of the same body adds no row.
    assert hook.post_body(body).status_code == 200
    assert inbox.stats()["rejected"] == 6 and seen == [("u", "ok")]


# -- inbox guarantees ----------------------------------------------------------------------------
def test_redelivered_event_is_handled_once(app, hook, seen):
    event = message_event("u", "once", mid="m.same")
    assert hook.post(event).status_code == 200
    assert hook.post(event).status_code == 200
    assert hook.post(event, message_event("u", "twice", mid="m.other")).status_code == 200
    assert seen == [("u", "once"), ("u", "twice")]
    assert app.extensions["ampalibe"].inbox.stats()["done"] == 2


def test_each_message_is_routed_by_the_action_its_predecessor_set(app, ext, hook):
    # The inbox reads the user's action in the transaction that hands out the next event:
    # the previous handler's set_action must be seen there.
    got = []
    query = app.extensions["ampalibe"].query

    @ext.router.command("/")
    def main(sender_id, cmd, **extends):
        got.append(("main", str(cmd)))
        query.set_action(sender_id, "/name")

    @ext.router.action("/name")
    def name(sender_id, cmd, **extends):
        got.append(("name", str(cmd)))
        query.set_action(sender_id, None)

    assert hook.post(message_event("u", "hi", timestamp=1), message_event("u", "Ana", timestamp=2),
                     message_event("u", "again", timestamp=3)).status_code == 200
    assert got == [("main", "hi"), ("name", "Ana"), ("main", "again")]


def test_an_action_set_by_middleware_routes_the_same_event(app, ext, hook):
    got = []
    query = app.extensions["ampalibe"].query

    @ext.router.before_receive
    def to_survey(sender_id, **extends):
        query.set_action(sender_id, "/survey")

    @ext.router.command("/")
    def main(sender_id, cmd, **extends):
        got.append("main")

    @ext.router.action("/survey")
    def survey(sender_id, cmd, **extends):
        got.append("survey")

    assert hook.post(message_event("u", "hi")).status_code == 200
    assert got == ["survey"]


def test_events_without_mid_are_deduplicated_too(ext, hook):
    reads = []

    @ext.router.event("read")
    def on_read(sender_id, watermark, **extends):
        reads.append(watermark)

    item = read_event("u", watermark=1234, timestamp=99)
    hook.post(item)
    hook.post(item)
    hook.post(read_event("u", watermark=1235, timestamp=100))
    assert reads == [1234, 1235]


def test_a_users_events_are_handled_in_timestamp_order(tmp_path, graph):
    # Worker mode records only: both posts land before anything runs, as when Meta redelivers
    # an older event after a newer one; the worker then takes them oldest first.
    app = Flask("ordered", instance_path=str(tmp_path / "i"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="worker")
    router = flask_ampalibe.Router()
    order = []

    @router.command("/")
    def main(sender_id, cmd, **extends):
        order.append(str(cmd))

    flask_ampalibe.Ampalibe(app, router=router)
    hook = WebhookClient(app.test_client(), SECRET)
    hook.post(message_event("u", "second", timestamp=2000))
    hook.post(message_event("u", "first", timestamp=1000), message_event("u", "third", timestamp=3000))
    assert order == []
    state = app.extensions["ampalibe"]
    assert state.inbox.stats()["pending"] == 3
    assert state.executor.drain("u") == 3
    assert order == ["first", "second", "third"]


def test_failing_handler_is_recorded_and_does_not_block_later_events(app, ext, hook):
    got, errors = [], []

    @ext.router.command("/")
    def main(sender_id, cmd, **extends):
        if cmd == "boom":
            raise RuntimeError("handler exploded")
        got.append(str(cmd))

    @ext.router.on_error
    def report(error, sender_id, **extends):
        errors.append((sender_id, str(error)))

    assert hook.send_text("u", "boom").status_code == 200
    assert hook.send_text("u", "fine").status_code == 200
    assert got == ["fine"] and errors == [("u", "handler exploded")]
    inbox = app.extensions["ampalibe"].inbox
    (failed,) = inbox.failed()
    assert "handler exploded" in failed["error"] and "Traceback" in failed["error"]
    assert inbox.stats()["failed"] == 1

    # the operator replays it once the bug is fixed
    main_calls = []
    ext.router.commands["/"] = lambda sender_id, cmd, **kw: main_calls.append(str(cmd))
    assert inbox.replay() == ["u"]
    app.extensions["ampalibe"].executor.drain("u")
    assert main_calls == ["boom"] and inbox.stats()["failed"] == 0


def test_handlers_see_redelivered_flag_after_a_lost_lease(tmp_path, graph):
    app = Flask("lease", instance_path=str(tmp_path / "i"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="worker", AMPALIBE_LEASE_SECONDS=0.2)
    router = flask_ampalibe.Router()
    flags = []

    @router.command("/")
    def main(sender_id, redelivered, **extends):
        flags.append(redelivered)

    flask_ampalibe.Ampalibe(app, router=router)
    state = app.extensions["ampalibe"]
    state.inbox.clock = clock = FakeClock()
    WebhookClient(app.test_client(), SECRET).send_text("u", "hi")
    # a worker claims the user and starts the event, then dies without finishing
    assert state.inbox.claim("u", "dead-worker", 0.2)
    assert state.inbox.next_event("u", "dead-worker", 0.2) is not None
    assert state.executor.drain("u") == 0  # the lease is still held
    clock.advance(0.3)
    assert state.executor.drain("u") == 1
    assert flags == [True]


def test_database_down_is_503_so_facebook_retries(tmp_path, graph, hook, seen, app):
    state = app.extensions["ampalibe"]
    state.store.ensure()
    with state.store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE amp_inbox")
    assert hook.send_text("u", "x").status_code == 503


def test_with_the_journal_a_journal_that_cannot_be_written_is_503_too(app, router):
    app.config["AMPALIBE_WEBHOOK_JOURNAL"] = True
    flask_ampalibe.Ampalibe(app, router=router)
    router.command("/")(lambda sender_id, cmd, **extends: None)  # messages are wanted
    state = app.extensions["ampalibe"]
    try:
        journal = state.inbox.journal
        assert journal is not None
        journal.id  # its tables exist
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE amp_journal")
        assert WebhookClient(app.test_client(), SECRET).send_text("u", "x").status_code == 503
    finally:
        state.executor.shutdown(timeout=5)


def test_large_bodies_are_refused(hook):
    assert hook.post_body(b"{" + b" " * (5 * 1024 * 1024) + b"}").status_code == 413


# -- assets --------------------------------------------------------------------------------------
@pytest.fixture
def assets(tmp_path):
    (tmp_path / "assets" / "public" / "img").mkdir(parents=True)
    (tmp_path / "assets" / "private").mkdir(parents=True)
    (tmp_path / "assets" / "public" / "img" / "logo.txt").write_text("public logo")
    (tmp_path / "assets" / "private" / "secret.txt").write_text("private")
    (tmp_path / "outside.txt").write_text("outside")
    return tmp_path


@pytest.mark.parametrize("path", [
    "/asset/../private/secret.txt", "/asset/%2e%2e/private/secret.txt", "/asset/..%2fprivate%2fsecret.txt",
    "/asset/%2E%2E%2Fprivate%2Fsecret.txt", "/asset/private/secret.txt", "/asset/../../outside.txt",
    "/asset//etc/passwd", "/asset/%2Fetc%2Fpasswd", "/asset/img/../../private/secret.txt",
    "/asset/..\\private\\secret.txt", "/asset/missing.png",
])
def test_asset_route_serves_only_public(client, assets, path):
    with client.get(path, follow_redirects=True) as response:  # "//" is merged by a redirect first
        assert response.status_code == 404, path
        assert b"private" not in response.data and b"outside" not in response.data


def test_asset_route_serves_public_files(client, assets):
    with client.get("/asset/img/logo.txt") as response:
        assert response.status_code == 200 and response.data == b"public logo"


# -- health ----------------------------------------------------------------------------------------
def test_health_endpoint_is_off_by_default(client):
    assert client.get("/_ampalibe/health").status_code == 404


def test_health_endpoint_needs_its_token(tmp_path, graph):
    app = Flask("health", instance_path=str(tmp_path / "i"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="worker", AMPALIBE_HEALTH_TOKEN="ops")
    router = flask_ampalibe.Router()
    router.command("/")(lambda sender_id, **kw: None)
    flask_ampalibe.Ampalibe(app, router=router)
    app.extensions["ampalibe"].inbox.clock = clock = FakeClock()
    client = app.test_client()
    WebhookClient(client, SECRET).send_text("u", "x")
    clock.advance(7.5)
    assert client.get("/_ampalibe/health").status_code == 401
    assert client.get("/_ampalibe/health", headers={"Authorization": "Bearer nope"}).status_code == 401
    stats = client.get("/_ampalibe/health", headers={"Authorization": "Bearer ops"}).get_json()
    assert stats["pending"] == 1 and stats["received"] == 1 and stats["oldest_pending_age"] == 7.5


# -- hostile bodies (issue 12) ---------------------------------------------------------------------
class CountingStream(io.BytesIO):
    """A request body that says how much of it the server read (its position)."""

    @property
    def pos(self) -> int:
        return self.tell()


def _big_signed_body(size: int) -> bytes:
    body = page_body(message_event("u", "x" * size))
    return json.dumps(body).encode()


def test_a_chunked_body_over_the_limit_is_413_after_reading_at_most_the_limit(client, seen):
    # As gunicorn and werkzeug's server pass a chunked body: no Content-Length, the stream ends
    # where the body does (wsgi.input_terminated).
    raw = _big_signed_body(12 * 1024 * 1024)
    stream = CountingStream(raw)
    response = client.post("/", input_stream=stream, environ_overrides={"wsgi.input_terminated": True},
                           headers={"Transfer-Encoding": "chunked", HEADER: generate_signature(SECRET, raw),
                                    "Content-Type": "application/json"})
    assert response.status_code == 413
    assert stream.pos <= MAX_BODY + 1
    assert seen == []


def test_a_chunked_body_within_the_limit_is_received(client, seen):
    raw = json.dumps(page_body(message_event("u", "small"))).encode()
    response = client.post("/", input_stream=CountingStream(raw), environ_overrides={"wsgi.input_terminated": True},
                           headers={"Transfer-Encoding": "chunked", HEADER: generate_signature(SECRET, raw)})
    assert response.status_code == 200
    assert seen == [("u", "small")]


def test_a_chunked_upload_over_a_real_socket_is_refused_at_the_limit(app, ext, seen):
    # The same through werkzeug's HTTP server, which de-chunks the body itself.
    raw = _big_signed_body(12 * 1024 * 1024)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        chunks = (raw[i:i + 65536] for i in range(0, len(raw), 65536))
        try:
            conn.request("POST", "/", body=chunks, encode_chunked=True,
                         headers={HEADER: generate_signature(SECRET, raw), "Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the client finished sending
        assert conn.getresponse().status == 413
        conn.close()
    finally:
        server.shutdown()
        thread.join(5)
    assert seen == []


@pytest.mark.parametrize("value", ["sha256=\u00e9", "sha256=" + "\u00ff" * 64, "\u0100", "sha256=\udcff"])
def test_a_non_ascii_signature_is_403_not_500(hook, seen, value):
    body = json.dumps(page_body(message_event("u", "hi"))).encode()
    response = hook.client.post("/", data=body, headers={HEADER: value.encode("utf-8", "surrogateescape")
                                                         .decode("latin-1")})
    assert response.status_code == 403
    assert seen == []


@pytest.mark.parametrize("raw", [b"[" * 1000 + b"]" * 1000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                 b'{"object":"page","entry":[{"id":"p","messaging":[' + b"[" * 100000])
def test_deeply_nested_json_is_400_not_500(hook, seen, raw):
    assert hook.post_body(raw).status_code == 400
    assert seen == []
