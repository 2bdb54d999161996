"""Messenger calls written for Ampalibe 1.1.9: what reaches Graph is what 1.1.9 sent.

Each test calls the client the way a 1.1.9 bot does and checks the request the fake Graph API
received (gap 13 of issue 14), plus the 1.1.9 constants (gap 7).
"""
from __future__ import annotations

import pytest

from conftest import MemoryPages

import flask_ampalibe as ampalibe
from flask_ampalibe import constant
from flask_ampalibe.messenger import PAGE_PREFIX, Messenger
from flask_ampalibe.payload import Payload, PayloadCodec
from flask_ampalibe.testing.graph import FakeGraph
from flask_ampalibe.testing.webhook import PAGE_ID
from flask_ampalibe.ui import Button, Element, Product, QuickReply, ReceiptElement, RecurringNotificationOptin, Summary

TOKEN = "page-token-119"
USER = "42424242"
codec = PayloadCodec("messenger-119-secret")


@pytest.fixture
def chat(graph: FakeGraph) -> Messenger:
    messenger = Messenger(TOKEN, graph_url=graph.url, timeout=5, pages=MemoryPages(), payload_encoder=codec.encode)
    messenger.sleep = lambda seconds: None
    yield messenger
    messenger.close()


def body(graph: FakeGraph, index: int = 0) -> dict:
    return graph.requests[index].json


def template_payload(graph: FakeGraph, index: int = 0) -> dict:
    return body(graph, index)["message"]["attachment"]["payload"]


# -- gap 7: constants ----------------------------------------------------------------------------
def test_constants_have_119_names_values_and_work_as_arguments(chat: Messenger, graph: FakeGraph) -> None:
    from flask_ampalibe import (  # noqa: F401 - every top-level name of 1.1.9's constant module
        Action, Content_type, Filetype, Messaging_type, Notification_cta_text, Notification_frequency,
        Notification_reoptin, Notification_type, Tag, Type,
    )
    assert ampalibe.constant is constant
    assert Action.mark_seen == "mark_seen" and Filetype.image == "image" and Type.phone_number == "phone_number"
    assert Content_type.user_email == "user_email" and Messaging_type.MESSAGE_TAG == "MESSAGE_TAG"
    assert Notification_frequency.DAILY.value == "DAILY" and Notification_cta_text.SIGN_UP.value == "SIGN_UP"
    assert Notification_reoptin.ENABLED.value == "ENABLED" and Tag.HUMAN_AGENT == "HUMAN_AGENT"
    chat.send_text(USER, "Shipped", messaging_type=Messaging_type.MESSAGE_TAG, tag=Tag.POST_PURCHASE_UPDATE,
                   notification_type=Notification_type.SILENT_PUSH)
    assert body(graph) == {"recipient": {"id": USER}, "messaging_type": "MESSAGE_TAG", "tag": "POST_PURCHASE_UPDATE",
                           "notification_type": "SILENT_PUSH", "message": {"text": "Shipped"}}
    chat.send_action(USER, Action.typing_on)
    assert body(graph, 1)["sender_action"] == "typing_on"


def test_recurring_optin_takes_119_keywords_and_sends_119_field_names(chat: Messenger, graph: FakeGraph) -> None:
    optin = RecurringNotificationOptin(
        title="Daily news", payload=Payload("/news"), image_url="https://x.test/n.png",
        notification_frequency=constant.Notification_frequency.DAILY,
        notification_cta_text=constant.Notification_cta_text.SIGN_UP,
        notification_reoptin=constant.Notification_reoptin.ENABLED,
    )
    chat.send_recurring_notification_optin(USER, optin)
    assert template_payload(graph) == {
        "template_type": "notification_messages", "title": "Daily news", "image_url": "https://x.test/n.png",
        "payload": "/news", "notification_messages_frequency": "DAILY",
        "notification_messages_cta_text": "SIGN_UP", "notification_messages_reoptin": "ENABLED",
    }
    with pytest.raises(ValueError, match="DAILY, WEEKLY or MONTHLY"):
        RecurringNotificationOptin(title="x", payload="/x", notification_frequency="HOURLY")


# -- gap 13 --------------------------------------------------------------------------------------
def test_persistent_menu_with_a_user_is_that_users_menu(chat: Messenger, graph: FakeGraph) -> None:
    menu = [Button(type="postback", title="Menu", payload="/menu")]
    chat.persistent_menu(USER, menu)
    req = graph.requests[0]
    assert (req.method, req.path) == ("POST", "/v24.0/me/custom_user_settings")
    assert req.json["psid"] == USER
    chat.persistent_menu(USER, menu, action="DELETE")
    req = graph.requests[1]
    assert (req.method, req.path, req.query["psid"]) == ("DELETE", "/v24.0/me/custom_user_settings", USER)
    chat.persistent_menu(None, menu)  # no user: the Page's menu
    assert graph.requests[2].path == "/v24.0/me/messenger_profile"


def test_receipt_template_positional_order_and_mga_default(chat: Messenger, graph: FakeGraph) -> None:
    elements = [ReceiptElement(title="Tee-shirt", price=1000)]
    chat.send_receipt_template(USER, "Arleme", 1234, "MVOLA", elements, Summary(total_cost=1000))
    payload = template_payload(graph)
    assert payload["currency"] == "MGA"
    assert payload["elements"] == [{"title": "Tee-shirt", "price": 1000}]
    assert payload["summary"] == {"total_cost": 1000}


