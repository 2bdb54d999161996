"""The Messenger client, method by method: the exact Graph request each call makes.

Every example of the spec's §1.4 (Messenger API) and §1.6.1 (logging) is here, plus the methods
Ampalibe added up to 1.1.9.  Splitting, pagination and retries have their own test modules.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import MemoryPages

from flask_ampalibe.errors import ConfigurationError
from flask_ampalibe.messenger import Messenger, graph_error
from flask_ampalibe.payload import Payload, PayloadCodec
from flask_ampalibe.testing.graph import FakeGraph, RecordedRequest
from flask_ampalibe.ui import (
    Action, Address, Adjustment, Button, Element, Filetype, Product, QuickReply, ReceiptElement,
    RecurringNotificationOptin, Summary, Type,
)

TOKEN = "page-token-123"
SECRET = "app-secret-456"
PROOF = hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
USER = "5566778899"
MESSAGES = "/v24.0/me/messages"
codec = PayloadCodec("messenger-test-secret")


@pytest.fixture
def chat(graph: FakeGraph) -> Messenger:
    messenger = Messenger(TOKEN, graph_url=graph.url, app_secret=SECRET, timeout=5, pages=MemoryPages(),
                          payload_encoder=codec.encode)
    messenger.sleep = lambda seconds: None
    yield messenger
    messenger.close()


def only(graph: FakeGraph) -> RecordedRequest:
    """The one request the test made, with the checks every request must pass."""
    assert len(graph.requests) == 1, graph.requests
    req = graph.requests[0]
    assert req.query == {"access_token": TOKEN, "appsecret_proof": PROOF}
    return req


def sent(graph: FakeGraph, message: Any, **envelope: Any) -> None:
    """Assert the one request is a Send API POST of ``message`` to USER."""
    req = only(graph)
    assert (req.method, req.path) == ("POST", MESSAGES)
    assert req.headers["Content-Type"].startswith("application/json")
    expected = {"recipient": {"id": USER}, "messaging_type": "RESPONSE", **envelope, "message": message}
    assert req.json == expected


def template(payload: dict) -> dict:
    return {"attachment": {"type": "template", "payload": payload}}


# -- spec §1.4 examples -----------------------------------------------------------------------------
def test_send_message_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    res = chat.send_message(USER, "Hello world")
    assert res.status_code == 200 and res.json()["recipient_id"] == USER
    sent(graph, {"text": "Hello world"})


def test_send_action_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    assert chat.send_action(USER, "mark_seen").status_code == 200
    req = only(graph)
    assert (req.method, req.path) == ("POST", MESSAGES)
    assert req.json == {"recipient": {"id": USER}, "sender_action": "mark_seen"}  # alone, no messaging_type


def test_send_action_enum_and_bad_action(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_action(USER, Action.typing_on)
    assert graph.requests[0].json["sender_action"] == "typing_on"
    with pytest.raises(ValueError, match="mark_seen"):
        chat.send_action(USER, "dancing")
    assert len(graph.requests) == 1


def test_send_quick_reply_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    quick_rep = [
        {"content_type": "text", "title": "Angela", "payload": "/membre", "image_url": "https://i.imgur.com/6b45bi.jpg"},
        {"content_type": "text", "title": "Rivo", "payload": "/membre", "image_url": "https://i.imgur.com/6b45bi.jpg"},
    ]
    chat.send_quick_reply(USER, quick_rep, "who do you choose ?")
    sent(graph, {"text": "who do you choose ?", "quick_replies": quick_rep})


def test_send_quick_reply_with_payload_objects_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    quick_rep = [
        {"content_type": "text", "title": "Angela", "payload": Payload("/membre", name="Angela", ref="2016-sac")},
        {"content_type": "text", "title": "Rivo", "payload": Payload("/membre", name="Rivo")},
    ]
    chat.send_quick_reply(USER, quick_rep, "Who?")
    replies = only(graph).json["message"]["quick_replies"]
    assert codec.decode(replies[0]["payload"]) == ("/membre", {"name": "Angela", "ref": "2016-sac"})
    assert codec.decode(replies[1]["payload"]) == ("/membre", {"name": "Rivo"})
    assert isinstance(quick_rep[0]["payload"], Payload)  # the author's dicts are left untouched


def test_send_template_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    list_items = [
        {"title": f"item n°{n}", "image_url": "https://i.imgur.com/6b45bi.jpg",
         "buttons": [{"type": "postback", "title": "Get item", "payload": f"/item {n}"}]}
        for n in (1, 2)
    ]
    chat.send_template(USER, list_items)
    sent(graph, template({"template_type": "generic", "elements": list_items}))


def test_send_template_next_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    list_items = [
        {"title": f"item n°{i+1}", "image_url": "https://i.imgur.com/6b45bi.jpg",
         "buttons": [{"type": "postback", "title": "Get item", "payload": Payload("/item", id_item=i + 1)}]}
        for i in range(30)
    ]
    chat.send_template(USER, list_items, next=True)
    message = only(graph).json["message"]
    elements = message["attachment"]["payload"]["elements"]
    assert [e["title"] for e in elements] == [f"item n°{i+1}" for i in range(10)]
    assert codec.decode(elements[9]["buttons"][0]["payload"]) == ("/item", {"id_item": 10})
    assert [q["title"] for q in message["quick_replies"]] == ["Next page"]


def test_send_file_url_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_file_url(USER, "https://i.imgur.com/6b45bi.jpg", filetype="image")
    sent(graph, {"attachment": {"type": "image",
                                "payload": {"url": "https://i.imgur.com/6b45bi.jpg", "is_reusable": False}}})


@pytest.mark.parametrize("name, filetype, mime", [
    ("mydocument.pdf", "file", "application/pdf"),
    ("intro.mp4", "video", "video/mp4"),
    ("myvoice.m4a", "audio", None),
])
def test_send_file_spec_examples(chat: Messenger, graph: FakeGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 name: str, filetype: str, mime: str | None) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(b"\x00binary\xffcontent")
    res = chat.send_file(USER, name) if filetype == "file" else chat.send_file(USER, name, filetype=filetype)
    assert res.status_code == 200
    req = only(graph)
    assert (req.method, req.path) == ("POST", MESSAGES)
    assert req.headers["Content-Type"].startswith("multipart/form-data")
    assert json.loads(req.form["recipient"]) == {"id": USER}
    assert req.form["messaging_type"] == "RESPONSE"
    assert json.loads(req.form["message"]) == {"attachment": {"type": filetype, "payload": {"is_reusable": False}}}
    filename, ctype, content = req.files["filedata"]
    assert (filename, content) == (name, b"\x00binary\xffcontent")
    if mime:
        assert ctype == mime


def test_send_media_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    url = "https://www.facebook.com/iTeam.Community/videos/476926027465187"
    chat.send_media(USER, url, "video")
    sent(graph, template({"template_type": "media", "elements": [{"media_type": "video", "url": url}]}))


def test_send_button_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    buttons = [{"type": "postback", "title": "Informations", "payload": "/contact"}]
    chat.send_button(USER, buttons, "What do you want to do?")
    sent(graph, template({"template_type": "button", "text": "What do you want to do?", "buttons": buttons}))


def test_get_started_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    assert chat.get_started().json() == {"result": "success"}
    req = only(graph)
    assert (req.method, req.path) == ("POST", "/v24.0/me/messenger_profile")
    assert req.json == {"get_started": {"payload": "/"}}


def test_persistent_menu_spec_example(chat: Messenger, graph: FakeGraph) -> None:
    persistent_menu = [
        {"type": "postback", "title": "Menu", "payload": "/menu"},
        {"type": "postback", "title": "Logout", "payload": "/logout"},
    ]
    chat.persistent_menu(USER, persistent_menu)
    req = only(graph)
    # That user's menu, as Ampalibe 1.1.9 sets it (custom user settings).
    assert (req.method, req.path) == ("POST", "/v24.0/me/custom_user_settings")
    assert req.json == {"psid": USER, "persistent_menu": [
        {"locale": "default", "composer_input_disabled": False, "call_to_actions": persistent_menu}]}


# -- §1.6.1: the response keeps Graph's error readable, and it is logged ---------------------------
def test_logging_spec_example_error_response(chat: Messenger, graph: FakeGraph,
                                             caplog: pytest.LogCaptureFixture) -> None:
    graph.fail_next(status=400, error={"code": 100, "error_subcode": 2018001, "message": "No matching user found",
                                       "fbtrace_id": "TRACE42"})
    with caplog.at_level(logging.DEBUG, logger="flask_ampalibe.messenger"):
        res = chat.send_message(USER, "Hello Ampalibe")
    assert res.status_code == 400
    assert res.json()["error"]["message"] == "No matching user found"
    info = graph_error(res)
    assert (info.code, info.subcode, info.fbtrace_id) == (100, 2018001, "TRACE42")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "code=100" in logged and "subcode=2018001" in logged and "fbtrace_id=TRACE42" in logged
    assert TOKEN not in logged and "Hello Ampalibe" not in logged
    assert len(graph.requests) == 1


# -- Ampalibe 1.1 additions ----------------------------------------------------------------------------
def test_send_text_and_kwargs_pass_through(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_text(USER, "Your order shipped", messaging_type="MESSAGE_TAG", tag="POST_PURCHASE_UPDATE",
                   notification_type="SILENT_PUSH")
    sent(graph, {"text": "Your order shipped"}, messaging_type="MESSAGE_TAG", tag="POST_PURCHASE_UPDATE",
         notification_type="SILENT_PUSH")


def test_tag_alone_implies_message_tag(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_text(USER, "Update", tag="ACCOUNT_UPDATE")
    assert graph.requests[0].json["messaging_type"] == "MESSAGE_TAG"


def test_unknown_keyword_is_refused_before_sending(chat: Messenger, graph: FakeGraph) -> None:
    with pytest.raises(TypeError, match="messagin_type.*send_custom"):
        chat.send_text(USER, "x", messagin_type="UPDATE")
    assert graph.requests == []


def test_send_generic_template_with_builders(chat: Messenger, graph: FakeGraph) -> None:
    elements = [Element(title="iTem", image_url="https://i.imgflip.com/6b45bi.jpg",
                        buttons=[Button(type=Type.postback, title="Get item", payload="/item 1")])]
    chat.send_generic_template(USER, elements, quick_rep=[QuickReply(title="Menu", payload="/menu")])
    sent(graph, {
        "attachment": {"type": "template", "payload": {"template_type": "generic", "elements": [{
            "title": "iTem", "image_url": "https://i.imgflip.com/6b45bi.jpg",
            "buttons": [{"type": "postback", "title": "Get item", "payload": "/item 1"}]}]}},
        "quick_replies": [{"content_type": "text", "title": "Menu", "payload": "/menu"}],
    })


def test_reusable_file_url_then_send_attachment(chat: Messenger, graph: FakeGraph) -> None:
    res = chat.send_file_url(USER, "https://x.test/a.png", filetype=Filetype.image, reusable=True)
    assert graph.requests[0].json["message"]["attachment"]["payload"] == {"url": "https://x.test/a.png",
                                                                         "is_reusable": True}
    attachment_id = res.json()["attachment_id"]
    graph.clear()
    chat.send_attachment(USER, attachment_id, filetype="image")
    sent(graph, {"attachment": {"type": "image", "payload": {"attachment_id": attachment_id}}})


def test_send_file_reusable_from_file_object(chat: Messenger, graph: FakeGraph, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"png-bytes")
    with open(path, "rb") as handle:
        res = chat.send_file(USER, handle, filetype="image", filename="holiday.png", reusable=True,
                             persona_id="777")
    assert "attachment_id" in res.json()
    req = only(graph)
    assert json.loads(req.form["message"]) == {"attachment": {"type": "image", "payload": {"is_reusable": True}}}
    assert req.form["persona_id"] == "777"
    assert req.files["filedata"][:1] == ("holiday.png",) and req.files["filedata"][2] == b"png-bytes"


def test_send_receipt_template_ampalibe_example(chat: Messenger, graph: FakeGraph) -> None:
    receipts = [ReceiptElement(title="Tee-shirt", price=1000), ReceiptElement(title="Pants", price=2000)]
    summary = Summary(total_cost=300)
    address = Address(street_1="Street 1", city="City", state="State", postal_code="Postal Code", country="Country")
    adjustment = Adjustment(name="Discount of 10%", amount=10)
    chat.send_receipt_template(USER, "Arleme", 123461346131, "MVOLA", summary=summary, receipt_elements=receipts,
                               currency="MGA", address=address, adjustments=[adjustment])
    sent(graph, template({
        "template_type": "receipt", "recipient_name": "Arleme", "order_number": "123461346131", "currency": "MGA",
        "payment_method": "MVOLA", "summary": {"total_cost": 300},
        "address": {"street_1": "Street 1", "city": "City", "postal_code": "Postal Code", "state": "State",
                    "country": "Country"},
        "elements": [{"title": "Tee-shirt", "price": 1000}, {"title": "Pants", "price": 2000}],
        "adjustments": [{"name": "Discount of 10%", "amount": 10}],
    }))


def test_send_product_template(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_product_template(USER, [Product("123456789"), "987654321"])
    sent(graph, template({"template_type": "product", "elements": [{"id": "123456789"}, {"id": "987654321"}]}))


def test_send_onetime_notification_request_and_token_send(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_onetime_notification_request(USER, "Accepter le notification", Payload("/test"))
    sent(graph, template({"template_type": "one_time_notif_req", "title": "Accepter le notification",
                          "payload": "/test"}))
    graph.clear()
    chat.send_text(USER, "Back in stock", one_time_notif_token="OTN-1")
    assert graph.requests[0].json == {"recipient": {"one_time_notif_token": "OTN-1"},
                                      "message": {"text": "Back in stock"}}


def test_recurring_notifications(chat: Messenger, graph: FakeGraph) -> None:
    optin = RecurringNotificationOptin(title="Daily deals", payload=Payload("/deals"), image_url="https://x.test/i.png")
    chat.send_recurring_notification_optin(USER, optin)
    sent(graph, template({"template_type": "notification_messages", "title": "Daily deals",
                          "image_url": "https://x.test/i.png", "payload": "/deals"}))
    graph.clear()
    chat.send_recurring_notification("NMT-9", "Today's deal")
    req = only(graph)
    assert req.json == {"recipient": {"notification_messages_token": "NMT-9"}, "message": {"text": "Today's deal"}}


def test_get_user_profile(chat: Messenger, graph: FakeGraph) -> None:
    profile = chat.get_user_profile(USER)
    assert profile["first_name"] == "Test"
    req = graph.requests[0]
    assert (req.method, req.path) == ("GET", f"/v24.0/{USER}")
    assert req.query == {"access_token": TOKEN, "appsecret_proof": PROOF, "fields": "first_name,last_name,profile_pic"}


def test_get_user_profile_error_gives_empty_dict(chat: Messenger, graph: FakeGraph) -> None:
    graph.fail_next(status=400, error={"code": 100, "error_subcode": 2018218})
    assert chat.get_user_profile(USER) == {}


def test_personas_and_persona_id_on_sends(chat: Messenger, graph: FakeGraph) -> None:
    persona_id = chat.create_personas("Rivo Lalaina", "https://avatars.githubusercontent.com/u/59861055?v=4")
    assert persona_id and persona_id.isdigit()
    req = graph.requests[0]
    assert (req.method, req.path) == ("POST", "/v24.0/me/personas")
    assert req.json == {"name": "Rivo Lalaina", "profile_picture_url": "https://avatars.githubusercontent.com/u/59861055?v=4"}

    assert chat.get_personas(persona_id)["id"] == persona_id
    assert (graph.requests[1].method, graph.requests[1].path) == ("GET", f"/v24.0/{persona_id}")
    assert chat.list_personas() == []
    assert (graph.requests[2].method, graph.requests[2].path) == ("GET", "/v24.0/me/personas")
    assert chat.delete_personas(persona_id).json() == {"success": True}
    assert (graph.requests[3].method, graph.requests[3].path) == ("DELETE", f"/v24.0/{persona_id}")

    chat.send_text(USER, "Hello", persona_id=persona_id)
    chat.send_action(USER, "typing_on", personas_id=persona_id)  # Ampalibe's spelling
    assert graph.requests[4].json["persona_id"] == persona_id
    assert graph.requests[5].json == {"recipient": {"id": USER}, "sender_action": "typing_on", "persona_id": persona_id}
    assert all(r.query["access_token"] == TOKEN for r in graph.requests)


class PagedPersonas(FakeGraph):
    """A fake Graph whose persona list comes in two result pages."""

    def _success(self, record: RecordedRequest) -> dict:
        if record.method == "GET" and record.path.endswith("/me/personas"):
            if record.query.get("after") == "C1":
                return {"data": [{"id": "2", "name": "B"}], "paging": {"cursors": {"after": "C2"}}}
            return {"data": [{"id": "1", "name": "A"}], "paging": {"cursors": {"after": "C1"}, "next": "https://x"}}
        return super()._success(record)


def test_list_personas_follows_pages() -> None:
    with PagedPersonas() as graph:
        chat = Messenger(TOKEN, graph_url=graph.url)
        assert [p["id"] for p in chat.list_personas()] == ["1", "2"]
        assert [r.query.get("after") for r in graph.requests] == [None, "C1"]
        assert graph.requests[0].query == {"access_token": TOKEN}  # no app secret: no proof
        chat.close()


def test_persistent_menu_builders_locale_and_delete(chat: Messenger, graph: FakeGraph) -> None:
    menu = [Button(type=Type.postback, title="Menu", payload=Payload("/payload")),
            Button(type=Type.web_url, title="Website", url="https://x.test")]
    chat.persistent_menu(None, menu, locale="fr_FR", composer_input_disabled=True)  # the Page's menu
    assert graph.requests[0].json == {"persistent_menu": [{
        "locale": "fr_FR", "composer_input_disabled": True,
        "call_to_actions": [{"type": "postback", "title": "Menu", "payload": "/payload"},
                            {"type": "web_url", "title": "Website", "url": "https://x.test"}]}]}
    chat.persistent_menu(USER, [], action="DELETE", per_user=False)
    req = graph.requests[1]
    assert (req.method, req.path, req.json) == ("DELETE", "/v24.0/me/messenger_profile", {"fields": ["persistent_menu"]})


def test_persistent_menu_per_user(chat: Messenger, graph: FakeGraph) -> None:
    chat.persistent_menu(USER, [{"type": "postback", "title": "Menu", "payload": "/menu"}])
    req = graph.requests[0]
    assert (req.method, req.path) == ("POST", "/v24.0/me/custom_user_settings")
    assert req.json["psid"] == USER and req.json["persistent_menu"][0]["call_to_actions"][0]["title"] == "Menu"
    chat.persistent_menu(USER, [], action="DELETE")  # only that user's menu goes
    req = graph.requests[1]
    assert (req.method, req.path) == ("DELETE", "/v24.0/me/custom_user_settings")
    assert req.query["psid"] == USER and req.query["params"] == '["persistent_menu"]'


def test_persistent_menu_full_locale_entries_pass_through(chat: Messenger, graph: FakeGraph) -> None:
    menus = [{"locale": "default", "composer_input_disabled": False,
              "call_to_actions": [{"type": "postback", "title": "Menu", "payload": "/menu"}]},
             {"locale": "fr_FR", "composer_input_disabled": False,
              "call_to_actions": [{"type": "postback", "title": "Accueil", "payload": "/menu"}]}]
    chat.persistent_menu(None, menus)
    assert graph.requests[0].json == {"persistent_menu": menus}


def test_send_custom(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_custom({"greeting": [{"locale": "default", "text": "Hello!"}]}, "/messenger_profile")
    req = only(graph)
    assert (req.method, req.path, req.json) == ("POST", "/v24.0/me/messenger_profile",
                                                 {"greeting": [{"locale": "default", "text": "Hello!"}]})
    graph.clear()
    chat.send_custom({"recipient": {"id": USER}, "message": {"text": "raw"}})
    assert (graph.requests[0].path, graph.requests[0].json["message"]) == (MESSAGES, {"text": "raw"})


def test_send_message_accepts_a_message_object(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_message(USER, {"text": "hi", "metadata": "m1"})
    sent(graph, {"text": "hi", "metadata": "m1"})


def test_graph_version_and_url_normalised(graph: FakeGraph) -> None:
    chat = Messenger(TOKEN, graph_url=graph.url + "/", graph_version="21.0")
    chat.send_text(USER, "x")
    assert graph.requests[0].path == "/v21.0/me/messages"
    chat.close()


def test_missing_token_is_a_configuration_error(graph: FakeGraph) -> None:
    chat = Messenger("", graph_url=graph.url)
    with pytest.raises(ConfigurationError, match="AMPALIBE_ACCESS_TOKEN"):
        chat.send_text(USER, "x")
    assert graph.requests == []
    chat.close()


def test_one_session_and_timeout_on_every_call(graph: FakeGraph) -> None:
    import requests

    calls: list[dict] = []

    class Recording(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            calls.append(kwargs)
            return super().request(*args, **kwargs)

    session = Recording()
    chat = Messenger(TOKEN, graph_url=graph.url, timeout=3.5, session=session)
    chat.send_text(USER, "a")
    chat.get_user_profile(USER)
    chat.get_started()
    assert chat.session is session
    assert [c["timeout"] for c in calls] == [3.5, 3.5, 3.5]
    chat.close()  # not ours: left open
    session.close()


class CountingSend:
    """Counts calls of :meth:`requests.Session.send` (requests' usual path) in every session."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import requests

        self.calls = 0
        original = requests.Session.send

        def send(session: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(session, *args, **kwargs)

        monkeypatch.setattr(requests.Session, "send", send)


def test_plain_sends_take_the_short_path_with_what_requests_would_send(
        chat: Messenger, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    counting = CountingSend(monkeypatch)
    chat.session.headers["X-Trace"] = "t-1"  # the session's own headers still go out
    for text in ("a", "bé", "c"):
        chat.send_text(USER, text)
    assert counting.calls == 0  # graphsession.GraphSession's short path, not Session.send
    assert [m["text"] for m in graph.sent_messages(USER)] == ["a", "bé", "c"]
    first = graph.requests[0]
    assert first.query == {"access_token": TOKEN, "appsecret_proof": PROOF}
    assert first.headers["Content-Type"] == "application/json; charset=utf-8"
    assert first.headers["User-Agent"] == requests.utils.default_user_agent()
    assert first.headers["X-Trace"] == "t-1"
    assert int(first.headers["Content-Length"]) == len(first.body) > 0
    chat.get_user_profile(USER)  # a GET with params: requests' usual path
    assert counting.calls == 1


def test_a_session_with_cookies_auth_or_hooks_sends_them(
        chat: Messenger, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingSend(monkeypatch)
    answered: list[int] = []
    chat.session.hooks["response"].append(lambda response, **kw: answered.append(response.status_code))
    chat.send_text(USER, "hooked")
    assert answered == [200] and counting.calls == 1
    chat.session.hooks["response"].clear()
    chat.session.cookies.set("c", "v")
    chat.send_text(USER, "cookie")
    assert graph.requests[-1].headers.get("Cookie") == "c=v" and counting.calls == 2
    chat.session.cookies.clear()
    chat.session.auth = ("user", "secret")
    chat.send_text(USER, "auth")
    assert graph.requests[-1].headers["Authorization"].startswith("Basic ") and counting.calls == 3
    chat.session.auth = None
    chat.send_text(USER, "plain again")
    assert counting.calls == 3
    assert [m["text"] for m in graph.sent_messages(USER)] == ["hooked", "cookie", "auth", "plain again"]


def test_credentials_query_follows_the_credentials(chat: Messenger, graph: FakeGraph) -> None:
    # The credentials' query string is encoded once per credentials (GraphClient._signed_url):
    # new credentials must show at the next call, and a call's own params keep their old rules.
    chat.send_text(USER, "one")
    chat._auth = {"access_token": "rotated-token"}
    chat.send_text(USER, "two")
    assert [r.query for r in graph.requests] == [{"access_token": TOKEN, "appsecret_proof": PROOF},
                                                 {"access_token": "rotated-token"}]
    graph.clear()
    chat._request("GET", "/me", label="page_id", params={"fields": "id", "access_token": "user-token"})
    assert graph.requests[0].query == {"access_token": "user-token", "fields": "id"}
