"""Readable assertions on what a bot sent to the fake Graph API.

Each takes the :class:`~flask_ampalibe.testing.FakeGraph` and the user's PSID, and looks at the
Send API calls to that user from request number ``since`` on (``0``: all of them; take
``len(graph.requests)`` before posting an event to look only at its replies).  A failure says
what the bot sent instead::

    assert_replied(graph, "1234", "Hello")
    # AssertionError: expected the bot to reply to 1234 with:
    #     'Hello'
    # it sent:
    #     1. text 'Hi there' [quick replies: Catalog | Cart]

:class:`~flask_ampalibe.testing.BotTester` offers the same checks as methods, limited to the
replies to the last event it posted.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from .graph import FakeGraph

__all__ = [
    "messages", "recipient_of", "text_of", "describe", "assert_replied", "assert_no_reply", "assert_quick_replies",
    "assert_buttons", "assert_attachment",
]

_RECIPIENT_KEYS = ("id", "notification_messages_token", "one_time_notif_token", "user_ref")


def recipient_of(request: Any) -> str | None:
    """Who a Send API call was addressed to: the PSID, else the notification token or ``user_ref``."""
    data = request.json if isinstance(request.json, dict) else {}
    recipient = data.get("recipient")
    if recipient is None and "recipient" in request.form:
        recipient = json.loads(request.form["recipient"])
    if isinstance(recipient, dict):
        for key in _RECIPIENT_KEYS:
            if recipient.get(key):
                return str(recipient[key])
    return None


def messages(graph: "FakeGraph", user: str, since: int = 0) -> list[dict]:
    """The ``message`` objects sent to ``user`` from request number ``since`` on, in order.

    :param user: a PSID, or the notification token (or ``user_ref``) a send was addressed to.
    """
    requests = graph.requests[since:]  # a slice: safe while the fake records from another thread
    return [r.message for r in requests
            if r.path.endswith("/messages") and r.message is not None and recipient_of(r) == str(user)]


def text_of(message: dict) -> str | None:
    """The text a user reads in ``message``: its ``text``, or a button template's text."""
    if "text" in message:
        return message["text"]
    payload = (message.get("attachment") or {}).get("payload") or {}
    if isinstance(payload, dict) and payload.get("template_type") == "button":
        return payload.get("text")
    return None


def _quick_titles(message: dict) -> list[str]:
    return [q.get("title") or q.get("content_type", "?") for q in message.get("quick_replies") or ()]


def _buttons(message: dict, card: int | None) -> list[dict] | None:
    attachment = message.get("attachment") or {}
    payload = attachment.get("payload") if attachment.get("type") == "template" else None
    if not isinstance(payload, dict):
        return None
    if "elements" in payload:
        elements = payload["elements"] if card is None else payload["elements"][card:card + 1]
        return [b for element in elements for b in element.get("buttons") or ()]
    return list(payload.get("buttons") or ())


def _one(message: dict) -> str:
    parts = []
    attachment = message.get("attachment") or {}
    if "text" in message:
        parts.append(f"text {message['text']!r}")
    elif attachment.get("type") == "template":
        payload = attachment.get("payload") or {}
        kind = payload.get("template_type", "?")
        if "elements" in payload:
            titles = [e.get("title") for e in payload["elements"]]
            parts.append(f"{kind} template, {len(titles)} card(s) {titles!r}")
        else:
            parts.append(f"{kind} template {payload.get('text')!r}")
        buttons = _buttons(message, None)
        if buttons:
            parts.append("[buttons: " + " | ".join(str(b.get("title")) for b in buttons) + "]")
    elif attachment:
        payload = attachment.get("payload") or {}
        where = payload.get("url") or payload.get("attachment_id") or "(uploaded file)"
        parts.append(f"{attachment.get('type')} {where}")
    else:
        parts.append(repr(message))
    if message.get("quick_replies"):
        parts.append("[quick replies: " + " | ".join(_quick_titles(message)) + "]")
    return " ".join(parts)


def describe(sent: Iterable[dict]) -> str:
    """A numbered, one-line-per-message listing of ``sent`` (for failure messages)."""
    lines = [f"    {i}. {_one(m)}" for i, m in enumerate(sent, 1)]
    return "\n".join(lines) if lines else "    (nothing)"


def _same(expected: Any, actual: str | None) -> bool:
    if isinstance(expected, re.Pattern):
        return actual is not None and expected.fullmatch(actual) is not None
    return expected == actual


