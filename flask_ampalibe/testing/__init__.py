"""Tools for testing bots built with flask_ampalibe: a fake Graph API, a webhook client, a bot tester.

They exercise the real route: bodies are signed like Meta signs them, batched, redelivered or
out of order as a test needs, and the fake Graph API records what the bot sent (and can fail).
:class:`BotTester` bundles them with readable assertions; the pytest plugin's ``bot_tester``
fixture makes one per test.
"""
from __future__ import annotations

from .assertions import (
    assert_attachment, assert_buttons, assert_no_reply, assert_quick_replies, assert_replied, describe,
)
from .graph import FakeGraph, RecordedRequest
from .kit import BotTester, BotTesters, bot_config
from .webhook import (
    PAGE_ID, WebhookClient, attachment_event, delivery_event, echo_event, handover_event, message_event,
    optin_event, page_body, postback_event, quick_reply_event, reaction_event, read_event, referral_event,
)

__all__ = [
    "FakeGraph", "RecordedRequest", "WebhookClient", "PAGE_ID", "page_body", "message_event", "postback_event",
    "quick_reply_event", "attachment_event", "read_event", "delivery_event", "reaction_event", "optin_event",
    "referral_event", "echo_event", "handover_event", "BotTester", "BotTesters", "bot_config", "assert_replied",
    "assert_no_reply", "assert_quick_replies", "assert_buttons", "assert_attachment", "describe",
]
