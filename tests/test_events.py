"""``@event(kind)`` handlers of every kind, through the real webhook route."""
from __future__ import annotations

import pytest

from flask_ampalibe import RoutingError
from flask_ampalibe.testing import (
    PAGE_ID, BotTester, delivery_event, echo_event, handover_event, message_event, optin_event, postback_event,
    reaction_event, read_event, referral_event,
)

USER = "5005"


@pytest.fixture
def bot(app, ext, graph):
    return BotTester(app, graph, USER)


@pytest.fixture
def seen(ext):
    """Calls of every handler registered by :func:`record`, as (kind, kwargs)."""
    return []


def record(router, kind, seen):
    @router.event(kind)
    def handler(sender_id, **extends):
        seen.append((kind, sender_id, extends))
    return handler


@pytest.mark.parametrize("kind, item, fields", [
    ("read", read_event(USER, watermark=1700000000000), {"watermark": 1700000000000}),
    ("delivery", delivery_event(USER, ["m.1", "m.2"], watermark=17), {"mids": ["m.1", "m.2"], "watermark": 17}),
    ("reaction", reaction_event(USER, "m.9", "like", "\U0001f44d"),
     {"reaction": "like", "emoji": "\U0001f44d", "action": "react", "mid": "m.9"}),
    ("reaction", reaction_event(USER, "m.9", action="unreact"), {"action": "unreact", "mid": "m.9"}),
    ("optin", optin_event(USER, payload="weekly", token="NOTIF-TOKEN"),
     {"type": "notification_messages", "payload": "weekly", "notification_messages_token": "NOTIF-TOKEN",
      "notification_messages_frequency": "DAILY"}),
    ("referral", referral_event(USER, "spring-ad", "ADS"), {"ref": "spring-ad", "source": "ADS", "type": "OPEN_THREAD"}),
    ("pass_thread_control", handover_event(USER), {"new_owner_app_id": "123", "metadata": ""}),
    ("take_thread_control", handover_event(USER, "take_thread_control", previous_owner_app_id="9", metadata="m"),
     {"previous_owner_app_id": "9", "metadata": "m"}),
    ("request_thread_control", handover_event(USER, "request_thread_control", requested_owner_app_id="7"),
     {"requested_owner_app_id": "7"}),
])
def test_event_handlers_get_the_events_fields_as_keywords(bot, ext, seen, kind, item, fields):
    record(ext.router, kind, seen)
    bot.post(item)
    assert len(seen) == 1
    got_kind, sender_id, kwargs = seen[0]
    assert (got_kind, sender_id) == (kind, USER)
    assert {k: kwargs[k] for k in fields} == fields
    assert kwargs["message"] == item  # the raw item, as Meta sent it
    assert kwargs["event"].kind == kind and kwargs["redelivered"] is False
    bot.assert_no_reply()


def test_optin_token_lets_the_bot_write_later(bot, ext):
    tokens = {}

    @ext.router.event("optin")
    def subscribed(sender_id, notification_messages_token, payload):
        tokens[sender_id] = notification_messages_token
        ext.chat.send_text(sender_id, f"Subscribed to {payload}")

    bot.post(optin_event(USER, payload="weekly", token="NOTIF-TOKEN"))
    bot.assert_replied("Subscribed to weekly")
    with bot.app.app_context():  # later, outside any webhook
        ext.chat.send_recurring_notification(tokens[USER], "This week's news")
    assert bot.graph.sent_texts() == ["Subscribed to weekly", "This week's news"]
    assert bot.replies_to("NOTIF-TOKEN") == [{"text": "This week's news"}]


def test_checkbox_optin_without_sender_is_keyed_by_user_ref(bot, ext, seen):
    record(ext.router, "optin", seen)
    bot.post({"recipient": {"id": PAGE_ID}, "timestamp": 1, "optin": {"ref": "cart", "user_ref": "UREF-1"}})
    (_, sender_id, kwargs), = seen
    assert sender_id == "user_ref:UREF-1" and kwargs["user_ref"] == "UREF-1" and kwargs["ref"] == "cart"


