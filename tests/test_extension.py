"""``Ampalibe``: each one owns its Router (handlers, middleware, jobs), so several apps share one
process without sharing handlers; the module-level decorators stay with ``init()``'s bot."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import Flask, current_app

import flask_ampalibe
from flask_ampalibe.scheduler import scheduler_for
from flask_ampalibe.testing import WebhookClient

from conftest import SECRET, TEMPLATE

DECORATORS = ("command", "action", "event", "before_receive", "after_receive", "on_error", "schedule", "crontab")


def make_app(tmp_path: Path, graph, name: str) -> Flask:
    app = Flask(name, instance_path=str(tmp_path / name), root_path=str(tmp_path))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN=f"tok-{name}", AMPALIBE_VERIF_TOKEN="v",
                      AMPALIBE_APP_SECRET=SECRET, AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="inline",
                      AMPALIBE_DATABASE_URL=f"sqlite:///{tmp_path / (name + '.db')}")
    return app


@pytest.fixture
def two(tmp_path, graph):
    """Two apps, each with ``Ampalibe(app)`` and no router given."""
    apps = [make_app(tmp_path, graph, "one"), make_app(tmp_path, graph, "two")]
    bots = [flask_ampalibe.Ampalibe(app) for app in apps]
    yield list(zip(apps, bots))
    for app in apps:
        app.extensions["ampalibe"].shutdown(timeout=5)


def test_each_extension_owns_a_new_router_unless_given_one(two):
    (one_app, one), (two_app, other) = two
    assert one.router is not other.router
    assert flask_ampalibe.default_router() not in (one.router, other.router)
    assert one_app.extensions["ampalibe"].router is one.router
    shared = flask_ampalibe.Router()
    assert flask_ampalibe.Ampalibe(router=shared).router is shared


def test_two_apps_answer_the_same_command_with_their_own_handler(two, graph):
    (one_app, one), (two_app, other) = two

    @one.command("/hello")
    def hello_one(sender_id, cmd, **extends):
        one.chat.send_text(sender_id, "one says " + cmd)

    @other.command("/hello")  # the same command on the other app: no RoutingError, no sharing
    def hello_two(sender_id, cmd, **extends):
        other.chat.send_text(sender_id, "two says " + cmd)

    assert WebhookClient(one_app.test_client(), SECRET).send_text("u1", "/hello there").status_code == 200
    assert WebhookClient(two_app.test_client(), SECRET).send_text("u2", "/hello you").status_code == 200
    assert graph.sent_texts("u1") == ["one says there"]
    assert graph.sent_texts("u2") == ["two says you"]
    assert [r.query["access_token"] for r in graph.sends()] == ["tok-one", "tok-two"]
    assert "/hello" not in flask_ampalibe.default_router().commands


def test_every_module_level_decorator_is_on_the_extension_and_returns_the_function(two):
    (_, one), (_, other) = two
    for name in DECORATORS:
        assert callable(getattr(flask_ampalibe.Ampalibe, name)), name

    def f(sender_id, **extends):
        pass

    assert one.command("/x")(f) is f
    assert one.action("/y")(f) is f
    assert one.event("read")(f) is f
    assert one.before_receive(f) is f and one.before_receive()(f) is f
    assert one.after_receive(f) is f and one.after_receive()(f) is f
    assert one.on_error(f) is f and one.on_error()(f) is f
    assert one.schedule("*/5 * * * *", name="j")(f) is f
    assert one.crontab("0 * * * *", name="k", func=f) is f
    router = one.router
    assert (router.commands, router.actions, router.events["read"]) == ({"/x": f}, {"/y": f}, [f])
    assert (router.before, router.after, router.error_handlers) == ([f, f], [f, f], [f, f])
    assert sorted(router.jobs) == ["j", "k"]
    for table in ("commands", "actions", "events", "before", "after", "error_handlers", "jobs"):
        assert not getattr(other.router, table), table


def test_a_schedule_runs_only_for_the_app_of_its_extension(two):
    (one_app, one), (two_app, other) = two
    runs = []

    @one.schedule("0 8 * * *", name="news")
    def news(when):
        runs.append((current_app.name, when.hour))

    assert news.__name__ == "news"
    at = datetime(2024, 5, 6, 8, 0, 3, tzinfo=timezone.utc)
    assert scheduler_for(two_app).tick(at) == []
    assert scheduler_for(two_app).start() is False  # no jobs there: no thread either
    assert scheduler_for(one_app).tick(at) == ["news"]
    assert runs == [("one", 8)]
    assert flask_ampalibe.scheduler.jobs(flask_ampalibe.default_router()) == []


def test_middleware_registered_on_the_extension_runs_for_its_app_only(two, graph):
    (one_app, one), (two_app, other) = two
    seen = []

    @one.before_receive
    def first(sender_id, cmd, **extends):
        seen.append(("before", sender_id, str(cmd)))

    @one.before_receive()
    def gate(sender_id, cmd, **extends):
        return cmd != "blocked"

    @one.after_receive()
    def after(sender_id, result, error, **extends):
        seen.append(("after", sender_id, result, type(error).__name__ if error else None))

    @one.on_error
    def failed(error, sender_id, **extends):
        seen.append(("error", sender_id, str(error)))

    @one.command("/")
    def main(sender_id, cmd, **extends):
        if cmd == "boom":
            raise ValueError("boom!")
        return "ok " + cmd

    @other.command("/")
    def main_two(sender_id, cmd, **extends):
        other.chat.send_text(sender_id, "two")

    hook = WebhookClient(one_app.test_client(), SECRET)
    hook.send_text("a", "hi")
    hook.send_text("a", "blocked")
    hook.send_text("a", "boom")
    WebhookClient(two_app.test_client(), SECRET).send_text("b", "hi")
    assert seen == [
        ("before", "a", "hi"), ("after", "a", "ok hi", None),
        ("before", "a", "blocked"), ("after", "a", None, None),
        ("before", "a", "boom"), ("error", "a", "boom!"), ("after", "a", None, "ValueError"),
    ]
    assert graph.sent_texts("b") == ["two"]


def test_init_app_on_several_apps_shares_the_extension_router_deliberately(tmp_path, graph):
    bot = flask_ampalibe.Ampalibe()

    @bot.command("/")
    def main(sender_id, cmd, **extends):
        bot.chat.send_text(sender_id, f"{current_app.name}: {cmd}")

    apps = [make_app(tmp_path, graph, name) for name in ("f1", "f2")]
    try:
        for app in apps:
            bot.init_app(app)
            assert app.extensions["ampalibe"].router is bot.router
        for app in apps:
            WebhookClient(app.test_client(), SECRET).send_text("u", "hi")
        assert graph.sent_texts("u") == ["f1: hi", "f2: hi"]
    finally:
        for app in apps:
            app.extensions["ampalibe"].shutdown(timeout=5)


CORE = '''
import flask_ampalibe as ampalibe
from flask import Flask
from conf import Configuration

seen = []


@ampalibe.command("/early")
def early(sender_id, cmd, **extends):
    bot.chat.send_message(sender_id, "early " + cmd)


bot = ampalibe.init(Configuration())


@ampalibe.command("/late")
def late(sender_id, cmd, **extends):
    bot.chat.send_message(sender_id, "late " + cmd)


@ampalibe.before_receive()
def log(sender_id, cmd, **extends):
    seen.append(str(cmd))


@ampalibe.schedule("0 9 * * *", name="morning")
def morning(when):
    seen.append("morning")


# Another app in the same module: its handlers stay its own.
other = Flask("other")
other.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="x", AMPALIBE_EXECUTOR="inline",
                    AMPALIBE_DATABASE_URL="sqlite://")
side = ampalibe.Ampalibe(other)


@side.command("/early")
def hijack(sender_id, cmd, **extends):
    seen.append("hijacked")
'''


def test_module_level_decorators_before_and_after_init_reach_the_init_bot(bot_tester, tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "conf.py").write_text((TEMPLATE / "conf.py").read_text())
    (folder / "core.py").write_text(CORE)
    bot = bot_tester.project(folder)
    import core

    try:
        assert bot.state.router is flask_ampalibe.default_router()
        bot.send("/early bird")
        bot.assert_replied("early bird")
        bot.send("/late show")
        bot.assert_replied("late show")
        assert bot.run_jobs(datetime(2024, 5, 6, 9, 0, tzinfo=timezone.utc)) == ["morning"]
        assert core.seen == ["/early bird", "/late show", "morning"]
        assert core.side.router.commands == {"/early": core.hijack}
    finally:
        core.other.extensions["ampalibe"].shutdown(timeout=5)
