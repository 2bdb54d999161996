"""The testing kit: BotTester, readable assertions, the pytest plugin's fixtures, and the README example."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from flask import Flask

import flask_ampalibe
from flask_ampalibe import Payload
from flask_ampalibe.cli import cli
from flask_ampalibe.extension import default_app
from flask_ampalibe.testing import (
    BotTester, BotTesters, FakeGraph, assert_attachment, assert_buttons, assert_no_reply, assert_quick_replies,
    assert_replied, bot_config, message_event,
)
from flask_ampalibe.ui import Button, Element, QuickReply

USER = "1234"


def register_shop(router, ext):
    """A small bot: a menu with quick replies, a catalog with buttons, a cart."""
    chat = ext

    @router.command("/")
    def main(sender_id, cmd, **extends):
        chat.chat.send_quick_reply(sender_id, [QuickReply(title="Catalog", payload="/catalog"),
                                               QuickReply(title="Cart", payload=Payload("/cart", page=1))],
                                   "Hello! What would you like to do?")

    @router.command("/catalog")
    def catalog(sender_id, **extends):
        chat.chat.send_generic_template(sender_id, [
            Element(title=name, buttons=[Button(title="Buy", payload=Payload("/buy", item=name)),
                                         Button(type="web_url", title="Site", url="https://example.test")])
            for name in ("Jackfruit", "Lychee")
        ])

    @router.command("/buy")
    def buy(sender_id, item, **extends):
        chat.chat.send_text(sender_id, f"{item} is in your cart.")

    @router.command("/cart")
    def cart(sender_id, page=0, **extends):
        chat.chat.send_text(sender_id, f"Your cart (page {page}) is empty.")

    @router.command("/logo")
    def logo(sender_id, **extends):
        chat.chat.send_file_url(sender_id, "https://example.test/logo.png", "image")

    @router.command("/boom")
    def boom(sender_id, **extends):
        raise RuntimeError("handler exploded")


@pytest.fixture
def bot(app, ext, graph, router):
    register_shop(router, ext)
    return BotTester(app, graph, USER)


# -- conversations ------------------------------------------------------------------------------------
def test_a_conversation_with_taps(bot):
    bot.send("hi")
    bot.assert_replied("Hello! What would you like to do?")
    bot.assert_quick_replies(["Catalog", "Cart"])
    bot.tap_quick_reply("Cart")  # a signed Payload makes the round trip
    bot.assert_replied("Your cart (page 1) is empty.")
    bot.tap_quick_reply("Catalog")  # still offered by the last message that had quick replies
    bot.assert_buttons(["Buy", "Site", "Buy", "Site"])
    bot.assert_buttons(["Buy", "Site"], card=1)
    bot.assert_replied()  # something was sent (a template has no text)
    bot.tap_button("Buy", card=1)
    bot.assert_replied("Lychee is in your cart.")
    assert bot.texts == ["Lychee is in your cart."]


def test_replies_are_those_of_the_last_event(bot):
    bot.send("hi")
    bot.send("/cart")
    bot.assert_replied("Your cart (page 0) is empty.")
    assert len(bot.replies) == 1


def test_attachments(bot):
    bot.send("/logo")
    attachment = bot.assert_attachment("image", "https://example.test/logo.png")
    assert attachment["payload"]["url"] == "https://example.test/logo.png"
    with pytest.raises(AssertionError, match="expected the bot to send 1234 video"):
        bot.assert_attachment("video")


def test_tapping_what_was_not_offered_fails_clearly(bot):
    bot.send("hi")
    with pytest.raises(AssertionError, match="no quick reply 'Nope' to tap"):
        bot.tap_quick_reply("Nope")
    bot.send("/catalog")
    with pytest.raises(AssertionError, match="'Site' is a web_url button"):
        bot.tap_button("Site")
    with pytest.raises(AssertionError, match="no button 'Sell' to tap"):
        bot.tap_button("Sell")


def test_failure_messages_show_what_the_bot_sent(bot):
    bot.send("hi")
    with pytest.raises(AssertionError) as info:
        bot.assert_replied("Goodbye")
    assert str(info.value) == (
        "expected the bot to reply to 1234 with:\n    'Goodbye'\nit sent:\n"
        "    1. text 'Hello! What would you like to do?' [quick replies: Catalog | Cart]"
    )
    with pytest.raises(AssertionError, match=r"quick replies \['Catalog'\]"):
        bot.assert_quick_replies(["Catalog"])
    with pytest.raises(AssertionError, match="expected no reply to 1234"):
        bot.assert_no_reply()
    bot.send("/catalog")
    with pytest.raises(AssertionError, match=r"generic template, 2 card\(s\) \['Jackfruit', 'Lychee'\]"):
        bot.assert_buttons(["Buy"])


def test_patterns_match_whole_texts(bot):
    import re

    bot.send("/cart")
    bot.assert_replied(re.compile(r"Your cart \(page \d+\) is empty\."))
    with pytest.raises(AssertionError, match=r"/Your cart/"):
        bot.assert_replied(re.compile("Your cart"))


def test_several_users(bot):
    bot.send("hi", user="other")
    bot.assert_no_reply()
    bot.assert_replied("Hello! What would you like to do?", user="other")


# -- webhook behaviours -----------------------------------------------------------------------------
def test_redelivery_is_handled_once(bot):
    bot.send("/cart")
    bot.assert_replied("Your cart (page 0) is empty.")
    bot.redeliver()
    bot.assert_no_reply()


def test_a_batch_is_handled_oldest_first(bot):
    bot.post(message_event(USER, "/logo", timestamp=3000), message_event(USER, "/cart", timestamp=1000),
             message_event(USER, "hi", timestamp=2000))
    assert [m.get("text") or m["attachment"]["type"] for m in bot.replies] == [
        "Your cart (page 0) is empty.", "Hello! What would you like to do?", "image"]


def test_events_arriving_out_of_order(bot, ext):
    order = []
    ext.router.before_receive(lambda message, **kw: order.append(message["message"]["text"]))
    bot.post_each(message_event(USER, "/cart", timestamp=2000), message_event(USER, "hi", timestamp=1000))
    assert order == ["/cart", "hi"]  # each handled as it arrived
    order.clear()
    with bot.held():  # both recorded before either is handled: oldest first
        bot.post(message_event(USER, "/cart", timestamp=4000))
        bot.post(message_event(USER, "hi", timestamp=3000))
        assert order == []
    assert order == ["hi", "/cart"]
    bot.assert_replied("Hello! What would you like to do?", "Your cart (page 0) is empty.")


def test_handler_errors_fail_the_test_unless_expected(bot):
    with pytest.raises(AssertionError, match="(?s)a handler raised.*RuntimeError: handler exploded"):
        bot.send("/boom")
    with bot.expecting_errors() as errors:
        bot.send("/boom")
    assert len(errors) == 1 and "handler exploded" in errors[0]
    bot.send("hi")
    assert bot.errors == []


def test_graph_errors_can_be_injected(bot, ext, graph):
    results = []

    @ext.router.command("/ping")
    def ping(sender_id, **extends):
        results.append(ext.chat.send_text(sender_id, "pong").status_code)

    bot.fail_next_send(551, status=400, message="This person isn't available right now.")
    bot.send("/ping")
    assert results == [400]
    assert bot.texts == ["pong"]  # what the bot tried to send, refused or not
    started = time.monotonic()
    bot.fail_next_send(613, count=2)  # rate limited twice: retried without sleeping, then sent
    bot.send("/ping")
    assert results == [400, 200] and time.monotonic() - started < 5
    assert len(graph.sends(USER)) == 4


def test_the_tester_refuses_an_app_that_would_reach_the_real_graph(tmp_path, graph):
    app = Flask("real", instance_path=str(tmp_path / "i"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_APP_SECRET="s", AMPALIBE_EXECUTOR="inline")
    flask_ampalibe.Ampalibe(app, router=flask_ampalibe.Router())
    with pytest.raises(RuntimeError, match="sends to https://graph.facebook.com, not to the fake Graph API"):
        BotTester(app, graph)
    with pytest.raises(RuntimeError, match="does not have flask_ampalibe set up"):
        BotTester(Flask("bare"), graph)


def test_run_jobs(bot, ext):
    flask_ampalibe.scheduler.schedule("0 8 * * *", name="morning", router=ext.router)(
        lambda: ext.chat.send_text(USER, "Good morning"))
    assert bot.run_jobs(datetime(2024, 5, 6, 8, 0, tzinfo=timezone.utc)) == ["morning"]
    bot.assert_replied("Good morning")


# -- module-level assertions ----------------------------------------------------------------------------
def test_assertion_functions_take_the_graph(bot, graph):
    bot.send("hi")
    mark = len(graph.requests)
    bot.send("/logo")
    assert_replied(graph, USER, "Hello! What would you like to do?")
    assert_quick_replies(graph, USER, ["Catalog", "Cart"])
    assert_attachment(graph, USER, "image", since=mark)
    assert_no_reply(graph, "nobody")
    with pytest.raises(AssertionError):
        assert_replied(graph, USER, "Hello! What would you like to do?", since=mark)
    bot.send("/catalog")
    assert_buttons(graph, USER, ["Buy", "Site"], card=0)


# -- the fixtures and the factories --------------------------------------------------------------------
def create_app(test_config=None):
    """A Flask-native bot, the way the Flask tutorial writes app factories."""
    app = Flask("factory_bot")
    app.config.update(AMPALIBE_ACCESS_TOKEN="real-token", AMPALIBE_APP_SECRET="real-secret")
    if test_config:
        app.config.update(test_config)
    ext = flask_ampalibe.Ampalibe(app, router=flask_ampalibe.Router())
    ext.command("/")(lambda sender_id, cmd, **kw: ext.chat.send_text(sender_id, f"Echo: {cmd}"))
    return app


def test_bot_tester_fixture_with_an_app_factory(bot_tester, fake_graph):
    bot = bot_tester(create_app)
    bot.send("hi")
    bot.assert_replied("Echo: hi")
    assert fake_graph.sent_texts(USER) == ["Echo: hi"]
    assert bot.app.config["AMPALIBE_APP_SECRET"] == "test-app-secret"


def test_an_app_set_up_for_the_real_graph_is_set_up_again_and_restored(tmp_path):
    app = create_app()
    original = app.extensions["ampalibe"]
    with FakeGraph() as graph, BotTesters(graph, tmp_path) as testers:
        bot = testers(app, user="42")
        bot.send("hello")
        bot.assert_replied("Echo: hello")
        assert app.extensions["ampalibe"] is not original
    assert app.extensions["ampalibe"] is original
    assert app.config["AMPALIBE_APP_SECRET"] == "real-secret"
    assert app.config["AMPALIBE_GRAPH_URL"] == "https://graph.facebook.com"


def test_bot_config_for_hand_made_setups(tmp_path):
    with FakeGraph() as graph:
        app = create_app(bot_config(graph, f"sqlite:///{tmp_path / 'b.db'}"))
        bot = BotTester(app, graph)
        bot.send("x")
        bot.assert_replied("Echo: x")
        app.extensions["ampalibe"].executor.shutdown(timeout=5)


SPEC_CORE = '''\
import flask_ampalibe as ampalibe
from conf import Configuration
from flask_ampalibe.ui import QuickReply

bot = ampalibe.init(Configuration())
chat = bot.chat


@ampalibe.command("/")
def main(sender_id, cmd, lang, **extends):
    chat.send_quick_reply(sender_id, [QuickReply(title="Catalog", payload="/catalog"),
                                      QuickReply(title="My cart", payload="/cart")],
                          ampalibe.translate("menu", lang))


@ampalibe.command("/catalog")
def catalog(sender_id, **extends):
    chat.send_text(sender_id, "Here is our catalog")
'''


@pytest.fixture
def project(tmp_path):
    """A spec-style project made by `ampalibe init`, with its own core.py and langs.json."""
    folder = tmp_path / "mybot"
    result = CliRunner().invoke(cli, ["init", str(folder)])
    assert result.exit_code == 0, result.output
    (folder / "core.py").write_text(SPEC_CORE)
    (folder / "langs.json").write_text('{"menu": {"en": "Hello! What would you like to do?"}}')
    (folder / ".env").write_text("AMP_ACCESS_TOKEN=real-token\nAMP_APP_SECRET=real-secret\nLEAKY=1\n")
    return folder


def test_bot_tester_project_and_everything_is_put_back(project, tmp_path):
    env, path, cwd = dict(os.environ), list(sys.path), os.getcwd()
    with FakeGraph() as graph, BotTesters(graph, tmp_path / "work") as testers:
        bot = testers.project(project)
        bot.send("hi")
        bot.assert_replied("Hello! What would you like to do?")
        assert bot.app is default_app() and os.getcwd() == str(project)
        assert not (project / "ampalibe.db").exists()  # the project's own database is left alone
    assert dict(os.environ) == env and sys.path == path and os.getcwd() == cwd
    assert "core" not in sys.modules and "conf" not in sys.modules
    assert "ampalibe" not in default_app().extensions


README_TEST = '''\
from pathlib import Path

BOT = Path(__file__).parent.parent  # the folder with core.py


def test_menu(bot_tester):
    bot = bot_tester.project(BOT)
    bot.send("hi")
    bot.assert_quick_replies(["Catalog", "My cart"])
    bot.tap_quick_reply("Catalog")
    bot.assert_replied("Here is our catalog")
'''


def test_the_readme_example_runs_with_only_the_installed_plugin(project):
    """The README's bot author test, in its own pytest run: the fixtures come from the entry point."""
    (project / "tests").mkdir()
    (project / "tests" / "test_bot.py").write_text(README_TEST)
    assert len(README_TEST.strip().splitlines()) <= 11
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMP_", "AMPALIBE_", "PYTEST_"))}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_a_project_without_a_bot_is_reported(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "core.py").write_text("x = 1\n")
    with FakeGraph() as graph, BotTesters(graph, tmp_path / "work") as testers:
        with pytest.raises(RuntimeError, match="core.py sets up no bot"):
            testers.project(folder)
