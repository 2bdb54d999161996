"""Parsing a webhook body into events: every item of every entry, never only the first.

The core imports no Flask: :func:`parse_body` takes the decoded JSON and returns
:class:`Event` objects, each with a stable key used to recognise redeliveries.

Every item is checked against the shapes Meta documents (types, lengths, ranges) before it is
recorded.  An item that cannot be a valid Messenger event comes out with its
:attr:`Event.problem` set: it is kept for operators with that reason and never handled, and
the rest of the batch goes on.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["Event", "BadWebhook", "parse_body", "rejected_key", "KNOWN_KINDS", "MAX_ID_LENGTH", "MAX_KEY_LENGTH", "MAX_DEPTH"]

logger = logging.getLogger(__name__)

# Checked in this order: the first field an item carries gives its kind.
KNOWN_KINDS = (
    "message", "postback", "reaction", "read", "delivery", "referral", "optin", "account_linking",
    "pass_thread_control", "take_thread_control", "request_thread_control", "app_roles",
    "policy_enforcement", "message_edit", "game_play", "messaging_feedback",
)
_ENVELOPE = {"sender", "recipient", "timestamp"}

#: Longest user, page or app id accepted (``amp_user.user_id`` and ``amp_lease.user_id`` hold 64).
MAX_ID_LENGTH = 64
#: Longest event key (``amp_inbox.event_key``): ``m:<kind>:<mid>``, so a ``mid`` may use what is left.
MAX_KEY_LENGTH = 191
#: Deepest nesting of an item (Meta's are a handful of levels deep).
MAX_DEPTH = 32
#: Largest ``timestamp`` or ``watermark`` (milliseconds; 2**53, the largest exact JSON integer).
MAX_MILLIS = 2 ** 53
_MAX_KIND = 32  # amp_inbox.kind

_STR, _INT, _BOOL, _DICT, _LIST, _ID = "a string", "an integer", "a boolean", "an object", "a list", "an id"
# The fields Meta documents for each kind, with their types; others are let through as sent.
_FIELDS: dict[str, dict[str, str]] = {
    "message": {"mid": _STR, "text": _STR, "quick_reply": _DICT, "attachments": _LIST, "is_echo": _BOOL,
                "reply_to": _DICT, "metadata": _STR, "app_id": _ID},
    "postback": {"mid": _STR, "title": _STR, "payload": _STR, "referral": _DICT},
    "read": {"watermark": _INT},
    "delivery": {"mids": _LIST, "watermark": _INT},
    "reaction": {"mid": _STR, "action": _STR, "reaction": _STR, "emoji": _STR},
    "referral": {"ref": _STR, "source": _STR, "type": _STR, "ad_id": _STR},
    "optin": {"type": _STR, "payload": _STR, "ref": _STR, "user_ref": _STR, "notification_messages_token": _STR},
    "message_edit": {"mid": _STR, "text": _STR, "num_edit": _INT},
    "account_linking": {"status": _STR, "authorization_code": _STR},
    "pass_thread_control": {"new_owner_app_id": _ID, "previous_owner_app_id": _ID, "metadata": _STR},
    "take_thread_control": {"new_owner_app_id": _ID, "previous_owner_app_id": _ID, "metadata": _STR},
    "request_thread_control": {"requested_owner_app_id": _ID, "metadata": _STR},
    "policy_enforcement": {"action": _STR, "reason": _STR},
}
_REQUIRED = {"message": ("mid",), "read": ("watermark",), "delivery": ("watermark",), "message_edit": ("mid",),
             "reaction": ("mid",)}


class BadWebhook(ValueError):
    """The body is not a Messenger page webhook; the route answers 400."""


@dataclass
class Event:
    """One webhook item.

    :ivar kind: ``message``, ``echo``, ``postback``, ``read``, … (``echo`` for ``is_echo`` messages).
    :ivar sender_id: the user's PSID (for legacy opt-ins without sender, ``user_ref:<ref>``).
    :ivar key: a stable identity: the ``mid`` where the item has one, else a hash of the item
        (empty for a rejected item until it is recorded: see :func:`rejected_key`).
    :ivar standby: whether the item came in ``standby[]`` (another app owns the thread).
    :ivar raw: the item as Meta sent it.
    :ivar problem: why the item cannot be a valid Messenger event, or ``None``: such an item is
        recorded as ``rejected`` with this reason and never handled.
    """

    kind: str
    sender_id: str
    recipient_id: str
    page_id: str
    timestamp: int
    key: str
    raw: Any
    standby: bool = False
    problem: str | None = None

    @property
    def mid(self) -> str | None:
        """The message id the item carries, if any."""
        body = self.raw.get("message") or self.raw.get("postback") or {}
        return body.get("mid") if isinstance(body, dict) else None

    def to_json(self) -> str:
        """Serialise for the inbox: text every database stores (a lone surrogate, which UTF-8 cannot
        encode, is written as a ``\\uXXXX`` escape; NUL and other control characters always are)."""
        doc = {"kind": self.kind, "page_id": self.page_id, "standby": self.standby, "raw": self.raw}
        try:
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        except (RecursionError, ValueError):  # only a rejected item can be that deep
            doc["raw"] = "(not kept: nested too deeply)"
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = json.dumps(doc, separators=(",", ":"))
        return text

    @classmethod
    def from_json(cls, key: str, sender_id: str, timestamp: int, data: str) -> "Event":
        """Rebuild an event recorded by :meth:`to_json`."""
        doc = json.loads(data)
        raw = doc["raw"]
        recipient = raw.get("recipient") if isinstance(raw, dict) else None
        recipient_id = recipient.get("id", "") if isinstance(recipient, dict) else ""
        return cls(doc["kind"], sender_id, str(recipient_id), doc["page_id"], timestamp, key, raw, doc["standby"])


def parse_body(body: Any) -> list[Event]:
    """All events of a page webhook body, the invalid ones with their :attr:`~Event.problem` set.

    :raises BadWebhook: when ``body`` is not a page webhook (``{"object": "page", "entry": [...]}``).
    """
    if not isinstance(body, dict) or body.get("object") != "page" or not isinstance(body.get("entry"), list):
        raise BadWebhook('expected a page webhook: {"object": "page", "entry": [...]}')
    return list(_iter_events(body["entry"]))


def _iter_events(entries: list) -> Iterator[Event]:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            yield _rejected(entry, "", False, f"entry {index} is not an object")
            continue
        page_id, problem = _id(entry.get("id", ""), "entry.id", allow_empty=True)
        for field, standby in (("messaging", False), ("standby", True)):
            items = entry.get(field)
            if items is None:
                continue
            if not isinstance(items, list):
                yield _rejected(items, page_id, standby, f"entry {index}: {field} is not a list")
                continue
            for item in items:
                yield _rejected(item, "", standby, problem) if problem else _event(item, page_id, standby)


def _event(item: Any, page_id: str, standby: bool) -> Event:
    if not isinstance(item, dict):
        return _rejected(item, page_id, standby, "the item is not an object")
    kind = next((k for k in KNOWN_KINDS if k in item), None)
    if kind is None:
        kind = next((k for k in item if k not in _ENVELOPE), "unknown")
        if len(kind) > _MAX_KIND or not kind.replace("_", "").isalnum() or not kind.isascii():
            kind = "unknown"
    body = item.get(kind)
    if kind == "message" and isinstance(body, dict) and body.get("is_echo") is True:
        kind = "echo"
    problem = _check(item, kind if kind != "echo" else "message", body)
    sender_id, sender_problem = _sender(item)
    problem = problem or sender_problem
    timestamp: Any = item.get("timestamp")  # an int once _millis finds no problem with it
    if problem is None:
        problem = _millis(timestamp, "timestamp")
    if problem is None:
        recipient = item.get("recipient")
        if recipient is not None and not isinstance(recipient, dict):
            problem = "recipient is not an object"
        else:
            recipient_id, problem = _id((recipient or {}).get("id", ""), "recipient.id", allow_empty=True)
    if problem is None:
        problem = _depth_problem(item)
    if problem is None:
        key = _key(kind, item, page_id, standby)
        if not key.isprintable():
            problem = "the mid holds control characters or invalid Unicode"
        elif len(key) > MAX_KEY_LENGTH:
            problem = f"the mid is longer than {MAX_KEY_LENGTH - len(f'm:{kind}:')} characters"
    if problem is not None:
        return _rejected(item, page_id, standby, problem, kind, sender_id, timestamp)
    return Event(kind, sender_id, recipient_id, page_id, timestamp, key, item, standby)


def _check(item: dict, kind: str, body: Any) -> str | None:
    """What is wrong with the fields of the item's ``kind`` object, if anything."""
    fields = _FIELDS.get(kind)
    if fields is None:
        return None  # unknown or undocumented kind: acknowledged as sent
    if not isinstance(body, dict):
        return f"{kind} is not an object"
    for name in _REQUIRED.get(kind, ()):
        if name not in body:
            return f"{kind}.{name} is missing"
    for name, expected in fields.items():
        value = body.get(name)
        if value is None:
            continue
        if expected == _STR and not isinstance(value, str):
            return f"{kind}.{name} is not a string"
        if expected == _BOOL and not isinstance(value, bool):
            return f"{kind}.{name} is not a boolean"
        if expected == _DICT and not isinstance(value, dict):
            return f"{kind}.{name} is not an object"
        if expected == _LIST and not isinstance(value, list):
            return f"{kind}.{name} is not a list"
        if expected == _INT:
            problem = _millis(value, f"{kind}.{name}")
            if problem:
                return problem
        if expected == _ID:
            problem = _id(value, f"{kind}.{name}", allow_empty=True)[1]
            if problem:
                return problem
    if kind == "message":
        return _message_problem(body)
    if kind == "delivery" and not all(isinstance(mid, str) for mid in body.get("mids") or ()):
        return "delivery.mids holds something else than strings"
    return None


