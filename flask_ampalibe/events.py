"""Parsing a webhook body into events: every item of every entry, never only the first.

The core imports no Flask: :func:`parse_body` takes the decoded JSON and returns
:class:`Event` objects, each with a stable key used to recognise redeliveries.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["Event", "BadWebhook", "parse_body", "KNOWN_KINDS"]

logger = logging.getLogger(__name__)

# Checked in this order: the first field an item carries gives its kind.
KNOWN_KINDS = (
    "message", "postback", "reaction", "read", "delivery", "referral", "optin", "account_linking",
    "pass_thread_control", "take_thread_control", "request_thread_control", "app_roles",
    "policy_enforcement", "message_edit", "game_play", "messaging_feedback",
)
_ENVELOPE = {"sender", "recipient", "timestamp"}


class BadWebhook(ValueError):
    """The body is not a Messenger page webhook; the route answers 400."""


@dataclass
class Event:
    """One webhook item.

    :ivar kind: ``message``, ``echo``, ``postback``, ``read``, … (``echo`` for ``is_echo`` messages).
    :ivar sender_id: the user's PSID (for legacy opt-ins without sender, ``user_ref:<ref>``).
    :ivar key: a stable identity: the ``mid`` where the item has one, else a hash of the item.
    :ivar standby: whether the item came in ``standby[]`` (another app owns the thread).
    :ivar raw: the item as Meta sent it.
    """

    kind: str
    sender_id: str
    recipient_id: str
    page_id: str
    timestamp: int
    key: str
    raw: dict
    standby: bool = False

    @property
    def mid(self) -> str | None:
        """The message id the item carries, if any."""
        body = self.raw.get("message") or self.raw.get("postback") or {}
        return body.get("mid") if isinstance(body, dict) else None

    def to_json(self) -> str:
        """Serialise for the inbox."""
        return json.dumps({"kind": self.kind, "page_id": self.page_id, "standby": self.standby, "raw": self.raw},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, key: str, sender_id: str, timestamp: int, data: str) -> "Event":
        """Rebuild an event recorded by :meth:`to_json`."""
        doc = json.loads(data)
        raw = doc["raw"]
        recipient = (raw.get("recipient") or {}).get("id", "")
        return cls(doc["kind"], sender_id, str(recipient), doc["page_id"], timestamp, key, raw, doc["standby"])


def parse_body(body: Any) -> list[Event]:
    """All events of a page webhook body.

    :raises BadWebhook: when ``body`` is not a page webhook (``{"object": "page", "entry": [...]}``).
    """
    if not isinstance(body, dict) or body.get("object") != "page" or not isinstance(body.get("entry"), list):
        raise BadWebhook('expected a page webhook: {"object": "page", "entry": [...]}')
    return list(_iter_events(body["entry"]))


def _iter_events(entries: list) -> Iterator[Event]:
    for entry in entries:
        if not isinstance(entry, dict):
            logger.warning("webhook entry skipped: not an object")
            continue
        page_id = str(entry.get("id", ""))
        for field, standby in (("messaging", False), ("standby", True)):
            items = entry.get(field)
            if items is None:
                continue
            if not isinstance(items, list):
                logger.warning("webhook entry %s: %s is not a list; skipped", page_id, field)
                continue
            for item in items:
                event = _event(item, page_id, standby)
                if event is not None:
                    yield event


def _event(item: Any, page_id: str, standby: bool) -> Event | None:
    if not isinstance(item, dict):
        logger.warning("webhook item skipped: not an object")
        return None
    kind = next((k for k in KNOWN_KINDS if k in item), None)
    if kind is None:
        kind = next((k for k in item if k not in _ENVELOPE), "unknown")
    if kind == "message" and isinstance(item["message"], dict) and item["message"].get("is_echo"):
        kind = "echo"
    sender = item.get("sender") if isinstance(item.get("sender"), dict) else {}
    recipient = item.get("recipient") if isinstance(item.get("recipient"), dict) else {}
    sender_id = sender.get("id") or sender.get("user_ref")
    if sender_id is None:
        optin = item.get("optin") if isinstance(item.get("optin"), dict) else {}
        sender_id = f"user_ref:{optin['user_ref']}" if optin.get("user_ref") else f"page:{page_id}"
    try:
        timestamp = int(item.get("timestamp") or 0)
    except (TypeError, ValueError):
        timestamp = 0
    return Event(kind, str(sender_id), str(recipient.get("id", "")), page_id, timestamp,
                 _key(kind, item, page_id, standby), item, standby)


def _key(kind: str, item: dict, page_id: str, standby: bool) -> str:
    body = item.get(kind if kind != "echo" else "message")
    mid = body.get("mid") if isinstance(body, dict) else None
    prefix = "s" if standby else "m"
    if mid and kind in ("message", "echo", "postback", "message_edit"):
        return f"{prefix}:{kind}:{mid}"
    # No mid of its own (read, delivery, optin, referral, reaction, …): a hash of the item is stable
    # across Meta's redeliveries, which resend the same item.
    digest = hashlib.sha256(json.dumps(item, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{prefix}:{kind}:{page_id}:{digest[:40]}"
