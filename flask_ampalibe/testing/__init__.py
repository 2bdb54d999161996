"""Tools for testing bots built with flask_ampalibe: a fake Graph API and a webhook client.

They exercise the real route: bodies are signed like Meta signs them, batched, redelivered or
out of order as a test needs, and the fake Graph API records what the bot sent.
"""
from __future__ import annotations

from .graph import FakeGraph, RecordedRequest
from .webhook import (
    PAGE_ID, WebhookClient, attachment_event, delivery_event, echo_event, handover_event, message_event,
    optin_event, page_body, postback_event, quick_reply_event, reaction_event, read_event, referral_event,
)

__all__ = [
    "FakeGraph", "RecordedRequest", "WebhookClient", "PAGE_ID", "page_body", "message_event", "postback_event",
    "quick_reply_event", "attachment_event", "read_event", "delivery_event", "reaction_event", "optin_event",
    "referral_event", "echo_event", "handover_event",
]