def test_app_roles_event(bot, ext, seen):
    record(ext.router, "app_roles", seen)
    bot.post(handover_event(USER, "app_roles", **{"123456": ["primary_receiver"]}))
    assert seen[0][2]["123456"] == ["primary_receiver"]


def test_echo_handlers_see_the_pages_own_messages_and_commands_do_not(bot, ext, seen):
    record(ext.router, "echo", seen)
    commands = []
    ext.router.command("/")(lambda sender_id, cmd, **kw: commands.append(cmd))
    bot.post(echo_event(USER, "Sent by a human agent", mid="m.echo"))
    (_, sender_id, kwargs), = seen
    assert sender_id == PAGE_ID  # an echo's sender is the page; the user is the recipient
    assert kwargs["message"]["recipient"]["id"] == USER
    assert (kwargs["text"], kwargs["is_echo"], kwargs["mid"]) == ("Sent by a human agent", True, "m.echo")
    assert commands == []


def test_standby_items_go_to_standby_handlers_only(bot, ext, seen):
    record(ext.router, "standby", seen)
    record(ext.router, "read", seen)
    commands = []
    ext.router.command("/")(lambda sender_id, cmd, **kw: commands.append(str(cmd)))
    bot.post(message_event(USER, "to us"),
             standby=[message_event(USER, "to the inbox app", mid="m.sb"), read_event(USER, watermark=5)])
    assert commands == ["to us"]
    assert [(k, kw.get("text"), kw.get("watermark"), kw["event"].kind) for k, _, kw in seen] == [
        ("standby", "to the inbox app", None, "message"), ("standby", None, 5, "read"),
    ]


def test_postback_event_runs_before_routing_and_false_skips_it(bot, ext):
    calls = []

    @ext.router.event("postback")
    def audit(sender_id, message, **extends):
        calls.append(("audit", message["postback"]["payload"]))
        if message["postback"]["payload"] == "/secret":
            return False

    @ext.router.command("/menu")
    def menu(sender_id, cmd, **extends):
        calls.append(("menu", cmd))

    @ext.router.command("/secret")
    def secret(sender_id, cmd, **extends):
        calls.append(("secret", cmd))

    bot.postback("/menu")
    bot.postback("/secret")
    assert calls == [("audit", "/menu"), ("menu", ""), ("audit", "/secret")]


def test_message_event_runs_before_routing_too(bot, ext):
    calls = []
    ext.router.event("message")(lambda sender_id, message, **kw: calls.append("event") or None)
    ext.router.command("/")(lambda sender_id, cmd, **kw: calls.append(f"main {cmd}"))
    bot.send("hi")
    bot.post(postback_event(USER, "/unknown"))  # no postback event handler: straight to routing
    assert calls == ["event", "main hi", "main /unknown"]


def test_several_handlers_of_a_kind_run_in_registration_order(bot, ext):
    order = []
    ext.router.event("read")(lambda **kw: order.append("first"))
    ext.router.event("read")(lambda watermark, **kw: order.append(f"second {watermark}"))
    bot.post(read_event(USER, watermark=3))
    assert order == ["first", "second 3"]


def test_handlers_get_only_the_keywords_they_name(bot, ext):
    got = []

    @ext.router.event("reaction")
    def on_reaction(sender_id, emoji):
        got.append((sender_id, emoji))

    bot.post(reaction_event(USER, "m.1", emoji="\u2764"))
    assert got == [(USER, "\u2764")]


def test_a_reaction_handler_can_reply(bot, ext):
    @ext.router.event("reaction")
    def thanks(sender_id, reaction, action, **extends):
        if action == "react":
            ext.chat.send_text(sender_id, f"Thanks for the {reaction}!")

    bot.post(reaction_event(USER, "m.1", "love"))
    bot.assert_replied("Thanks for the love!")
    bot.post(reaction_event(USER, "m.1", "love", action="unreact"))
    bot.assert_no_reply()


