"""Posting Messenger webhook events to a bot through its real route, signed like Meta signs them.

Example::

    hook = WebhookClient(app.test_client(), secret="app-secret")
    hook.send_text("1234", "hello")            # one message event
    hook.post(message_event("1", "a"), message_event("2", "b"))   # one batched POST
"""
from __future__ import annotations

import itertools
import json
import time
from typing import Any

from ..signature import HEADER, generate_signature

__all__ = [
    "WebhookClient", "page_body", "message_event", "postback_event", "quick_reply_event", "attachment_event",
    "read_event", "delivery_event", "reaction_event", "optin_event", "referral_event", "echo_event",
    "handover_event", "PAGE_ID",
]

PAGE_ID = "100000000000001"
_counter = itertools.count(1)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _envelope(sender_id: str, timestamp: int | None, **body: Any) -> dict:
    return {"sender": {"id": str(sender_id)}, "recipient": {"id": PAGE_ID},
            "timestamp": timestamp if timestamp is not None else _now_ms(), **body}


def _mid() -> str:
    return f"m_test_{time.time_ns()}_{next(_counter)}"


def message_event(sender_id: str, text: str, *, mid: str | None = None, timestamp: int | None = None) -> dict:
    """A text message from ``sender_id``."""
    return _envelope(sender_id, timestamp, message={"mid": mid or _mid(), "text": text})


def quick_reply_event(sender_id: str, payload: Any, text: str = "", *, mid: str | None = None,
                      timestamp: int | None = None) -> dict:
    """A tap on a quick reply whose payload is ``payload`` (a string or a ``Payload``)."""
    return _envelope(sender_id, timestamp, message={"mid": mid or _mid(), "text": text or str(payload)[:20],
                                                    "quick_reply": {"payload": str(payload)}})


def postback_event(sender_id: str, payload: Any, title: str = "Button", *, mid: str | None = None,
                   timestamp: int | None = None) -> dict:
    """A tap on a postback button (or Get Started, or a persistent-menu item)."""
    return _envelope(sender_id, timestamp, postback={"mid": mid or _mid(), "title": title, "payload": str(payload)})


def attachment_event(sender_id: str, urls: list[str], kind: str = "image", *, mid: str | None = None,
                     timestamp: int | None = None) -> dict:
    """A message with attachments at ``urls``."""
    attachments = [{"type": kind, "payload": {"url": url}} for url in urls]
    return _envelope(sender_id, timestamp, message={"mid": mid or _mid(), "attachments": attachments})


def read_event(sender_id: str, watermark: int | None = None, *, timestamp: int | None = None) -> dict:
    """The user read the conversation up to ``watermark``."""
    return _envelope(sender_id, timestamp, read={"watermark": watermark or _now_ms()})


def delivery_event(sender_id: str, mids: list[str] | None = None, watermark: int | None = None, *,
                   timestamp: int | None = None) -> dict:
    """Messages were delivered to the user."""
    return _envelope(sender_id, timestamp, delivery={"mids": mids or [], "watermark": watermark or _now_ms()})


def reaction_event(sender_id: str, mid: str, reaction: str = "love", emoji: str = "\u2764",
                   action: str = "react", *, timestamp: int | None = None) -> dict:
    """The user reacted to message ``mid``."""
    return _envelope(sender_id, timestamp, reaction={"reaction": reaction, "emoji": emoji, "action": action,
                                                     "mid": mid})


def optin_event(sender_id: str, payload: str = "", token: str = "token-1", *, timestamp: int | None = None) -> dict:
    """The user accepted a notification request; the token lets the page message them later."""
    return _envelope(sender_id, timestamp, optin={"type": "notification_messages", "payload": payload,
                                                  "notification_messages_token": token,
                                                  "notification_messages_frequency": "DAILY"})


def referral_event(sender_id: str, ref: str, source: str = "SHORTLINK", *, timestamp: int | None = None) -> dict:
    """The user came through an m.me link or an ad with ``ref``."""
    return _envelope(sender_id, timestamp, referral={"ref": ref, "source": source, "type": "OPEN_THREAD"})


def echo_event(recipient_id: str, text: str, *, mid: str | None = None, timestamp: int | None = None) -> dict:
    """The page's own message echoed back (sender is the page)."""
    item = _envelope(PAGE_ID, timestamp, message={"mid": mid or _mid(), "is_echo": True, "app_id": 1, "text": text})
    item["recipient"] = {"id": str(recipient_id)}
    return item


def handover_event(sender_id: str, kind: str = "pass_thread_control", *, timestamp: int | None = None,
                   **fields: Any) -> dict:
    """A handover protocol event (``pass_thread_control``, ``take_thread_control``, …)."""
    return _envelope(sender_id, timestamp, **{kind: fields or {"new_owner_app_id": "123", "metadata": ""}})


def page_body(*items: dict, standby: tuple[dict, ...] = (), page_id: str = PAGE_ID) -> dict:
    """A webhook body with ``items`` in one entry (and ``standby`` items, if any)."""
    entry: dict[str, Any] = {"id": page_id, "time": _now_ms(), "messaging": list(items)}
    if standby:
        entry["standby"] = list(standby)
    return {"object": "page", "entry": [entry]}


class WebhookClient:
    """Posts signed webhook bodies to a bot's real route.

    :param client: a Flask test client (``app.test_client()``) or anything with a compatible
        ``post(path, data=..., headers=...)``.
    :param secret: the app secret (``AMPALIBE_APP_SECRET``); ``None`` posts unsigned bodies.
    :param path: the webhook URL (``'/'`` unless ``AMPALIBE_URL_PREFIX`` is set).
    """

    def __init__(self, client: Any, secret: str | None, path: str = "/") -> None:
        self.client = client
        self.secret = secret
        self.path = path

    def post_body(self, body: Any, *, sign: bool = True, signature: str | None = None) -> Any:
        """Post ``body`` (a dict, or raw ``bytes``) and return the response."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[HEADER] = signature
        elif sign and self.secret:
            headers[HEADER] = generate_signature(self.secret, raw)
        return self.client.post(self.path, data=raw, headers=headers)

    def post(self, *items: dict, standby: tuple[dict, ...] = ()) -> Any:
        """Post ``items`` as one batched, signed webhook body."""
        return self.post_body(page_body(*items, standby=standby))

    def send_text(self, sender_id: str, text: str, **kw: Any) -> Any:
        """Post a text message from ``sender_id``."""
        return self.post(message_event(sender_id, text, **kw))

    def send_quick_reply(self, sender_id: str, payload: Any, text: str = "", **kw: Any) -> Any:
        """Post a quick-reply tap."""
        return self.post(quick_reply_event(sender_id, payload, text, **kw))

    def send_postback(self, sender_id: str, payload: Any, title: str = "Button", **kw: Any) -> Any:
        """Post a postback tap."""
        return self.post(postback_event(sender_id, payload, title, **kw))

    def send_attachments(self, sender_id: str, urls: list[str], kind: str = "image", **kw: Any) -> Any:
        """Post a message with attachments."""
        return self.post(attachment_event(sender_id, urls, kind, **kw))
