"""The Messenger client's notifications outside the 24-hour window: one-time notification
requests and recurring notifications (Marketing Messages).  A base class of
:class:`~flask_ampalibe.messenger.Messenger`; call them on ``bot.chat``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests

from . import ui
from .ui import NOTIFICATION_TITLE_MAX, TEXT_LIMIT

__all__ = ["Notifications"]


class Notifications:
    """The notification methods of :class:`~flask_ampalibe.messenger.Messenger`."""

    if TYPE_CHECKING:  # defined by Messenger
        def _send(self, dest_id: Any, message: Any, kwargs: Mapping[str, Any], method: str) -> requests.Response: ...

    def send_onetime_notification_request(self, dest_id: str, title: str | None, payload: Any,
                                          **kwargs: Any) -> requests.Response:
        """Ask the user for one message outside the 24-hour window (one-time notification).

        When the user accepts, the opt-in event carries a ``one_time_notif_token``; send the
        notification with any send method and ``one_time_notif_token=token``.

        Example::

            chat.send_onetime_notification_request(sender_id, "Tell me when it is back", Payload("/notify"))

        Without a title (``None`` or empty) it is "Notification request", as in Ampalibe 1.1.9.
        """
        title = title or "Notification request"
        ui.check_length(title, NOTIFICATION_TITLE_MAX, "The notification title", "Shorten it.")
        ui.check_payload(payload, "The notification payload")
        message = {"attachment": {"type": "template",
                                  "payload": {"template_type": "one_time_notif_req", "title": title, "payload": payload}}}
        return self._send(dest_id, message, kwargs, "send_onetime_notification_request")

    def send_recurring_notification_optin(self, dest_id: str, optin: Mapping[str, Any],
                                          **kwargs: Any) -> requests.Response:
        """Ask the user to opt in to recurring notifications (Marketing Messages).

        :param optin: a :class:`~flask_ampalibe.ui.RecurringNotificationOptin` (or the template
            payload as a dict).
        """
        payload = dict(optin)
        payload.setdefault("template_type", "notification_messages")
        ui.check_length(payload.get("title"), NOTIFICATION_TITLE_MAX, "The notification title", "Shorten it.")
        message = {"attachment": {"type": "template", "payload": payload}}
        return self._send(dest_id, message, kwargs, "send_recurring_notification_optin")

    def send_recurring_notification(self, token: str, message: Any, **kwargs: Any) -> requests.Response:
        """Send a recurring notification with the ``notification_messages_token`` of an opt-in.

        :param message: a text, a Send API ``message`` object (dict), or, as in Ampalibe 1.1.9, a
            list of :class:`~flask_ampalibe.ui.Element` (or dicts), sent as a ``notification_messages``
            template.
        """
        if isinstance(message, Mapping):
            content: Any = message
        elif isinstance(message, (list, tuple)):
            for element in message:
                ui.check_element(element)
            content = {"attachment": {"type": "template", "payload": {
                "template_type": "notification_messages", "elements": list(message)}}}
        else:
            content = {"text": str(message)}
            ui.check_length(content["text"], TEXT_LIMIT - 1, "The notification text", "Shorten it.")
        return self._send(None, content, {**kwargs, "notification_messages_token": token},
                          "send_recurring_notification")
