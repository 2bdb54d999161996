"""Every code example of the Ampalibe 1.0.4 docs, run through the real webhook route.

Each bot lives in tests/spec_bots/<section>/ exactly as the docs print it (only the import
lines changed) and is loaded as a project with the scaffold's ``conf.py``.  The assertions are
on the requests the fake Graph API received.
"""
from __future__ import annotations

import json

import pytest

from flask_ampalibe.testing import postback_event, quick_reply_event
from conftest import TOKEN

USER = "1555554455"


def _texts(bot, user=USER):
    return bot.graph.sent_texts(user)


def test_1_1_1_hello_world_exact_requests(load_bot):
    bot = load_bot("s1_1_1")
    response = bot.hook.send_text(USER, "hi there")
    assert response.status_code == 200
    sends = bot.graph.sends(USER)
    assert [r.method for r in sends] == ["POST"] * 3
    assert {r.path for r in sends} == {"/v24.0/me/messages"}
    assert all(r.query["access_token"] == TOKEN for r in sends)
    assert sends[0].json == {"recipient": {"id": USER}, "messaging_type": "RESPONSE",
                             "message": {"text": "Hello world"}}
    assert _texts(bot) == ["Hello world", "This is your message: hi there",
                           f"and this is your facebook id: {USER}"]


def test_1_1_2_action_asks_then_greets(load_bot):
    bot = load_bot("s1_1_2")
    bot.hook.send_text(USER, "hello")
    assert bot.bot.query.get_action(USER) == "/get_name"
    bot.hook.send_text(USER, "Rivo Lalaina")
    assert _texts(bot) == ["Enter your name", "Hello Rivo Lalaina"]
    assert bot.bot.query.get_action(USER) is None
    bot.hook.send_text(USER, "again")
    assert _texts(bot)[-1] == "Enter your name"


def test_1_1_3_temporary_data(load_bot):
    bot = load_bot("s1_1_3")
    bot.hook.send_text(USER, "start")
    bot.hook.send_text(USER, "me@example.com")
    assert bot.bot.query.get_temp(USER, "mail") == "me@example.com"
    bot.hook.send_text(USER, "s3cret")
    assert _texts(bot) == ["Enter your mail", "Enter your password",
                           "your mail and your password are me@example.com s3cret"]
    assert bot.bot.query.get_temp(USER, "mail") is None


@pytest.mark.parametrize("section, route", [("s1_1_4", "/membre"), ("s1_3_5", "/member")])
def test_payload_quick_replies_round_trip(load_bot, section, route):
    bot = load_bot(section)
    bot.hook.send_text(USER, "who")
    (send,) = bot.graph.sends(USER)
    message = send.json["message"]
    assert message["text"] == "Who?"
    titles = [q["title"] for q in message["quick_replies"]]
    assert titles == ["Angela", "Rivo"]
    payloads = [q["payload"] for q in message["quick_replies"]]
    assert all(p.startswith(route + " ") and len(p) <= 1000 for p in payloads)
    assert "Angela" not in payloads[0]  # signed and encoded, not readable key=value text

    bot.hook.post(quick_reply_event(USER, payloads[0], "Angela"))
    bot.hook.post(quick_reply_event(USER, payloads[1], "Rivo"))
    assert _texts(bot) == ["Who?", "Hello Angela", "your ref is 2016-sac", "Hello Rivo"]


def test_1_1_5_template_pages_and_typed_payload(load_bot):
    bot = load_bot("s1_1_5")
    bot.hook.send_text(USER, "list")
    (first,) = bot.graph.sends(USER)
    payload = first.json["message"]["attachment"]["payload"]
    assert payload["template_type"] == "generic"
    assert [e["title"] for e in payload["elements"]] == [f"item n°{i}" for i in range(1, 11)]
    button_payload = payload["elements"][2]["buttons"][0]["payload"]

    bot.hook.post(postback_event(USER, button_payload, "Get item"))
    assert _texts(bot)[-1] == "item n°3 selected"  # id_item came back as the int 3

    more = first.json["message"]["quick_replies"]
    assert len(more) == 1
    bot.hook.post(quick_reply_event(USER, more[0]["payload"], more[0]["title"]))
    second = bot.graph.sends(USER)[-1].json["message"]["attachment"]["payload"]["elements"]
    assert [e["title"] for e in second] == [f"item n°{i}" for i in range(11, 21)]


