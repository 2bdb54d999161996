"""Ampalibe 1.1.9's constants, under the names its bots import (``from ampalibe import Action``).

Each is a ``str`` enumeration: a member compares equal to its text and serialises as it, so
``chat.send_action(sender_id, Action.mark_seen)`` and ``"mark_seen"`` are the same call, and
``Notification_frequency.DAILY.value`` works as in 1.1.9.

Example::

    from flask_ampalibe import Action, Messaging_type, Tag

    chat.send_action(sender_id, Action.typing_on)
    chat.send_text(sender_id, "Your order shipped", messaging_type=Messaging_type.MESSAGE_TAG,
                   tag=Tag.POST_PURCHASE_UPDATE)
"""
from __future__ import annotations

import enum

from .ui import Action, ButtonType, ContentType, Filetype

__all__ = [
    "Action", "Content_type", "Filetype", "Messaging_type", "Notification_cta_text", "Notification_frequency",
    "Notification_reoptin", "Notification_type", "Tag", "Type",
]

#: ``content_type`` of a quick reply (``text``, ``user_phone_number``, ``user_email``).
Content_type = ContentType
#: ``type`` of a button (``postback``, ``web_url``, ``phone_number``, ``account_link``, …).
Type = ButtonType


class _Text(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)


class Notification_frequency(_Text):  # noqa: N801 - Ampalibe's name
    """How often a recurring notification may be sent (``RecurringNotificationOptin``)."""

    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"


class Notification_cta_text(_Text):  # noqa: N801
    """The button label of a recurring notification opt-in request."""

    ALLOW = "ALLOW"
    FREQUENCY = "FREQUENCY"
    GET = "GET"
    OPT_IN = "OPT_IN"
    SIGN_UP = "SIGN_UP"


class Notification_reoptin(_Text):  # noqa: N801
    """Whether Messenger asks the user again when the opt-in expires."""

    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class Messaging_type(_Text):  # noqa: N801
    """``messaging_type`` of a send."""

    MESSAGE_TAG = "MESSAGE_TAG"
    RESPONSE = "RESPONSE"
    UPDATE = "UPDATE"


class Tag(_Text):
    """Message tags, to send outside the 24-hour window (with ``Messaging_type.MESSAGE_TAG``)."""

    ACCOUNT_UPDATE = "ACCOUNT_UPDATE"
    CONFIRMED_EVENT_UPDATE = "CONFIRMED_EVENT_UPDATE"
    CUSTOMER_FEEDBACK = "CUSTOMER_FEEDBACK"
    HUMAN_AGENT = "HUMAN_AGENT"
    POST_PURCHASE_UPDATE = "POST_PURCHASE_UPDATE"


class Notification_type(_Text):  # noqa: N801
    """How the user's phone notifies a message."""

    NO_PUSH = "NO_PUSH"
    REGULAR = "REGULAR"
    SILENT_PUSH = "SILENT_PUSH"
