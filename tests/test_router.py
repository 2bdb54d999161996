"""Routing semantics, through the real webhook route of a Flask-native app."""
from __future__ import annotations

import secrets

import pytest
from flask import Flask

import flask_ampalibe
from flask_ampalibe import Payload, RoutingError
from flask_ampalibe.testing import WebhookClient, attachment_event, message_event, quick_reply_event
from conftest import SECRET

USER = "777"


@pytest.fixture
def calls(ext):
    seen = []
    r = ext.router

    @r.command("/")
    def main(sender_id, cmd, **extends):
        seen.append(("main", cmd, extends.get("lang")))

    @r.command("/eat")
    def eat(sender_id, cmd, **extends):
        seen.append(("eat", cmd, {k: v for k, v in extends.items() if k not in ("message", "event", "lang", "redelivered")}))

    @r.action("/ask")
    def ask(sender_id, cmd, **extends):
        seen.append(("ask", cmd, extends.get("topic")))

    return seen


def test_decorators_return_the_function(router):
    def f(sender_id, **extends):
        pass
    assert router.command("/x")(f) is f
    assert router.action("/y")(f) is f
    assert flask_ampalibe.Ampalibe(router=router).command("/z")(f) is f


def test_same_command_twice_names_both_functions(router):
    @router.command("/dup")
    def first(sender_id, **extends):
        pass

    with pytest.raises(RoutingError, match=r"first.*second"):
        @router.command("/dup")
        def second(sender_id, **extends):
            pass


def test_command_name_must_be_one_word(router):
    with pytest.raises(RoutingError, match="one word"):
        router.command("/two words")


def test_command_word_is_removed_from_cmd(hook, calls):
    hook.send_text(USER, "/eat 1 jackfruit")
    hook.send_text(USER, "/eat")
    hook.send_text(USER, "  /eat   spaced  words ")
    assert [c[:2] for c in calls] == [("eat", "1 jackfruit"), ("eat", ""), ("eat", "spaced  words ")]


def test_unknown_word_goes_to_main_with_whole_text(hook, calls):
    hook.send_text(USER, "/eaten something")
    assert calls == [("main", "/eaten something", None)]  # lang: None until the user chose one (1.1.9)


def test_pending_action_gets_whole_text_and_command_wins(app, hook, calls):
    query = app.extensions["ampalibe"].query
    query.set_action(USER, "/ask")
    hook.send_text(USER, "what is this")
    assert calls[-1][:2] == ("ask", "what is this")
    assert query.get_action(USER) == "/ask"  # the handler did not clear it
    hook.send_text(USER, "/eat apple")  # a matching command wins and clears the action
    assert calls[-1][:2] == ("eat", "apple")
    assert query.get_action(USER) is None
    hook.send_text(USER, "plain")
    assert calls[-1][:2] == ("main", "plain")


def test_set_action_none_clears(app, hook, calls):
    query = app.extensions["ampalibe"].query
    query.set_action(USER, "/ask")
    query.set_action(USER, None)
    hook.send_text(USER, "x")
    assert calls[-1][0] == "main"


def test_set_action_with_payload_passes_arguments(app, hook, calls):
    app.extensions["ampalibe"].query.set_action(USER, Payload("/ask", topic="fruits"))
    hook.send_text(USER, "mango")
    assert calls == [("ask", "mango", "fruits")]


def test_payload_arguments_keep_json_types(app, hook, calls):
    codec = app.extensions["ampalibe"].codec
    args = {"n": 3, "f": 1.5, "b": True, "l": [1, "a"], "d": {"k": None}, "s": "é😀"}
    text = Payload("/eat", **args).encode(codec)
    hook.post(quick_reply_event(USER, text))
    assert calls == [("eat", "", args)]


def test_tampered_and_typed_lookalike_payloads_stay_text(app, hook, calls):
    codec = app.extensions["ampalibe"].codec
    good = Payload("/eat", n=1).encode(codec)
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    hook.send_text(USER, tampered)
    forged = Payload("/eat", n=99).encode(flask_ampalibe.payload.PayloadCodec("another-secret"))
    hook.send_text(USER, forged)
    hook.send_text(USER, "/eat ~amp.{\"r\":\"/eat\",\"a\":{\"n\":5}}")
    # all three route on their first word as plain text, with no arguments decoded
    assert [c[0] for c in calls] == ["eat", "eat", "eat"]
    assert all(c[2] == {} for c in calls)
    assert calls[0][1] == tampered.split(" ", 1)[1]


def test_payload_too_long_is_a_clear_error(app, ext):
    with app.app_context():
        with pytest.raises(ValueError, match="1000"):
            Payload("/x", blob=secrets.token_urlsafe(2000)).encode()


def test_payload_arguments_must_be_json(router):
    with pytest.raises(ValueError, match="JSON"):
        Payload("/x", when=object())


def test_attachments_give_first_url_and_the_list(ext, hook):
    got = []

    @ext.router.command("/")
    def main(sender_id, cmd, **extends):
        got.append((str(cmd), cmd.attachments))

    hook.post(attachment_event("a", ["https://x/1.png", "https://x/2.png"]))
    hook.post(message_event("b", "text only"))
    assert got == [("https://x/1.png", ["https://x/1.png", "https://x/2.png"]), ("text only", [])]