def test_1_3_1_minimal_application(load_bot):
    bot = load_bot("s1_3_1")
    bot.hook.send_text(USER, "anything")
    assert _texts(bot) == ["Hello, Ampalibe"]


def test_1_3_2_commands_strip_their_word(load_bot, capsys):
    bot = load_bot("s1_3_2")
    bot.hook.send_text(USER, "/eat 1 jackfruit")
    bot.hook.send_text(USER, "/drink_a_jackfruit_juice")
    assert capsys.readouterr().out.splitlines() == [USER, "1 jackfruit", USER, ""]
    assert _texts(bot) == []
    bot.hook.send_text(USER, "/eating is not /eat")
    assert _texts(bot) == ["Hello, Ampalibe"]


@pytest.mark.parametrize("number, answer", [("42", "even number"), ("7", "odd number"),
                                            ("seven", "seven is not a number")])
def test_1_3_3_action_even_odd(load_bot, number, answer):
    bot = load_bot("s1_3_3")
    bot.hook.send_text(USER, "hi")
    bot.hook.send_text(USER, number)
    assert _texts(bot) == ["Enter a number", answer]


def test_1_3_6_file_url_from_public_assets(load_bot):
    bot = load_bot("s1_3_6")
    bot.hook.send_text(USER, "logo")
    (send,) = bot.graph.sends(USER)
    attachment = send.json["message"]["attachment"]
    assert attachment["type"] == "image"
    assert attachment["payload"]["url"] == "https://bot.example.test/asset/iTeamS.png"
    client = bot.app.test_client()
    with client.get("/asset/iTeamS.png") as served:
        assert served.status_code == 200 and served.data.startswith(b"\x89PNG")
    assert client.get("/asset/../private/keys.txt").status_code == 404


def test_1_5_model_subclass_reads_amp_user(load_bot, capsys):
    bot = load_bot("s1_5")
    bot.hook.send_text(USER, "first")
    bot.hook.send_text("42", "second")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    # the second call sees both users' rows
    assert USER in lines[1] and "'42'" in lines[1]


def test_1_6_2_structure_across_modules_and_class_bodies(load_bot):
    bot = load_bot("s1_6_2")
    import user  # the project's own module, loaded by core
    assert user.bot is bot.bot  # init() in two modules gives one bot
    bot.hook.send_text(USER, "hello")
    (button,) = bot.graph.sends(USER)
    assert button.json["message"]["attachment"]["payload"]["buttons"][0]["payload"] == "/login/admin"
    bot.hook.post(postback_event(USER, "/login/admin", "Dashboard"))
    bot.hook.send_text(USER, "root")
    assert _texts(bot) == ["Enter your username", "OK root"]
    assert bot.bot.query.get_action(USER) is None


def test_1_7_custom_endpoint(load_bot):
    bot = load_bot("s1_7")
    assert bot.app.test_client().get("/test").data == b"Hello, test"
    bot.hook.send_text(USER, "x")
    assert _texts(bot) == ["Hello, Ampalibe"]


def test_spec_bot_answers_verification_from_env(load_bot):
    bot = load_bot("s1_3_1")
    client = bot.app.test_client()
    ok = client.get("/", query_string={"hub.mode": "subscribe", "hub.verify_token": "test-verify-token",
                                       "hub.challenge": "1158201444"})
    assert (ok.status_code, ok.data, ok.mimetype) == (200, b"1158201444", "text/plain")


def test_spec_bot_rejects_unsigned_posts(load_bot):
    bot = load_bot("s1_3_1")
    body = json.dumps({"object": "page", "entry": []}).encode()
    assert bot.app.test_client().post("/", data=body, content_type="application/json").status_code == 403
