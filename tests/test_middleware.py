"""``before_receive`` / ``after_receive`` middleware, through the real webhook route."""
from __future__ import annotations

import pytest

import flask_ampalibe
from flask_ampalibe.testing import BotTester, message_event, read_event

USER = "6006"
SWEAR_WORDS = {"damn", "heck"}


@pytest.fixture
def bot(app, ext, graph):
    return BotTester(app, graph, USER)


@pytest.fixture
def main(ext):
    calls = []

    @ext.router.command("/")
    def main(sender_id, cmd, **extends):
        calls.append(str(cmd))
        ext.chat.send_text(sender_id, f"You said: {cmd}")
        return f"answered {cmd}"

    return calls


def test_before_receive_returning_false_stops_the_event(bot, ext, main):
    @ext.router.before_receive
    def polite_only(sender_id, message, **extends):
        text = (message.get("message") or {}).get("text", "")
        if SWEAR_WORDS & set(text.lower().split()):
            ext.chat.send_text(sender_id, "Please be polite.")
            return False

    bot.send("well damn")
    bot.assert_replied("Please be polite.")
    bot.send("well done")
    bot.assert_replied("You said: well done")
    assert main == ["well done"]
    assert bot.state.inbox.stats()["done"] == 2  # a stopped event counts as handled, it is not retried


@pytest.mark.parametrize("returned", [None, True, 0, "", []])
def test_only_false_itself_stops(bot, ext, main, returned):
    ext.router.before_receive(lambda **kw: returned)
    bot.send("hi")
    assert main == ["hi"]


def test_several_middlewares_run_in_registration_order(bot, ext, main):
    order = []

    @ext.router.before_receive
    def first(sender_id, event, **extends):
        order.append(("before 1", sender_id, event.kind))

    @ext.router.before_receive
    def second(**extends):
        order.append(("before 2",))

    @ext.router.after_receive
    def third(result, error, **extends):
        order.append(("after 1", result, error))

    @ext.router.after_receive
    def fourth(sender_id):
        order.append(("after 2", sender_id))

    bot.send("hi")
    assert order == [("before 1", USER, "message"), ("before 2",), ("after 1", "answered hi", None), ("after 2", USER)]


def test_a_stopping_middleware_skips_the_later_ones_and_the_handler_not_after_receive(bot, ext, main):
    order = []
    ext.router.before_receive(lambda **kw: order.append("first") or False)
    ext.router.before_receive(lambda **kw: order.append("second"))
    ext.router.after_receive(lambda res, result, error, **kw: order.append(("after", res, result, error)))
    bot.send("hi")
    # As in Ampalibe 1.1.9, after_receive still runs, with res=None.
    assert order == ["first", ("after", None, None, None)] and main == []


def test_after_receive_gets_the_exception_of_a_failing_handler(bot, ext):
    seen = []

    @ext.router.command("/")
    def main(sender_id, cmd, **extends):
        if cmd == "boom":
            raise ValueError("no boom here")
        return len(cmd)

    @ext.router.after_receive
    def log_outcome(sender_id, result, error, **extends):
        seen.append((result, repr(error)))

    bot.send("four")
    with bot.expecting_errors() as tracebacks:
        bot.send("boom")
    assert seen == [(4, "None"), (None, "ValueError('no boom here')")]
    assert "ValueError: no boom here" in tracebacks[0]
    assert bot.state.inbox.stats()["failed"] == 1


def test_middleware_sees_every_kind_of_event(bot, ext):
    kinds = []
    ext.router.event("read")(lambda **kw: "read handled")
    ext.router.before_receive(lambda event, **kw: kinds.append(("before", event.kind)))
    ext.router.after_receive(lambda result, **kw: kinds.append(("after", result)))
    bot.post(read_event(USER))
    assert kinds == [("before", "read"), ("after", "read handled")]


def test_middleware_runs_once_per_event_of_a_batch(bot, ext, main):
    users = []
    ext.router.before_receive(lambda sender_id, **kw: users.append(sender_id))
    bot.post(message_event("a", "1", timestamp=1), message_event("b", "2", timestamp=2),
             message_event("a", "3", timestamp=3))
    assert sorted(users) == ["a", "a", "b"] and sorted(main) == ["1", "2", "3"]


def test_a_failing_after_receive_does_not_fail_the_event(bot, ext, main):
    ext.router.after_receive(lambda **kw: 1 / 0)
    bot.send("hi")
    bot.assert_replied("You said: hi")
    assert bot.state.inbox.stats()["done"] == 1


def test_a_failing_before_receive_counts_as_a_failed_event(bot, ext, main):
    errors = []

    @ext.router.before_receive
    def fragile(message, **extends):
        if message["message"]["text"] == "hi":
            raise ZeroDivisionError("middleware bug")

    ext.router.on_error(lambda error, **kw: errors.append(type(error).__name__))
    with bot.expecting_errors() as tracebacks:
        bot.send("hi")
    assert main == [] and errors == ["ZeroDivisionError"]
    assert "middleware bug" in tracebacks[0]
    assert bot.state.inbox.stats()["failed"] == 1
    bot.send("again")  # the user is not stuck behind the failed event
    bot.assert_replied("You said: again")


def test_module_level_decorators_register_on_the_default_router(router):
    old = flask_ampalibe.set_default_router(router)
    try:
        def before(**extends):
            pass

        def after(**extends):
            pass
        assert flask_ampalibe.before_receive(before) is before
        assert flask_ampalibe.after_receive(after) is after
    finally:
        flask_ampalibe.set_default_router(old)
    assert router.before == [before] and router.after == [after]


def test_middleware_gets_119s_keywords_cmd_lang_and_payload_arguments(bot, ext, main):
    """Ampalibe 1.1.9 called its middleware with the handler's keywords: ``cmd``, ``lang``, the
    payload's arguments; ``after_receive`` also got ``res``."""
    from flask_ampalibe import Payload

    seen = []

    @ext.router.before_receive
    def before(sender_id, cmd, lang, **extends):
        seen.append(("before", str(cmd), cmd.webhook, lang, extends.get("size")))
        return True

    @ext.router.after_receive
    def after(sender_id, cmd, res, lang, **extends):
        seen.append(("after", str(cmd), res))

    bot.send("hello there")
    with bot.app.app_context():
        ext.query.set_lang(USER, "mg")
        payload = ext.chat.payload_encoder(Payload("/order", size="L"))
    bot.postback(payload)
    assert seen == [("before", "hello there", "message", None, None), ("after", "hello there", "answered hello there"),
                    ("before", "/order", "postback", "mg", "L"), ("after", "/order", "answered /order")]