def test_recurring_notification_with_elements_sends_a_template(chat: Messenger, graph: FakeGraph) -> None:
    elements = [Element(title="Today's deal", subtitle="-20%")]
    chat.send_recurring_notification("NMT-1", elements)
    assert body(graph) == {
        "recipient": {"notification_messages_token": "NMT-1"},
        "message": {"attachment": {"type": "template", "payload": {
            "template_type": "notification_messages", "elements": [{"title": "Today's deal", "subtitle": "-20%"}]}}},
    }


def test_onetime_request_without_title_has_119s_default(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_onetime_notification_request(USER, None, "/notify")
    assert template_payload(graph)["title"] == "Notification request"


def test_product_template_next_and_quick_rep(chat: Messenger, graph: FakeGraph) -> None:
    products = [Product(str(i)) for i in range(12)]
    extra = QuickReply(title="Menu", payload="/menu")
    chat.send_product_template(USER, products, next=True, quick_rep=[extra])
    first = body(graph)["message"]
    assert [p["id"] for p in first["attachment"]["payload"]["elements"]] == [str(i) for i in range(10)]
    assert first["quick_replies"][0]["title"] == "Menu"
    more = first["quick_replies"][-1]
    assert more["payload"].startswith(PAGE_PREFIX)
    assert chat.handle_internal(USER, more["payload"]) is True
    second = body(graph, 1)["message"]
    assert [p["id"] for p in second["attachment"]["payload"]["elements"]] == ["10", "11"]
    assert [q["title"] for q in second["quick_replies"]] == ["Menu"]


def test_token_page_id_prio_and_passed_through_kwargs(chat: Messenger, graph: FakeGraph) -> None:
    assert chat.token == TOKEN
    assert chat.page_id == PAGE_ID
    assert graph.requests[0].path == "/v24.0/me"
    graph.clear()
    chat.send_message(USER, "hi", prio=True)
    assert body(graph) == {"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "hi"}}
    chat.send_text(USER, "tracked", metadata="order-7")
    assert body(graph, 1)["metadata"] == "order-7"
    chat.send_action(USER, "mark_seen", messaging_type="RESPONSE")
    assert body(graph, 2) == {"recipient": {"id": USER}, "sender_action": "mark_seen", "messaging_type": "RESPONSE"}
    with pytest.raises(TypeError, match="builds 'message'"):
        chat.send_text(USER, "x", message={"text": "y"})


def test_call_button_is_refused_and_phone_number_checked() -> None:
    with pytest.raises(ValueError, match="phone_number"):
        Button(type="call", title="Call us", payload="+261340000000")
    with pytest.raises(ValueError, match="country code"):
        Button(type="phone_number", title="Call us", payload="/call")
    assert Button(type="phone_number", title="Call us", payload="+261 34 00 000 00")["payload"] == "+261 34 00 000 00"


def test_119_constructor_arguments(graph: FakeGraph) -> None:
    chat = Messenger(TOKEN, graph_url=graph.url, api_version="v15.0", log_level="quiet")
    try:
        chat.send_text(USER, "hi")
        assert graph.requests[0].path == "/v15.0/me/messages"
    finally:
        chat.close()
    with pytest.raises(ValueError, match="'error', 'info' or 'quiet'"):
        Messenger(TOKEN, log_level="verbose")


def test_119_keyword_names(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_text(sender_id=USER, text="hi")
    chat.send_quick_reply(sender_id=USER, quick_reps=[QuickReply(title="Yes", payload="/yes")], text="Sure?")
    chat.send_product_template(sender_id=USER, products=["1"])
    chat.persistent_menu(sender_id=USER, menu=[Button(title="Menu", payload="/menu")])
    chat.send_recurring_notification(message_token="NMT-3", elements=[Element(title="News")])
    chat.send_custom(json={"recipient": {"id": USER}, "message": {"text": "raw"}})
    assert [r.recipient for r in graph.requests] == [USER, USER, USER, None, None, USER]
    assert graph.requests[1].message["quick_replies"][0]["title"] == "Yes"
    assert graph.requests[3].json["psid"] == USER
    assert graph.requests[3].json["persistent_menu"][0]["call_to_actions"][0]["title"] == "Menu"
    assert graph.requests[4].json["recipient"] == {"notification_messages_token": "NMT-3"}
    chat.delete_personas(persona_id="77")
    assert graph.requests[-1].path == "/v24.0/77"
    with pytest.raises(TypeError, match="both 'sender_id' and 'dest_id'"):
        chat.send_text(sender_id=USER, dest_id=USER, text="x")


def test_builders_have_119s_value(chat: Messenger, graph: FakeGraph) -> None:
    button = Button(type="postback", title="Menu", payload=Payload("/menu", page=2))
    assert button.value["title"] == "Menu" and button.value["type"] == "postback"
    chat.send_custom({"recipient": {"id": USER}, "message": {"attachment": {"type": "template", "payload": {
        "template_type": "button", "text": "Go", "buttons": [button.value]}}}})
    sent_payload = body(graph)["message"]["attachment"]["payload"]["buttons"][0]["payload"]
    assert codec.decode(sent_payload) == ("/menu", {"page": 2})  # the Payload is encoded when sent
