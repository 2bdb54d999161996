"""The demo bot of example_app/, driven through its real webhook route like Messenger would.

Each test taps what the bot itself sent (quick replies, buttons, the "next page" reply), so
payloads make the full round trip: encoded by the bot, posted back, decoded into arguments.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

import flask_ampalibe
from flask_ampalibe.extension import reset_default
from flask_ampalibe.testing import FakeGraph, WebhookClient
from test_cli import AMP_KEYS, Server, console_script, free_port, message, port_is_free, signed_post

EXAMPLE = Path(__file__).resolve().parent.parent / "example_app"
MODULES = ("core", "conf", "model", "signup")
SECRET = "example-secret"
USER = "4242"


class Demo:
    """The loaded example bot: its Flask app, a webhook client and the fake Graph API."""

    def __init__(self, app: Any, graph: FakeGraph, path: Path) -> None:
        self.app = app
        self.graph = graph
        self.path = path
        self.hook = WebhookClient(app.test_client(), SECRET)

    def last(self) -> dict:
        """The last message the bot sent to USER."""
        return self.graph.sent_messages(USER)[-1]

    def tap_quick_reply(self, title: str) -> None:
        """Tap the quick reply ``title`` of the last message."""
        replies = {q["title"]: q["payload"] for q in self.last()["quick_replies"]}
        assert self.hook.send_quick_reply(USER, replies[title], title).status_code == 200

    def tap_button(self, card: int, title: str) -> None:
        """Tap the button ``title`` of card ``card`` of the last template."""
        payload = self.last()["attachment"]["payload"]
        element = payload["elements"][card] if "elements" in payload else payload
        button = next(b for b in element["buttons"] if b["title"] == title)
        assert self.hook.send_postback(USER, button["payload"], title).status_code == 200

    def say(self, text: str) -> None:
        assert self.hook.send_text(USER, text).status_code == 200


def _forget() -> None:
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Demo]:
    project = tmp_path / "example_app"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))
    with FakeGraph() as graph:
        env = {
            "AMP_ACCESS_TOKEN": "page-token", "AMP_VERIF_TOKEN": "verify", "AMP_APP_SECRET": SECRET,
            "AMP_GRAPH_URL": graph.url, "AMP_URL": "https://demo.example.test", "AMPALIBE_EXECUTOR": "inline",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for key in ("DATABASE_URL", "ADAPTER", "DB_FILE"):
            monkeypatch.delenv(key, raising=False)
        reset_default()
        _forget()
        monkeypatch.syspath_prepend(str(project))
        monkeypatch.chdir(project)
        importlib.import_module("core")
        try:
            yield Demo(flask_ampalibe.webserver, graph, project)
        finally:
            reset_default()
            _forget()


def test_any_message_shows_the_menu(demo: Demo) -> None:
    demo.say("hi")
    message = demo.last()
    assert message["text"] == "Hello! What would you like to do?"
    assert [q["title"] for q in message["quick_replies"]] == ["Catalog", "My cart", "Sign up", "Our logo", "Angela"]


def test_member_payload_arguments(demo: Demo) -> None:
    demo.say("hi")
    demo.tap_quick_reply("Angela")
    assert demo.graph.sent_texts(USER)[-2:] == ["Hello Angela", "your ref is 2016-sac"]


def test_catalog_pages_and_cart(demo: Demo) -> None:
    demo.say("/catalog")
    first = demo.last()
    cards = first["attachment"]["payload"]["elements"]
    assert [c["title"] for c in cards][:2] == ["Jackfruit S", "Jackfruit M"] and len(cards) == 10
    next_page = [q["title"] for q in first["quick_replies"]]
    assert next_page == ["Next products"]

    demo.tap_quick_reply("Next products")
    second = demo.last()["attachment"]["payload"]["elements"]
    assert second[0]["title"] == "Lychee S" and len(second) == 10

    demo.tap_button(0, "Details")  # Lychee S, product 11
    assert demo.last()["attachment"]["payload"]["text"] == "Lychee S: 2 EUR"
    demo.tap_button(0, "Buy")
    assert demo.graph.sent_texts(USER)[-1] == "Lychee S is in your cart (1 item(s))."
    demo.say("/buy 1")  # typed, not tapped: the number comes in cmd
    demo.say("/cart")
    assert demo.graph.sent_texts(USER)[-1] == "In your cart: Lychee S, Jackfruit S."
    demo.say("/checkout")
    assert demo.graph.sent_texts(USER)[-1] == "Thank you! 2 item(s), 4 EUR."
    demo.say("/cart")
    assert demo.graph.sent_texts(USER)[-1] == "Your cart is empty."


def test_signup_conversation_with_actions_and_temp_data(demo: Demo) -> None:
    demo.say("hi")
    demo.tap_quick_reply("Sign up")
    demo.say("Rivo")
    demo.say("not an address")
    demo.say("rivo@example.test")
    demo.say("hello again")
    assert demo.graph.sent_texts(USER)[-5:] == [
        "What is your name?",
        "Nice to meet you, Rivo. Your e-mail address?",
        "not an address is not an e-mail address; try again.",
        "Welcome Rivo! We will write to rivo@example.test.",
        "Hello! What would you like to do?",
    ]


def test_logo_is_sent_by_url_and_served_from_assets_public(demo: Demo) -> None:
    demo.say("/logo")
    attachment = demo.last()["attachment"]
    assert attachment["type"] == "image"
    url = attachment["payload"]["url"]
    assert url == "https://demo.example.test/asset/logo.png"
    client = demo.app.test_client()
    with client.get("/asset/logo.png") as served:  # a file response: close it
        assert served.status_code == 200
        assert served.data == (demo.path / "assets" / "public" / "logo.png").read_bytes()
    with client.get("/asset/../private/notes.txt") as private:
        assert private.status_code == 404


def test_custom_stats_endpoint(demo: Demo) -> None:
    demo.say("hi")
    demo.hook.send_text("777", "hello")
    response = demo.app.test_client().get("/stats")
    assert response.status_code == 200
    assert response.get_json() == {"users": 2, "products": 25}


def test_example_app_runs_under_ampalibe_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's way to start it: `cd example_app && ampalibe run`, here on a loopback port."""
    project = tmp_path / "example_app"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))
    port = free_port()
    with FakeGraph() as graph:
        env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
        env.update(AMP_HOST="127.0.0.1", AMP_PORT=str(port), AMP_ACCESS_TOKEN="page-token",
                   AMP_APP_SECRET="e2e-app-secret", AMP_GRAPH_URL=graph.url, AMP_URL=f"http://127.0.0.1:{port}")
        server = Server([*console_script("ampalibe", "flask_ampalibe.cli"), "run"], project, env, port)
        try:
            server.wait_listening()
            assert signed_post(port, message("/logo", "m_example_logo")).status_code == 200
            sent = graph.wait_for(1, timeout=20)[0].message
            url = sent["attachment"]["payload"]["url"]
            assert url == f"http://127.0.0.1:{port}/asset/logo.png"
            logo = requests.get(url, timeout=10)
            assert logo.status_code == 200 and logo.content.startswith(b"\x89PNG")
            assert requests.get(f"http://127.0.0.1:{port}/stats", timeout=10).json() == {"users": 1, "products": 25}
            assert server.stop() == 0, server.output()
            assert port_is_free(port)
        finally:
            server.kill()