def _message_problem(message: dict) -> str | None:
    quick = message.get("quick_reply")
    if quick is not None and quick.get("payload") is not None and not isinstance(quick["payload"], str):
        return "message.quick_reply.payload is not a string"
    for attachment in message.get("attachments") or ():
        if not isinstance(attachment, dict):
            return "message.attachments holds something else than objects"
        payload = attachment.get("payload")
        if payload is None:
            continue
        if not isinstance(payload, dict):
            return "an attachment's payload is not an object"
        if payload.get("url") is not None and not isinstance(payload["url"], str):
            return "an attachment's payload.url is not a string"
    return None


def _sender(item: dict) -> tuple[str, str | None]:
    """The user's id (``user_ref:<ref>`` for a legacy opt-in without sender) and what is wrong with it."""
    sender = item.get("sender")
    if sender is None:
        optin = item.get("optin")
        if isinstance(optin, dict) and optin.get("user_ref"):
            user_id, problem = _id(optin["user_ref"], "optin.user_ref")
            user_id = f"user_ref:{user_id}"
            if problem is None and len(user_id) > MAX_ID_LENGTH:
                problem = f"optin.user_ref is longer than {MAX_ID_LENGTH - len('user_ref:')} characters"
            return (user_id, None) if problem is None else ("", problem)
        return "", "sender is missing"
    if not isinstance(sender, dict):
        return "", "sender is not an object"
    if sender.get("id") is None and sender.get("user_ref") is not None:
        return _id(sender["user_ref"], "sender.user_ref")
    return _id(sender.get("id"), "sender.id")


