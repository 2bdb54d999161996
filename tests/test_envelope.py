"""The Send API envelope (flask_ampalibe.envelope) and Messenger's constructor over GraphClient's."""
from __future__ import annotations

import pytest

from flask_ampalibe.envelope import envelope, extra_fields
from flask_ampalibe.graph import GraphClient
from flask_ampalibe.messenger import Messenger
from flask_ampalibe.page import PageClient


def test_a_reply_a_tagged_send_and_a_notification() -> None:
    assert envelope("42", {}, "send_text") == {"recipient": {"id": "42"}, "messaging_type": "RESPONSE"}
    assert envelope(42, {"tag": "ACCOUNT_UPDATE", "persona_id": 7}, "send_text") == {
        "recipient": {"id": "42"}, "messaging_type": "MESSAGE_TAG", "tag": "ACCOUNT_UPDATE", "persona_id": "7"}
    assert envelope(None, {"notification_messages_token": "NMT"}, "send_text") == {
        "recipient": {"notification_messages_token": "NMT"}}
    assert envelope("42", {"metadata": "order-7"}, "send_text")["metadata"] == "order-7"  # passed through


def test_misspelt_or_built_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="did you mean 'messaging_type'"):
        envelope("42", {"messaging_typ": "RESPONSE"}, "send_text")
    with pytest.raises(TypeError, match="send_text\\(\\) builds 'recipient' itself"):
        extra_fields({"recipient": {}}, {"tag"}, "send_text", ("recipient", "message"))


def test_messenger_passes_the_transport_options_to_graph_client() -> None:
    chat = Messenger("token", graph_url="http://graph.test/", api_version="15.0", timeout=3, max_retries=1,
                     pool_maxsize=5)
    assert isinstance(chat, PageClient) and isinstance(chat, GraphClient)
    assert chat.base_url == "http://graph.test/v15.0"
    assert (chat.timeout, chat.max_retries, chat.pool_maxsize) == (3, 1, 5)
    plain = Messenger("token")
    assert plain.base_url == "https://graph.facebook.com/v24.0"  # GraphClient's defaults
    plain.close()
    with pytest.raises(TypeError, match="graph_ur"):
        Messenger("token", graph_ur="http://graph.test")
    chat.close()
