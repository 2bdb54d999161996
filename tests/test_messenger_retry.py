"""Retries: transient Graph errors are retried with bounded backoff; nothing is ever sent twice."""
from __future__ import annotations

import logging
import socket
import time

import pytest

from flask_ampalibe.errors import AmpalibeError
from flask_ampalibe.messenger import TRANSIENT_CODES, GraphConnectionError, GraphError, GraphTimeout, Messenger
from flask_ampalibe.testing.graph import FakeGraph

TOKEN = "retry-secret-token"
USER = "777"


class Clock:
    """A fake clock that moves only when the client sleeps (so the budget is testable, and fast)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def make_chat(url: str, clock: Clock, **options: object) -> Messenger:
    options.setdefault("timeout", 5)
    chat = Messenger(TOKEN, graph_url=url, **options)  # type: ignore[arg-type]
    chat.sleep, chat.clock = clock.sleep, clock
    return chat


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chat(graph: FakeGraph, clock: Clock) -> Messenger:
    messenger = make_chat(graph.url, clock)
    yield messenger
    messenger.close()


def delivered(graph: FakeGraph, results: list[int]) -> int:
    return sum(1 for status in results if status == 200)


def test_613_then_success_delivers_one_message(chat: Messenger, graph: FakeGraph, clock: Clock) -> None:
    graph.fail_next(status=400, error={"code": 613, "message": "Calls to this api have exceeded the rate limit."})
    res = chat.send_text(USER, "Hello")
    assert res.status_code == 200
    assert len(graph.sends()) == 2  # one refused attempt, one delivered message
    assert graph.sent_texts(USER) == ["Hello", "Hello"]  # the fake records the refused attempt too
    assert len(clock.sleeps) == 1 and 0.25 <= clock.sleeps[0] <= 0.5


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES))
def test_every_transient_code_is_retried(chat: Messenger, graph: FakeGraph, clock: Clock, code: int) -> None:
    graph.fail_next(status=500 if code in (1, 2) else 400, error={"code": code})
    assert chat.send_text(USER, "x").status_code == 200
    assert len(graph.requests) == 2 and len(clock.sleeps) == 1


@pytest.mark.parametrize("error", [
    {"code": 100},
    {"code": 100, "error_subcode": 2018001},
    {"code": 551},
    {"code": 190},
    {"code": 10, "error_subcode": 2018278},
    {"code": 200, "error_subcode": 2018108},
    {"code": 368},
])
def test_permanent_errors_are_never_retried(chat: Messenger, graph: FakeGraph, clock: Clock, error: dict,
                                            caplog: pytest.LogCaptureFixture) -> None:
    graph.fail_next(status=400, error={**error, "fbtrace_id": "TRACE"})
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.messenger"):
        res = chat.send_text(USER, "secret words")
    assert res.status_code == 400 and res.json()["error"]["code"] == error["code"]
    assert len(graph.requests) == 1 and clock.sleeps == []
    logged = caplog.text
    assert f"code={error['code']}" in logged and "fbtrace_id=TRACE" in logged
    assert TOKEN not in logged and "secret words" not in logged


def test_retries_are_bounded_in_count_with_growing_jittered_delays(graph: FakeGraph, clock: Clock) -> None:
    chat = make_chat(graph.url, clock, max_retries=4)
    graph.fail_next(status=400, error={"code": 4}, count=10)
    res = chat.send_text(USER, "x")
    assert res.status_code == 400 and res.json()["error"]["code"] == 4  # the last answer is returned
    assert len(graph.requests) == 5
    assert len(clock.sleeps) == 4
    for n, delay in enumerate(clock.sleeps):
        nominal = 0.5 * 2 ** n
        assert nominal / 2 <= delay <= nominal
    chat.close()


def test_retries_are_bounded_in_total_time(graph: FakeGraph, clock: Clock) -> None:
    chat = make_chat(graph.url, clock, max_retries=50, retry_budget=5.0)
    chat.backoff_max = 2.0
    graph.fail_next(status=400, error={"code": 17}, count=100)
    chat.send_text(USER, "x")
    assert sum(clock.sleeps) <= 5.0
    assert 3 <= len(clock.sleeps) < 10
    assert len(graph.requests) == len(clock.sleeps) + 1
    chat.close()


def test_no_retries_when_max_retries_is_zero(graph: FakeGraph, clock: Clock) -> None:
    chat = make_chat(graph.url, clock, max_retries=0)
    graph.fail_next(status=400, error={"code": 613})
    assert chat.send_text(USER, "x").status_code == 400
    assert len(graph.requests) == 1
    chat.close()


@pytest.mark.parametrize("status", [502, 503])
def test_gateway_errors_without_graph_body_are_retried(chat: Messenger, graph: FakeGraph, status: int) -> None:
    graph.fail_next(status=status)
    assert chat.send_text(USER, "x").status_code == 200
    assert len(graph.requests) == 2


@pytest.mark.parametrize("status", [500, 504])
def test_send_with_unknown_outcome_5xx_is_not_retried(chat: Messenger, graph: FakeGraph, status: int) -> None:
    graph.fail_next(status=status)  # no Graph error code: the message may have gone out
    assert chat.send_text(USER, "x").status_code == status
    assert len(graph.requests) == 1


def test_idempotent_reads_are_retried_on_any_5xx(chat: Messenger, graph: FakeGraph) -> None:
    graph.fail_next(status=500)
    assert chat.get_user_profile(USER)["id"] == USER
    assert len(graph.requests) == 2


def test_read_timeout_after_sending_is_not_retried(graph: FakeGraph, clock: Clock) -> None:
    chat = make_chat(graph.url, clock, timeout=0.3)
    graph.fail_next(status=200, delay=1.0)
    started = time.monotonic()
    with pytest.raises(GraphTimeout) as info:
        chat.send_text(USER, "Pay 10 euros")
    assert time.monotonic() - started < 1.0
    assert len(graph.requests) == 1 and clock.sleeps == []
    assert isinstance(info.value, GraphError) and isinstance(info.value, AmpalibeError)
    assert "not retried" in str(info.value)
    assert TOKEN not in str(info.value) and info.value.__suppress_context__
    chat.close()


def test_read_timeout_on_a_read_is_retried(graph: FakeGraph, clock: Clock) -> None:
    chat = make_chat(graph.url, clock, timeout=0.3)
    graph.fail_next(status=200, delay=1.0)
    assert chat.get_user_profile(USER)["id"] == USER
    assert len(graph.requests) == 2
    chat.close()


def test_connection_dropped_after_sending_is_not_retried(chat: Messenger, graph: FakeGraph, clock: Clock) -> None:
    graph.fail_next(drop=True)
    with pytest.raises(GraphConnectionError, match="may have been carried out"):
        chat.send_text(USER, "x")
    assert len(graph.requests) == 1 and clock.sleeps == []


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_connection_refused_is_retried_then_reported(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    chat = make_chat(closed_port_url(), clock, max_retries=3)
    with caplog.at_level(logging.DEBUG, logger="flask_ampalibe.messenger"):
        with pytest.raises(GraphConnectionError, match="could not be reached") as info:
            chat.send_text(USER, "x")
    assert len(clock.sleeps) == 3
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text
    chat.close()


def test_connection_refused_then_graph_back(graph: FakeGraph, clock: Clock) -> None:
    """Graph unreachable for the first attempt only: the message is delivered once."""
    import requests

    dead = closed_port_url()

    class FirstAttemptRefused(requests.Session):
        calls = 0

        def request(self, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
            self.calls += 1
            if self.calls == 1:
                url = url.replace(graph.url, dead)  # a real refused connection
            return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]

    session = FirstAttemptRefused()
    chat = make_chat(graph.url, clock, session=session)
    assert chat.send_text(USER, "x").status_code == 200
    assert session.calls == 2 and len(graph.requests) == 1 and len(clock.sleeps) == 1
    session.close()


def test_payload_too_long_raises_before_sending(chat: Messenger, graph: FakeGraph) -> None:
    def encoder(obj: object) -> str:
        raise ValueError("Payload encodes to 1200 characters; Messenger allows 1000.")

    chat.payload_encoder = encoder
    from flask_ampalibe.payload import Payload

    with pytest.raises(ValueError, match="1000"):
        chat.send_button(USER, [{"type": "postback", "title": "Go", "payload": Payload("/go", blob="x")}], "Go?")
    assert graph.requests == []


def test_reads_that_keep_timing_out_are_reported(graph: FakeGraph, clock: Clock) -> None:
    chat = make_chat(graph.url, clock, timeout=0.2, max_retries=1)
    graph.fail_next(status=200, delay=0.6, count=2)
    with pytest.raises(GraphTimeout, match="within 0.2s") as info:
        chat.get_personas("123")
    assert "not retried" not in str(info.value)
    assert len(graph.requests) == 2 and len(clock.sleeps) == 1
    chat.close()


def test_proxies_and_ca_bundle_from_the_environment_are_read_once(monkeypatch):
    from flask_ampalibe.messenger import Messenger

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    client = Messenger("token", graph_url="https://graph.facebook.com")
    assert client.session.proxies.get("https") == "http://127.0.0.1:9"
    assert client.session.verify == "/etc/ssl/certs/ca-certificates.crt"
    bypassed = Messenger("token", graph_url="https://internal.example")
    assert "https" not in bypassed.session.proxies  # NO_PROXY still honoured
    client.close()
    bypassed.close()
