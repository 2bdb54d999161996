"""The Messenger client: every Send API call of Ampalibe (the spec's ``bot.chat``).

One :class:`Messenger` holds one :class:`requests.Session` (connection pooling) and is shared by
all the handlers of an app.  Each method builds exactly the request Meta documents, checks
Messenger's limits before sending, and returns the :class:`requests.Response` (spec §1.4, §1.6.1)::

    res = chat.send_text(sender_id, "Hello Ampalibe")
    if res.status_code != 200:
        print(res.text)  # Graph's error, also logged with its code, subcode and fbtrace_id

The methods about the Page rather than a message (``get_started``, ``persistent_menu``, user
profiles, personas) come from :class:`~flask_ampalibe.page.PageClient`, and the transport
(authentication, JSON encoding, retries of transient errors, never a double send) from its base,
:class:`~flask_ampalibe.graph.GraphClient`.  The Send API envelope is :mod:`flask_ampalibe.envelope`,
``next=`` pagination :mod:`flask_ampalibe.pagination`, text splitting :mod:`flask_ampalibe.text`.
"""
from __future__ import annotations

import logging
import mimetypes
import os
from collections.abc import Iterable, Mapping
from typing import Any

import requests

from . import pagination, ui
from .compat import accept_119_keywords, configured_chat, environ_token
from .envelope import SEND_KWARGS, envelope, extra_fields
from .errors import ConfigurationError, GraphConnectionError, GraphError, GraphTimeout, LimitError
from .graph import TRANSIENT_CODES, GraphErrorInfo, graph_error
from .notifications import Notifications
from .page import PageClient
from .pagination import PAGE_COMMAND, PAGE_PREFIX, PageStore
from .text import split_text
from .ui import BUTTON_TEXT_MAX, ELEMENT_BUTTONS_MAX, QUICK_REPLIES_MAX, TEXT_LIMIT, Action, Filetype

__all__ = ["Messenger", "GraphError", "GraphTimeout", "GraphConnectionError", "GraphErrorInfo", "graph_error",
           "split_text", "Action", "Filetype", "PageStore", "PAGE_PREFIX", "TRANSIENT_CODES"]

logger = logging.getLogger(__name__)