def _id(value: Any, what: str, allow_empty: bool = False) -> tuple[str, str | None]:
    """``value`` as an id string, and what is wrong with it (Meta's ids are strings of digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value) if value >= 0 else "-"
    if value is None:
        return "", None if allow_empty else f"{what} is missing"
    if not isinstance(value, str):
        return "", f"{what} is not a string"
    if not value:
        return "", None if allow_empty else f"{what} is missing"
    if len(value) > MAX_ID_LENGTH:
        return "", f"{what} is longer than {MAX_ID_LENGTH} characters"
    if not value.isprintable():  # control characters (NUL, …), lone surrogates, line separators
        return "", f"{what} holds control characters or invalid Unicode"
    return value, None


def _millis(value: Any, what: str) -> str | None:
    if value is None:
        return f"{what} is missing"
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{what} is not an integer"
    if not 0 <= value <= MAX_MILLIS:
        return f"{what} is out of range (0 to 2**53 milliseconds)"
    return None


def _depth_problem(item: Any) -> str | None:
    stack = [(item, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"the item is nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return None


def _rejected(item: Any, page_id: str, standby: bool, problem: str, kind: str = "unknown",
              sender_id: str = "", timestamp: Any = 0) -> Event:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_MILLIS:
        timestamp = 0
    # The key is computed when (and if) the item is recorded: a body of a million junk items
    # costs no million hashes (only the first ones are kept).
    return Event(kind, sender_id, "", page_id, timestamp, "", item, standby, problem)


def rejected_key(event: Event) -> str:
    """The key a rejected item is kept under: a hash of the item, so a redelivery is kept once."""
    try:
        text = json.dumps(event.raw, sort_keys=True, separators=(",", ":"))
    except (RecursionError, ValueError):
        text = f"{type(event.raw).__name__} nested too deeply"
    digest = hashlib.sha256(f"{event.page_id}:{int(event.standby)}:{text}".encode()).hexdigest()
    return f"r:{digest[:48]}"


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