def test_redelivered_events_of_every_kind_run_once(bot, ext, seen):
    for kind in ("read", "delivery", "reaction", "referral"):
        record(ext.router, kind, seen)
    bot.post(read_event(USER, watermark=1, timestamp=10), delivery_event(USER, ["m.1"], watermark=1, timestamp=11),
             reaction_event(USER, "m.1", timestamp=12), referral_event(USER, "ad", timestamp=13))
    bot.redeliver()
    assert [k for k, _, _ in seen] == ["read", "delivery", "reaction", "referral"]


def test_a_users_events_of_mixed_kinds_run_in_timestamp_order(bot, ext):
    order = []
    ext.router.event("read")(lambda **kw: order.append("read"))
    ext.router.event("reaction")(lambda **kw: order.append("reaction"))
    ext.router.command("/")(lambda cmd, **kw: order.append(str(cmd)))
    bot.post(read_event(USER, timestamp=3000), message_event(USER, "hello", timestamp=1000),
             reaction_event(USER, "m.1", timestamp=2000))
    assert order == ["hello", "reaction", "read"]


def test_event_handler_errors_are_recorded_and_reported(bot, ext):
    errors = []
    ext.router.event("read")(lambda **kw: 1 / 0)
    ext.router.on_error(lambda error, **kw: errors.append(type(error).__name__))
    with bot.expecting_errors() as tracebacks:
        bot.post(read_event(USER))
    assert errors == ["ZeroDivisionError"] and "ZeroDivisionError" in tracebacks[0]


def test_unknown_kind_is_refused_at_registration(router):
    with pytest.raises(RoutingError, match="unknown kind.*read"):
        router.event("seen")


def test_module_level_event_decorator_uses_the_default_router(router):
    import flask_ampalibe
    from flask_ampalibe import set_default_router

    old = set_default_router(router)
    try:
        def on_read(sender_id, **extends):
            pass
        assert flask_ampalibe.event("read")(on_read) is on_read
    finally:
        set_default_router(old)
    assert router.events["read"] == [on_read]


def test_ampalibe_119_event_handlers_get_watermark_and_middleware_gets_cmd(bot, ext):
    """1.1.9's handlers take ``(sender_id, watermark, message)``; its middleware takes ``cmd``."""
    got, middleware = [], []

    @ext.router.event("reaction")
    def on_reaction(sender_id, watermark, message, **ext_):
        got.append(("reaction", str(watermark), watermark.webhook))

    @ext.router.event("read")
    def on_read(sender_id, watermark, message):
        got.append(("read", watermark))

    ext.router.before_receive(lambda cmd, event, **kw: middleware.append((event.kind, str(cmd), cmd.webhook)))
    bot.post(reaction_event(USER, "m.9", "angry"), read_event(USER, watermark=1700000000000))
    assert got == [("reaction", "angry", "reaction"), ("read", 1700000000000)]
    assert middleware == [("reaction", "angry", "reaction"), ("read", "1700000000000", "read")]


@pytest.mark.parametrize("optin, token", [
    ({"type": "one_time_notif_req", "payload": "/notify restock", "one_time_notif_token": "OTN-1"}, "OTN-1"),
    ({"type": "notification_messages", "payload": "/notify weekly", "notification_messages_token": "NMT-2",
      "notification_messages_frequency": "WEEKLY"}, "NMT-2"),
])
def test_without_an_optin_handler_optins_reach_the_command_of_their_payload(bot, ext, optin, token):
    """As in Ampalibe 1.1.9: one-time and recurring notification opt-ins go to @command(payload)."""
    got = []

    @ext.router.command("/notify")
    def notify(sender_id, cmd, **extends):
        got.append((sender_id, str(cmd), cmd.webhook, cmd.token))

    bot.post({"sender": {"id": USER}, "recipient": {"id": PAGE_ID}, "timestamp": 1700000000000, "optin": optin})
    assert got == [(USER, optin["payload"].split()[1], "optin", token)]