# -- the client -------------------------------------------------------------------------------
@accept_119_keywords  # chat.send_text(sender_id=..., text=...), as Ampalibe 1.1.9 names them
class Messenger(Notifications, PageClient):
    """A client of the Messenger Send API and Messenger Profile API.

    :param access_token: the Page access token (an empty one makes every call raise
        :class:`~flask_ampalibe.errors.ConfigurationError`).  Left out (``Messenger()``, as
        Ampalibe 1.1.9's ``core.py`` writes it), the client takes the token and settings of the
        configured bot (``ampalibe.init`` or ``Ampalibe(app)``) at its first call, else
        ``AMP_ACCESS_TOKEN`` from the environment.
    :param pages: a :class:`~flask_ampalibe.pagination.PageStore` for ``next=`` pagination (the
        app's Store); ``None`` makes ``next=`` raise an error that says so.
    :param graph_version: the Graph version, e.g. ``"v24.0"`` (default: ``"v24.0"``, or the
        configured bot's for a ``Messenger()`` without a token).
    :param api_version: Ampalibe 1.1.9's name of ``graph_version``.
    :param log_level: accepted for Ampalibe 1.1.9 (``'error'``, ``'info'``, ``'quiet'``); logging
        goes through :mod:`logging` (logger ``flask_ampalibe.messenger``) whatever its value.
    :param options: the transport's keyword arguments, as :class:`~flask_ampalibe.graph.GraphClient`
        documents them: ``graph_url`` (tests point it at a fake), ``app_secret``, ``timeout``,
        ``payload_encoder``, ``max_retries``, ``retry_budget``, ``session``, ``pool_maxsize``.

    From ``async def`` code use :attr:`aio`: the same methods, awaitable, each call run in a
    thread (``await bot.chat.aio.send_text(sender_id, "Hi")``).

    ``sleep`` and ``clock`` are attributes (``time.sleep`` and ``time.monotonic``) that tests
    may replace; the backoff policy itself stays the same.
    """

    def __init__(self, access_token: str | None = None, *, pages: PageStore | None = None,
                 graph_version: str | None = None, api_version: str | None = None, log_level: str = "error",
                 **options: Any) -> None:
        if log_level not in ("error", "info", "quiet"):
            raise ValueError(f"Messenger(log_level=...) must be 'error', 'info' or 'quiet', not {log_level!r}.")
        version = graph_version or api_version
        if version is not None:
            options["graph_version"] = version
        super().__init__(access_token or "", **options)
        self.pages = pages
        self.log_level = log_level
        self._unbound = access_token is None
        self._own_version = version is not None

    def _bind(self) -> None:
        """A ``Messenger()`` made without a token takes the configured bot's settings at first use."""
        chat = configured_chat()
        if chat is None or chat is self:
            token = environ_token()
            if not token:
                raise ConfigurationError(
                    "Messenger() was made without an access token and no bot is configured: call "
                    "ampalibe.init(Configuration()) (or Ampalibe(app)) first, set AMP_ACCESS_TOKEN, "
                    "or pass the token: Messenger(access_token)."
                )
            self._auth = {"access_token": token}
        else:
            if chat._unbound:
                chat._bind()
            if not self._own_version:
                self.base_url = chat.base_url
            self.timeout, self.payload_encoder, self._auth = chat.timeout, chat.payload_encoder, dict(chat._auth)
            if self.pages is None:
                self.pages = chat.pages
            if self._own_session:  # share the bot's connection pool
                self.session.close()
                self.session, self._own_session = chat.session, False
        self._unbound = False

    @property
    def token(self) -> str:
        """The Page access token this client sends (Ampalibe 1.1.9's ``chat.token``)."""
        if self._unbound:
            self._bind()
        return self._auth["access_token"]

    @property
    def aio(self) -> Any:
        """This client for ``async def`` code: every method awaitable, run in a thread."""
        from .aio import AsyncProxy
        return AsyncProxy(self)

    # -- the Send API ------------------------------------------------------------------------------
    def _send(self, dest_id: Any, message: Any, kwargs: Mapping[str, Any], method: str) -> requests.Response:
        body = envelope(dest_id, kwargs, method)
        body["message"] = message
        return self._request("POST", "/me/messages", label=method, json_body=body)

    # -- text ----------------------------------------------------------------------------------
    def send_text(self, dest_id: str, text: str, **kwargs: Any) -> requests.Response:
        """Send a text message; a text of 2000 characters or more goes as several messages.

        It is split at paragraph or word boundaries (see :func:`split_text`); the pieces are sent
        in order, and sending stops at the first piece Graph refuses.

        :param dest_id: the user's PSID.
        :param text: the text.
        :param kwargs: ``messaging_type``, ``tag``, ``notification_type``, ``persona_id``,
            ``one_time_notif_token`` or ``notification_messages_token``.
        :returns: the response of the last piece sent.

        Example::

            chat.send_text(sender_id, "Hello world")
        """
        text = text if isinstance(text, str) else str(text)
        envelope(dest_id, kwargs, "send_text")  # check the keywords before sending anything
        response: requests.Response | None = None
        for piece in split_text(text):
            response = self._send(dest_id, {"text": piece}, kwargs, "send_text")
            if not response.ok:
                break
        assert response is not None
        return response

    def send_message(self, dest_id: str, message: Any, prio: bool = False, **kwargs: Any) -> requests.Response:
        """Send a text message (spec §1.4.1); same as :meth:`send_text`.

        A mapping is sent as the Send API ``message`` object itself.  ``prio`` is accepted for
        Ampalibe 1.1.9 and has no effect (there neither).

        Example::

            chat.send_message(sender_id, "Hello world")
        """
        if isinstance(message, Mapping):
            return self._send(dest_id, message, kwargs, "send_message")
        return self.send_text(dest_id, message, **kwargs)

    def send_action(self, dest_id: str, action: str, **kwargs: Any) -> requests.Response:
        """Show a sender action: ``'mark_seen'``, ``'typing_on'`` or ``'typing_off'``.

        Example::

            chat.send_action(sender_id, "mark_seen")
        """
        action = str(action)
        allowed = [a.value for a in Action]
        if action not in allowed:
            raise ValueError(f"send_action: action must be one of {allowed}, not {action!r}.")
        extra = extra_fields(kwargs, {"persona_id", "personas_id"} | SEND_KWARGS, "send_action",
                              ("recipient", "message", "sender_action"))
        body: dict[str, Any] = {"recipient": {"id": str(dest_id)}, "sender_action": action}
        persona = kwargs.get("persona_id") or kwargs.get("personas_id")
        if persona:
            body["persona_id"] = str(persona)
        if kwargs.get("messaging_type"):
            body["messaging_type"] = kwargs["messaging_type"]
        body.update(extra)
        return self._request("POST", "/me/messages", label="send_action", json_body=body)

    # -- quick replies and templates, with pagination ---------------------------------------------
    def send_quick_reply(self, dest_id: str, quick_rep: Iterable[Any], text: str, next: bool | str = False,
                         **kwargs: Any) -> requests.Response:
        """Send ``text`` with quick replies (at most 13 on a message).

        :param quick_rep: :class:`~flask_ampalibe.ui.QuickReply` objects or dicts.
        :param text: the text above the quick replies.
        :param next: with more than 13 quick replies, ``True`` (or a label) shows 12 of them and a
            "More" quick reply that shows the next ones.  Without it, more than 13 raise
            :class:`~flask_ampalibe.ui.LimitError`.

        Example::

            quick_rep = [
                {"content_type": "text", "title": "Angela", "payload": "/membre"},
                {"content_type": "text", "title": "Rivo", "payload": "/membre"},
            ]
            chat.send_quick_reply(sender_id, quick_rep, "who do you choose ?")
        """
        items = list(quick_rep)
        for item in items:
            ui.check_quick_reply(item)
        text = text if isinstance(text, str) else str(text)
        ui.check_length(text, TEXT_LIMIT - 1, "The text of send_quick_reply", "Send the long text with send_text first.")
        label = pagination.next_label(next, "quick_reply")
        envelope(dest_id, kwargs, "send_quick_reply")
        pagination.paged(self, "send_quick_reply", "quick_reply", len(items), label)
        return pagination.quick_reply_page(self, dest_id, items, text, label, kwargs)

    def send_template(self, dest_id: str, elements: Iterable[Any], quick_rep: Iterable[Any] | None = None,
                      next: bool | str = False, **kwargs: Any) -> requests.Response:
        """Send a generic template (a carousel of at most 10 cards).

        :param elements: :class:`~flask_ampalibe.ui.Element` objects or dicts.
        :param quick_rep: extra quick replies shown under the template (on every page).
        :param next: with more than 10 elements, ``True`` (or a label such as ``'Next page'``)
            shows 10 and a "Next page" quick reply that shows the next 10, and so on.  Without
            it, more than 10 elements raise :class:`~flask_ampalibe.ui.LimitError`.

        Example::

            list_items = [
                {"title": f"item n°{i+1}", "image_url": "https://i.imgur.com/6b45bi.jpg",
                 "buttons": [{"type": "postback", "title": "Get item", "payload": Payload("/item", id_item=i+1)}]}
                for i in range(30)
            ]
            chat.send_template(sender_id, list_items, next=True)
        """
        return self._template(dest_id, elements, quick_rep, next, kwargs, "send_template")

    def send_generic_template(self, dest_id: str, elements: Iterable[Any], quick_rep: Iterable[Any] | None = None,
                              next: bool | str = False, **kwargs: Any) -> requests.Response:
        """Ampalibe 1.1's name of :meth:`send_template`."""
        return self._template(dest_id, elements, quick_rep, next, kwargs, "send_generic_template")

    def _template(self, dest_id: Any, elements: Iterable[Any], quick_rep: Iterable[Any] | None, next: bool | str,
                  kwargs: Mapping[str, Any], method: str) -> requests.Response:
        items = list(elements)
        extras = list(quick_rep or ())
        for item in items:
            ui.check_element(item)
        for extra in extras:
            ui.check_quick_reply(extra)
        label = pagination.next_label(next, "template")
        envelope(dest_id, kwargs, method)
        paged = pagination.paged(self, method, "template", len(items), label)
        room = QUICK_REPLIES_MAX - (1 if paged else 0)
        if len(extras) > room:
            raise LimitError(
                f"{method} got {len(extras)} quick replies; Messenger shows at most {QUICK_REPLIES_MAX}"
                + (" and one is taken by the next-page button" if paged else "") + ". Send fewer quick replies."
            )
        return pagination.template_page(self, dest_id, items, extras, label, kwargs, method)

    def handle_internal(self, sender_id: str, text: str) -> bool:
        """Handle a tap on a "next page" quick reply this client sent (:func:`flask_ampalibe.pagination.next_page`).

        Apps do not need it: the dispatcher runs the app's internal commands itself
        (:mod:`flask_ampalibe.internal`).

        :returns: ``True`` when ``text`` was such a tap (consumed, even if stale), ``False``
            when it is for the bot's handlers.
        """
        if not isinstance(text, str) or text.partition(" ")[0] != PAGE_COMMAND:
            return False
        pagination.next_page(self, sender_id, text)
        return True

    # -- attachments -----------------------------------------------------------------------------
    def send_file_url(self, dest_id: str, url: str, filetype: str = "file", reusable: bool = False,
                      **kwargs: Any) -> requests.Response:
        """Send a file Messenger downloads from ``url`` (at most 25 MB).

        :param filetype: ``'file'``, ``'image'``, ``'video'`` or ``'audio'``.
        :param reusable: ask Graph for an ``attachment_id`` (in ``res.json()``) to use with
            :meth:`send_attachment`.

        Example::

            chat.send_file_url(sender_id, "https://i.imgur.com/6b45bi.jpg", filetype="image")
        """
        filetype = ui.check_filetype(filetype)
        message = {"attachment": {"type": filetype, "payload": {"url": url, "is_reusable": bool(reusable)}}}
        return self._send(dest_id, message, kwargs, "send_file_url")

    def send_file(self, dest_id: str, file: Any, filetype: str = "file", filename: str | None = None,
                  reusable: bool = False, **kwargs: Any) -> requests.Response:
        """Upload a local file and send it (multipart upload, at most 25 MB).

        :param file: a path, or a binary file object.
        :param filetype: ``'file'``, ``'image'``, ``'video'`` or ``'audio'``.
        :param filename: the name the user sees; defaults to the file's own name.
        :param reusable: ask Graph for an ``attachment_id`` to use with :meth:`send_attachment`.

        Example::

            chat.send_file(sender_id, "mydocument.pdf")
            chat.send_file(sender_id, "intro.mp4", filetype="video")
        """
        filetype = ui.check_filetype(filetype)
        if hasattr(file, "read"):
            content = file.read()
            name = filename or os.path.basename(str(getattr(file, "name", "") or "")) or "file"
        else:
            with open(os.fspath(file), "rb") as handle:
                content = handle.read()
            name = filename or os.path.basename(os.fspath(file))
        if isinstance(content, str):
            content = content.encode("utf-8")
        if len(content) > ui.ATTACHMENT_MAX_BYTES:
            raise LimitError(f"send_file: {name!r} is {len(content)} bytes; Messenger accepts attachments up to 25 MB. "
                             "Send a link to it instead (send_text or a web_url button).")
        body = envelope(dest_id, kwargs, "send_file")
        body["message"] = {"attachment": {"type": filetype, "payload": {"is_reusable": bool(reusable)}}}
        fields = {key: (value if isinstance(value, str) else self._dumps(value).decode("utf-8"))
                  for key, value in body.items()}
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return self._request("POST", "/me/messages", label="send_file", data=fields,
                             files={"filedata": (name, content, mime)})

    def send_attachment(self, dest_id: str, attachment_id: str, filetype: str = "file",
                        **kwargs: Any) -> requests.Response:
        """Send again an attachment uploaded with ``reusable=True``, by its ``attachment_id``.

        Example::

            res = chat.send_file(sender_id, "assets/private/doc.pdf", reusable=True)
            chat.send_attachment(other_id, res.json()["attachment_id"])
        """
        filetype = ui.check_filetype(filetype)
        message = {"attachment": {"type": filetype, "payload": {"attachment_id": str(attachment_id)}}}
        return self._send(dest_id, message, kwargs, "send_attachment")

    def send_media(self, dest_id: str, fb_url: str, media_type: str, buttons: Iterable[Any] | None = None,
                   **kwargs: Any) -> requests.Response:
        """Send an image or video hosted on Facebook (media template).

        :param fb_url: the Facebook URL of the media.
        :param media_type: ``'image'`` or ``'video'``.
        :param buttons: an optional button (at most one is shown).

        Example::

            chat.send_media(sender_id, "https://www.facebook.com/iTeam.Community/videos/476926027465187", "video")
        """
        media_type = str(media_type)
        if media_type not in ("image", "video"):
            raise ValueError(f"send_media: media_type must be 'image' or 'video', not {media_type!r}.")
        element: dict[str, Any] = {"media_type": media_type, "url": fb_url}
        if buttons:
            element["buttons"] = ui.check_buttons(buttons, "send_media")
        message = {"attachment": {"type": "template", "payload": {"template_type": "media", "elements": [element]}}}
        return self._send(dest_id, message, kwargs, "send_media")

    def send_button(self, dest_id: str, buttons: Iterable[Any], text: str, **kwargs: Any) -> requests.Response:
        """Send a text (at most 640 characters) with one to three buttons (button template).

        Example::

            buttons = [{"type": "postback", "title": "Informations", "payload": "/contact"}]
            chat.send_button(sender_id, buttons, "What do you want to do?")
        """
        items = ui.check_buttons(buttons, "send_button")
        if not items:
            raise ValueError(f"send_button needs 1 to {ELEMENT_BUTTONS_MAX} buttons; use send_text for a text alone.")
        ui.check_length(text, BUTTON_TEXT_MAX, "The text of send_button",
                        "Send the long text with send_text first, then a short question with the buttons.")
        message = {"attachment": {"type": "template",
                                  "payload": {"template_type": "button", "text": text, "buttons": items}}}
        return self._send(dest_id, message, kwargs, "send_button")

    # -- other templates ---------------------------------------------------------------------------
    def send_receipt_template(self, dest_id: str, recipient_name: str, order_number: str | int,
                              payment_method: str, receipt_elements: Iterable[Any] | None = None,
                              summary: Mapping[str, Any] | None = None, currency: str = "MGA",
                              address: Mapping[str, Any] | None = None,
                              adjustments: Iterable[Any] | None = None, order_url: str | None = None,
                              timestamp: str | int | None = None, merchant_name: str | None = None,
                              sharable: bool | None = None, **kwargs: Any) -> requests.Response:
        """Send an order confirmation (receipt template).

        The arguments come in Ampalibe 1.1.9's order, and the currency defaults to ``"MGA"`` as there.

        :param summary: a :class:`~flask_ampalibe.ui.Summary` (or dict) with ``total_cost``.
        :param receipt_elements: :class:`~flask_ampalibe.ui.ReceiptElement` objects (or dicts).
        :param address: an :class:`~flask_ampalibe.ui.Address` (or dict).
        :param adjustments: :class:`~flask_ampalibe.ui.Adjustment` objects (or dicts).

        Example::

            chat.send_receipt_template(sender_id, "Arleme", 123461346131, "MVOLA",
                                       summary=Summary(total_cost=300), currency="MGA",
                                       receipt_elements=[ReceiptElement(title="Tee-shirt", price=1000)])
        """
        if summary is None:
            raise TypeError("send_receipt_template needs summary=Summary(total_cost=...).")
        payload: dict[str, Any] = {
            "template_type": "receipt",
            "recipient_name": recipient_name,
            "order_number": str(order_number),
            "currency": currency,
            "payment_method": payment_method,
            "summary": summary,
        }
        optional = {"merchant_name": merchant_name, "order_url": order_url, "sharable": sharable,
                    "timestamp": str(timestamp) if timestamp is not None else None, "address": address,
                    "elements": list(receipt_elements) if receipt_elements is not None else None,
                    "adjustments": list(adjustments) if adjustments is not None else None}
        payload.update({k: v for k, v in optional.items() if v is not None})
        message = {"attachment": {"type": "template", "payload": payload}}
        return self._send(dest_id, message, kwargs, "send_receipt_template")

    def send_product_template(self, dest_id: str, product_ids: Iterable[Any], next: bool | str = False,
                              quick_rep: Iterable[Any] | None = None, **kwargs: Any) -> requests.Response:
        """Send catalog products (at most 10 per message), by id or :class:`~flask_ampalibe.ui.Product`.

        :param next: with more than 10 products, ``True`` (or a label) shows 10 and a "Next page"
            quick reply for the next ones; without it, more than 10 raise
            :class:`~flask_ampalibe.ui.LimitError`.
        :param quick_rep: quick replies shown under the products (on every page).

        Example::

            chat.send_product_template(sender_id, ["123456789", "987654321"])
        """
        elements = [p if isinstance(p, Mapping) else {"id": str(p)} for p in product_ids]
        extras = list(quick_rep or ())
        for extra in extras:
            ui.check_quick_reply(extra)
        label = pagination.next_label(next, "template")
        envelope(dest_id, kwargs, "send_product_template")
        paged = pagination.paged(self, "send_product_template", "product", len(elements), label)
        if len(extras) > QUICK_REPLIES_MAX - (1 if paged else 0):
            raise LimitError(f"send_product_template got {len(extras)} quick replies; Messenger shows at most "
                             f"{QUICK_REPLIES_MAX}, one of them taken by the next-page button. Send fewer.")
        return pagination.product_page(self, dest_id, elements, extras, label, kwargs)

    # -- anything else -------------------------------------------------------------------------------
    def send_custom(self, custom_json: Mapping[str, Any], endpoint: str = "/messages") -> requests.Response:
        """POST ``custom_json`` to ``/me{endpoint}`` for a Graph API the client does not cover.

        Example::

            chat.send_custom({"recipient": {"id": sender_id}, "message": {"text": "Hi"}})
            chat.send_custom({"greeting": [{"locale": "default", "text": "Hello!"}]}, "/messenger_profile")
        """
        endpoint = "/" + endpoint.lstrip("/")
        return self._request("POST", "/me" + endpoint, label=f"send_custom {endpoint}", json_body=custom_json)
