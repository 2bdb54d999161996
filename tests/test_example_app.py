"""The demo bot of example_app/, driven through its real webhook route like Messenger would.

The in-process tests use the testing kit (the ``bot_tester`` fixture): each test taps what the
bot itself sent (quick replies, buttons, the "next page" reply), so payloads make the full round
trip: encoded by the bot, posted back signed, decoded into arguments.  The last test starts the
project with ``ampalibe run`` in a real process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from flask_ampalibe.testing import FakeGraph
from flask_ampalibe.testing.kit import BotTester, BotTesters
from test_cli import AMP_KEYS, Server, console_script, free_port, message, port_is_free, signed_post

EXAMPLE = Path(__file__).resolve().parent.parent / "example_app"
USER = "4242"
MENU = ["Catalog", "My cart", "Sign up", "Our logo", "Angela"]


@pytest.fixture
def demo(bot_tester: BotTesters, tmp_path: Path) -> BotTester:
    """The example bot, copied to tmp_path/example_app (its .env and database left alone)."""
    project = tmp_path / "example_app"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))
    return bot_tester.project(project, user=USER, env={"AMP_URL": "https://demo.example.test"})


def test_any_message_shows_the_menu(demo: BotTester) -> None:
    demo.send("hi")
    demo.assert_replied("Hello! What would you like to do?")
    demo.assert_quick_replies(MENU)


def test_member_payload_arguments(demo: BotTester) -> None:
    demo.send("hi")
    demo.tap_quick_reply("Angela")
    demo.assert_replied("Hello Angela", "your ref is 2016-sac")


def test_catalog_pages_and_cart(demo: BotTester) -> None:
    demo.send("/catalog")
    cards = demo.replies[-1]["attachment"]["payload"]["elements"]
    assert [c["title"] for c in cards][:2] == ["Jackfruit S", "Jackfruit M"] and len(cards) == 10
    demo.assert_buttons(["Details", "Buy"], card=0)
    demo.assert_quick_replies(["Next products"])

    demo.tap_quick_reply("Next products")
    second = demo.replies[-1]["attachment"]["payload"]["elements"]
    assert second[0]["title"] == "Lychee S" and len(second) == 10

    demo.tap_button("Details", card=0)  # Lychee S, product 11
    demo.assert_replied("Lychee S: 2 EUR")
    demo.assert_buttons(["Buy"])
    demo.tap_button("Buy")
    demo.assert_replied("Lychee S is in your cart (1 item(s)).")
    demo.assert_quick_replies(["Check out"])
    demo.send("/buy 1")  # typed, not tapped: the number comes in cmd
    demo.assert_replied("Jackfruit S is in your cart (2 item(s)).")
    demo.send("/cart")
    demo.assert_replied("In your cart: Lychee S, Jackfruit S.")
    demo.send("/checkout")
    demo.assert_replied("Thank you! 2 item(s), 4 EUR.")
    demo.send("/cart")
    demo.assert_replied("Your cart is empty.")


def test_signup_conversation_with_actions_and_temp_data(demo: BotTester) -> None:
    demo.send("hi")
    demo.tap_quick_reply("Sign up")
    demo.assert_replied("What is your name?")
    demo.send("Rivo")
    demo.assert_replied("Nice to meet you, Rivo. Your e-mail address?")
    demo.send("not an address")
    demo.assert_replied("not an address is not an e-mail address; try again.")
    demo.send("rivo@example.test")
    demo.assert_replied("Welcome Rivo! We will write to rivo@example.test.")
    demo.send("hello again")  # the action is done: back to the menu
    demo.assert_replied("Hello! What would you like to do?")
    demo.assert_quick_replies(MENU)


def test_logo_is_sent_by_url_and_served_from_assets_public(demo: BotTester, tmp_path: Path) -> None:
    demo.send("/logo")
    demo.assert_attachment("image", "https://demo.example.test/asset/logo.png")
    client = demo.app.test_client()
    with client.get("/asset/logo.png") as served:  # a file response: close it
        assert served.status_code == 200
        assert served.data == (tmp_path / "example_app" / "assets" / "public" / "logo.png").read_bytes()
    with client.get("/asset/../private/notes.txt") as private:
        assert private.status_code == 404


def test_custom_stats_endpoint(demo: BotTester) -> None:
    demo.send("hi")
    demo.send("hello", user="777")
    demo.assert_replied("Hello! What would you like to do?", user="777")
    response = demo.app.test_client().get("/stats")
    assert response.status_code == 200
    assert response.get_json() == {"users": 2, "products": 25}


def test_example_app_runs_under_ampalibe_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's way to start it: `cd example_app && ampalibe run`, here on a loopback port."""
    project = tmp_path / "example_app"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))
    port = free_port()
    assert not (project / ".env").exists()  # never committed: it would hold secrets
    with FakeGraph() as graph:
        env = {k: v for k, v in os.environ.items() if k not in AMP_KEYS}
        # The README's way: `ampalibe env` writes the .env (a fresh verify token), then run.
        written = subprocess.run([*console_script("ampalibe", "flask_ampalibe.cli"), "env"], cwd=project, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert written.returncode == 0 and (project / ".env").exists(), written.stderr
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
