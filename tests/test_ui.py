"""The UI builders: limits named in errors, read-only mappings, same JSON every time."""
from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Mapping

import pytest

from flask_ampalibe.errors import AmpalibeError
from flask_ampalibe.payload import Payload, PayloadCodec
from flask_ampalibe.ui import (
    Action, Address, Adjustment, Button, ButtonType, Content_type, ContentType, Element, Filetype, LimitError,
    Product, QuickReply, ReceiptElement, RecurringNotificationOptin, Summary, Type,
)

codec = PayloadCodec("ui-test-secret")


def dumps(obj: object) -> str:
    """Serialise the way the Messenger client does."""

    def default(o: object) -> object:
        if isinstance(o, Mapping):
            return dict(o)
        return codec.encode(o)  # type: ignore[arg-type]

    return json.dumps(obj, default=default, sort_keys=True)


def test_quick_reply_fields() -> None:
    qr = QuickReply(title="Angela", payload="/membre", image_url="https://i.imgur.com/6b45bi.jpg")
    assert dict(qr) == {"content_type": "text", "title": "Angela", "payload": "/membre",
                        "image_url": "https://i.imgur.com/6b45bi.jpg"}
    assert qr.title == "Angela" and qr["payload"] == "/membre"
    assert QuickReply(content_type=Content_type.user_email).to_dict() == {"content_type": "user_email"}


def test_quick_reply_limits_name_the_limit() -> None:
    QuickReply(title="x" * 20, payload="p" * 1000)
    with pytest.raises(LimitError, match="at most 20"):
        QuickReply(title="x" * 21, payload="/p")
    with pytest.raises(LimitError, match="at most 1000"):
        QuickReply(title="ok", payload="p" * 1001)
    with pytest.raises(ValueError, match="needs a title and a payload"):
        QuickReply(title="only")
    with pytest.raises(ValueError, match="content_type"):
        QuickReply(title="a", payload="b", content_type="location")


def test_limit_error_is_a_value_error_and_an_ampalibe_error() -> None:
    assert issubclass(LimitError, ValueError) and issubclass(LimitError, AmpalibeError)


def test_button_kinds_and_required_fields() -> None:
    assert dict(Button(type=Type.postback, title="Informations", payload="/contact")) == {
        "type": "postback", "title": "Informations", "payload": "/contact"}
    assert dict(Button(type="web_url", title="Site", url="https://x.test", webview_height_ratio="tall")) == {
        "type": "web_url", "title": "Site", "url": "https://x.test", "webview_height_ratio": "tall"}
    with pytest.raises(ValueError, match="needs url"):
        Button(type="web_url", title="Site")
    with pytest.raises(ValueError, match="needs title and payload"):
        Button()
    with pytest.raises(LimitError, match="at most 1000"):
        Button(title="t", payload="x" * 1001)


def test_element_limits() -> None:
    buttons = [Button(title=f"b{i}", payload=f"/b{i}") for i in range(3)]
    Element(title="t" * 80, subtitle="s" * 80, buttons=buttons)
    with pytest.raises(LimitError, match="at most 80"):
        Element(title="t" * 81)
    with pytest.raises(LimitError, match="at most 80"):
        Element(title="t", subtitle="s" * 81)
    with pytest.raises(LimitError, match="4 buttons; Messenger allows at most 3"):
        Element(title="t", buttons=buttons + [Button(title="b4", payload="/b4")])


def test_builders_are_read_only() -> None:
    actions = {"type": "web_url", "url": "https://x.test"}
    buttons = [Button(title="Get", payload="/get")]
    element = Element(title="Item", buttons=buttons, default_action=actions)
    # Later changes to the caller's objects do not leak into the builder...
    actions["url"] = "https://changed.test"
    buttons.append(Button(title="Other", payload="/other"))
    assert element["default_action"]["url"] == "https://x.test"
    assert len(element["buttons"]) == 1
    # ...and the builder itself cannot be changed.
    with pytest.raises(TypeError):
        element["title"] = "new"  # type: ignore[index]
    with pytest.raises(TypeError):
        element["default_action"]["url"] = "x"
    with pytest.raises(AttributeError, match="read-only"):
        element.title = "new"
    # to_dict gives an independent plain copy every time.
    first = element.to_dict()
    first["buttons"][0]["title"] = "mutated"
    assert element.to_dict()["buttons"][0]["title"] == "Get"


def test_builders_serialise_the_same_twice_with_payloads() -> None:
    element = Element(title="Item", buttons=[Button(title="Get", payload=Payload("/item", id_item=3))])
    qr = QuickReply(title="Angela", payload=Payload("/membre", name="Angela"))
    once, twice = dumps([element, qr]), dumps([element, qr])
    assert once == twice
    data = json.loads(once)
    assert data[0]["buttons"][0]["payload"].startswith("/item ~amp.")
    assert codec.decode(data[1]["payload"]) == ("/membre", {"name": "Angela"})
    assert isinstance(element["buttons"][0]["payload"], Payload)  # still the object, not its string


def test_builders_behave_like_dicts() -> None:
    qr = QuickReply(title="A", payload="/a")
    assert qr == {"content_type": "text", "title": "A", "payload": "/a"}
    assert {**qr, "title": "B"}["title"] == "B"
    assert qr.get("image_url") is None and "image_url" not in qr
    assert copy.deepcopy(qr) == qr and pickle.loads(pickle.dumps(qr)) == qr
    assert len({qr, QuickReply(title="A", payload="/a")}) == 1
    assert "QuickReply(" in repr(qr)


def test_receipt_helpers() -> None:
    assert dict(ReceiptElement(title="Tee-shirt", price=1000)) == {"title": "Tee-shirt", "price": 1000}
    assert dict(Summary(total_cost=300)) == {"total_cost": 300}
    assert dict(Address(street_1="Street 1", city="City", state="State", postal_code="101", country="MG")) == {
        "street_1": "Street 1", "city": "City", "postal_code": "101", "state": "State", "country": "MG"}
    assert dict(Adjustment(name="Discount of 10%", amount=10)) == {"name": "Discount of 10%", "amount": 10}
    assert dict(Product(123)) == {"id": "123"}


def test_recurring_notification_optin() -> None:
    optin = RecurringNotificationOptin(title="Daily deals", payload="/deals", frequency="daily", reoptin=True,
                                       cta_text="GET_UPDATES")
    assert dict(optin) == {
        "template_type": "notification_messages", "title": "Daily deals", "payload": "/deals",
        "notification_messages_frequency": "DAILY", "notification_messages_reoptin": "ENABLED",
        "notification_messages_cta_text": "GET_UPDATES",
    }
    with pytest.raises(LimitError, match="at most 65"):
        RecurringNotificationOptin(title="t" * 66, payload="/p")


def test_enums_are_their_strings() -> None:
    assert Action.mark_seen == "mark_seen" and str(Action.typing_on) == "typing_on"
    assert json.dumps([Filetype.image, ButtonType.web_url, ContentType.text]) == '["image", "web_url", "text"]'
    assert Type is ButtonType and Content_type is ContentType