def _show(expected: Any) -> str:
    return f"/{expected.pattern}/" if isinstance(expected, re.Pattern) else repr(expected)


def check_replied(sent: Sequence[dict], user: str, texts: Sequence[Any]) -> None:
    """:func:`assert_replied` on a list of messages already selected."""
    if not texts:
        if not sent:
            raise AssertionError(f"expected the bot to reply to {user}; it sent nothing")
        return
    got = [t for t in (text_of(m) for m in sent) if t is not None]
    if len(got) != len(texts) or not all(_same(e, a) for e, a in zip(texts, got)):
        wanted = "\n".join(f"    {_show(t)}" for t in texts)
        raise AssertionError(f"expected the bot to reply to {user} with:\n{wanted}\nit sent:\n{describe(sent)}")


def assert_replied(graph: "FakeGraph", user: str, *texts: "str | re.Pattern[str]", since: int = 0) -> None:
    """The texts the bot sent to ``user`` are exactly ``texts``, in this order.

    Texts are those of text messages and of button templates; images and other templates are
    not counted.  An ``re.Pattern`` must match a whole text.  With no ``texts``: the bot sent
    ``user`` something.
    """
    check_replied(messages(graph, user, since), str(user), texts)


def check_no_reply(sent: Sequence[dict], user: str) -> None:
    """:func:`assert_no_reply` on a list of messages already selected."""
    if sent:
        raise AssertionError(f"expected no reply to {user}; the bot sent:\n{describe(sent)}")


def assert_no_reply(graph: "FakeGraph", user: str, since: int = 0) -> None:
    """The bot sent ``user`` no message (sender actions such as ``mark_seen`` do not count)."""
    check_no_reply(messages(graph, user, since), str(user))


def check_quick_replies(sent: Sequence[dict], user: str, titles: Sequence[str]) -> None:
    """:func:`assert_quick_replies` on a list of messages already selected."""
    last = next((m for m in reversed(sent) if m.get("quick_replies")), None)
    if last is None or _quick_titles(last) != list(titles):
        raise AssertionError(
            f"expected the bot to offer {user} the quick replies {list(titles)!r}; it sent:\n{describe(sent)}"
        )


def assert_quick_replies(graph: "FakeGraph", user: str, titles: Sequence[str], since: int = 0) -> None:
    """The last message with quick replies sent to ``user`` offers exactly ``titles``, in order."""
    check_quick_replies(messages(graph, user, since), str(user), titles)


def check_buttons(sent: Sequence[dict], user: str, titles: Sequence[str], card: int | None = None) -> None:
    """:func:`assert_buttons` on a list of messages already selected."""
    for message in reversed(sent):
        buttons = _buttons(message, card)
        if buttons is not None:
            if [b.get("title") for b in buttons] == list(titles):
                return
            break
    where = "" if card is None else f" on card {card}"
    raise AssertionError(f"expected the bot to show {user} the buttons {list(titles)!r}{where}; "
                         f"it sent:\n{describe(sent)}")


def assert_buttons(graph: "FakeGraph", user: str, titles: Sequence[str], card: int | None = None,
                   since: int = 0) -> None:
    """The last template sent to ``user`` has exactly these button titles.

    :param card: for a generic template, only that card's buttons (default: every card's, in order).
    """
    check_buttons(messages(graph, user, since), str(user), titles, card)


def check_attachment(sent: Sequence[dict], user: str, kind: str | None = None, url: str | None = None) -> dict:
    """:func:`assert_attachment` on a list of messages already selected."""
    for message in reversed(sent):
        attachment = message.get("attachment") or {}
        if not attachment or attachment.get("type") == "template":
            continue
        if (kind is None or attachment.get("type") == kind) and \
                (url is None or (attachment.get("payload") or {}).get("url") == url):
            return attachment
    what = " ".join(x for x in (kind or "an attachment", url and f"from {url}") if x)
    raise AssertionError(f"expected the bot to send {user} {what}; it sent:\n{describe(sent)}")


def assert_attachment(graph: "FakeGraph", user: str, kind: str | None = None, url: str | None = None,
                      since: int = 0) -> dict:
    """The bot sent ``user`` a file (``image``, ``video``, ``audio``, ``file``), by ``url`` if given.

    :returns: the ``attachment`` object, for further checks.
    """
    return check_attachment(messages(graph, user, since), str(user), kind, url)