def test_handler_without_cmd_or_extends(ext, hook):
    got = []

    @ext.router.command("/")
    def main(sender_id):
        got.append(sender_id)

    hook.send_text("s1", "hello")
    assert got == ["s1"]


def test_class_body_handlers(ext, hook):
    got = []
    r = ext.router

    class Admin:
        @r.command("/login/admin")
        def login(sender_id, **extends):
            got.append(("login", sender_id))

    assert Admin.login.__name__ == "login"
    hook.send_text("s2", "/login/admin")
    assert got == [("login", "s2")]


def test_temp_data_is_per_user_and_missing_is_none(app, ext):
    query = app.extensions["ampalibe"].query
    query.set_temp("u1", "k", {"a": [1, 2]})
    query.set_temp("u2", "k", "other")
    assert query.get_temp("u1", "k") == {"a": [1, 2]}
    assert query.get_temp("u2", "k") == "other"
    assert query.get_temp("u1", "missing") is None
    query.del_temp("u1", "k")
    assert query.get_temp("u1", "k") is None


def test_two_apps_in_one_process_do_not_share_state(tmp_path, graph):
    def make(name):
        app = Flask(name, instance_path=str(tmp_path / name))
        app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN=f"tok-{name}", AMPALIBE_VERIF_TOKEN="v",
                          AMPALIBE_APP_SECRET=SECRET, AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="inline")
        router = flask_ampalibe.Router()

        @router.command("/")
        def main(sender_id, cmd, **extends):
            state = app.extensions["ampalibe"]
            state.query.set_temp(sender_id, "seen", (state.query.get_temp(sender_id, "seen") or 0) + 1)
            state.chat.send_message(sender_id, f"{name} {state.query.get_temp(sender_id, 'seen')}")

        flask_ampalibe.Ampalibe(app, router=router)
        return app

    one, two = make("one"), make("two")
    WebhookClient(one.test_client(), SECRET).send_text("u", "a")
    WebhookClient(one.test_client(), SECRET).send_text("u", "b")
    WebhookClient(two.test_client(), SECRET).send_text("u", "c")
    assert graph.sent_texts("u") == ["one 1", "one 2", "two 1"]
    assert {r.query["access_token"] for r in graph.sends("u")} == {"tok-one", "tok-two"}
    assert one.extensions["ampalibe"].database_url != two.extensions["ampalibe"].database_url


def test_blueprint_registration_alone_sets_up_the_extension(tmp_path, graph):
    app = Flask("bp_only", instance_path=str(tmp_path / "inst"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="inline")
    old = flask_ampalibe.set_default_router(flask_ampalibe.Router())
    try:
        @flask_ampalibe.command("/")
        def main(sender_id, cmd, **extends):
            app.extensions["ampalibe"].chat.send_message(sender_id, "via blueprint " + cmd)

        app.register_blueprint(flask_ampalibe.bp, url_prefix="/messenger")
        assert "ampalibe" in app.extensions
        hook = WebhookClient(app.test_client(), SECRET, path="/messenger/")
        assert hook.send_text("u9", "hey").status_code == 200
        assert graph.sent_texts("u9") == ["via blueprint hey"]
    finally:
        flask_ampalibe.set_default_router(old)


def test_init_app_twice_is_refused(app, ext):
    with pytest.raises(RuntimeError, match="once per app"):
        flask_ampalibe.Ampalibe(app)


def test_production_without_app_secret_refuses_to_start(tmp_path):
    app = Flask("prod", instance_path=str(tmp_path / "inst"))
    app.config.update(AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v")
    with pytest.raises(flask_ampalibe.ConfigurationError, match="AMPALIBE_APP_SECRET"):
        flask_ampalibe.Ampalibe(app, router=flask_ampalibe.Router())


def test_import_does_no_work(tmp_path):
    import subprocess
    import sys
    code = ("import threading, flask_ampalibe, sys; "
            "assert threading.active_count() == 1, threading.enumerate(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    assert list(tmp_path.iterdir()) == []


def test_middleware_decorators_work_bare_and_called(tmp_path, graph):
    old = flask_ampalibe.set_default_router(flask_ampalibe.Router())
    try:
        order = []

        @flask_ampalibe.before_receive
        def bare(sender_id, **extends):
            order.append("bare")

        @flask_ampalibe.before_receive()
        def called(sender_id, **extends):
            order.append("called")

        @flask_ampalibe.after_receive()
        def after(sender_id, result, **extends):
            order.append(("after", result))

        @flask_ampalibe.command("/")
        def main(sender_id, **extends):
            return "done"

        assert bare.__name__ == "bare" and called.__name__ == "called"
        assert flask_ampalibe.crontab is flask_ampalibe.schedule
        app = Flask("mw", instance_path=str(tmp_path / "i"))
        app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v",
                          AMPALIBE_APP_SECRET=SECRET, AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="inline")
        flask_ampalibe.Ampalibe(app, router=flask_ampalibe.default_router())  # shares it deliberately
        WebhookClient(app.test_client(), SECRET).send_text("u", "hi")
        assert order == ["bare", "called", ("after", "done")]
    finally:
        flask_ampalibe.set_default_router(old)
