"""``next=`` pagination: long templates and quick-reply lists sent page by page.

A paginated send shows one page and a "next" quick reply whose payload is
``"__amp_page <token>"``.  The rest waits in a :class:`PageStore` (the app's
:class:`~flask_ampalibe.storage.Store`) under that token, for that user only.

The user's tap comes back through the webhook like any message.  ``__amp_page`` is one of the
app's internal commands (:mod:`flask_ampalibe.internal`): the dispatcher hands the tap to
:func:`next_page` before any routing, which takes the page (once; a stale, repeated or foreign
tap finds nothing and sends nothing) and sends it, with a new "next" button while more remain.

The :class:`~flask_ampalibe.messenger.Messenger` methods with a ``next=`` argument
(``send_template``, ``send_quick_reply``, ``send_product_template``) check their arguments and
call the ``*_page`` functions here.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from . import ui
from .errors import LimitError
from .ui import PRODUCTS_MAX, QUICK_REPLIES_MAX, QUICK_REPLY_TITLE_MAX, TEMPLATE_ELEMENTS_MAX

if TYPE_CHECKING:
    import requests

    from .messenger import Messenger

__all__ = ["PAGE_COMMAND", "PAGE_PREFIX", "PageStore", "next_label", "paged", "next_page", "template_page",
           "quick_reply_page", "product_page"]

# The records keep the logger name they had when pagination lived in messenger.py.
logger = logging.getLogger("flask_ampalibe.messenger")

#: The internal command of a "next page" tap.
PAGE_COMMAND = "__amp_page"
#: The quick-reply payload of a "next page" button: ``"__amp_page <token>"``.
PAGE_PREFIX = PAGE_COMMAND + " "

_DEFAULT_NEXT_LABEL = {"template": "Next page", "quick_reply": "More"}
# How many items of each kind one message shows, and how a send of more without next= is refused.
_PER_MESSAGE = {"quick_reply": QUICK_REPLIES_MAX, "template": TEMPLATE_ELEMENTS_MAX, "product": PRODUCTS_MAX}
_REFUSAL = {
    "quick_reply": ("quick replies", "Messenger shows", " (or next='More')"),
    "template": ("elements", "a generic template holds", " (or next='Next page')"),
    "product": ("products", "a product template holds", ""),
}
# Send keywords a later page keeps: it answers the user's tap, so it is a plain RESPONSE (no tag
# or one-time token), by the same persona.
_KEPT_KWARGS = ("persona_id", "personas_id", "notification_type")


class PageStore(Protocol):
    """Where the remaining pages of a paginated send wait for the user's "next" tap.

    :class:`flask_ampalibe.storage.Store` implements it in the database, so the tap can land
    on any worker or host.
    """

    def save_page(self, user_id: str, data: dict) -> str: ...

    def take_page(self, token: str, user_id: str) -> dict | None: ...


def next_label(next: bool | str | None, kind: str) -> str | None:
    """The label of the "next" button for a ``next=`` argument (``None``: no pagination).

    :param kind: ``"template"`` (default label "Next page") or ``"quick_reply"`` ("More").
    """
    if next is None or next is False:
        return None
    label = _DEFAULT_NEXT_LABEL[kind] if next is True else str(next)
    ui.check_length(label, QUICK_REPLY_TITLE_MAX, f"The next-page label {label!r}", "Use a shorter next= label.")
    if not label.strip():
        raise ValueError("next= must be True or a non-empty label such as 'Next page'.")
    return label


def paged(chat: "Messenger", method: str, kind: str, count: int, label: str | None) -> bool:
    """Whether ``count`` items of ``kind`` (``"quick_reply"``, ``"template"``, ``"product"``) need
    more than one message; they may only with ``next=`` and a page store.

    :raises LimitError: they need several messages and ``next=`` is not set.
    :raises ValueError: ``chat`` has no page store to keep the next pages in.
    """
    per_message = _PER_MESSAGE[kind]
    if count <= per_message:
        return False
    if label is None:
        what, holder, hint = _REFUSAL[kind]
        raise LimitError(f"{method} got {count} {what}; {holder} at most {per_message}. "
                         f"Pass next=True{hint} to show them page by page, or send fewer.")
    if chat._unbound:  # a Messenger() without a token takes the configured bot's store
        chat._bind()
    if chat.pages is None:
        raise ValueError(
            f"{method}(next=...) keeps the next pages in the database, but this Messenger has no page store: "
            "create it with Messenger(..., pages=store) (the app's chat has one), or send fewer items."
        )
    return True


# -- one page of each kind (the first one, or the one a tap asks for) ------------------------------
def template_page(chat: "Messenger", dest_id: Any, items: list[Any], extras: list[Any], label: str | None,
                  kwargs: Mapping[str, Any], method: str) -> "requests.Response":
    """Send the first ten ``items`` as a generic template; save the rest when ``label`` is set."""
    return _template_page(chat, dest_id, "template", "generic", TEMPLATE_ELEMENTS_MAX, items, extras, label,
                          kwargs, method)


def quick_reply_page(chat: "Messenger", dest_id: Any, items: list[Any], text: str, label: str | None,
                     kwargs: Mapping[str, Any]) -> "requests.Response":
    """Send ``text`` with up to 13 quick replies; with ``label``, 12 and a "next" one for the rest."""
    shown = items
    if label is not None and len(items) > QUICK_REPLIES_MAX:
        keep = QUICK_REPLIES_MAX - 1
        token = _save(chat, dest_id, {
            "kind": "quick_reply", "items": items[keep:], "text": text, "next": label, "kwargs": kwargs,
        })
        shown = items[:keep] + [_button(label, token)]
    return chat._send(dest_id, {"text": text, "quick_replies": shown}, kwargs, "send_quick_reply")


def product_page(chat: "Messenger", dest_id: Any, elements: list[Any], extras: list[Any], label: str | None,
                 kwargs: Mapping[str, Any]) -> "requests.Response":
    """Send the first ten products as a product template; save the rest when ``label`` is set."""
    return _template_page(chat, dest_id, "product", "product", PRODUCTS_MAX, elements, extras, label, kwargs,
                          "send_product_template")


def _template_page(chat: "Messenger", dest_id: Any, kind: str, template_type: str, per_page: int,
                   elements: list[Any], extras: list[Any], label: str | None, kwargs: Mapping[str, Any],
                   method: str) -> "requests.Response":
    """A template of ``per_page`` elements; with ``label``, the rest saved as a page of ``kind``."""
    shown, quick_replies = elements, list(extras)
    if label is not None and len(elements) > per_page:
        token = _save(chat, dest_id, {"kind": kind, "elements": elements[per_page:], "quick_rep": extras,
                                      "next": label, "kwargs": kwargs})
        shown = elements[:per_page]
        quick_replies.append(_button(label, token))
    message: dict[str, Any] = {
        "attachment": {"type": "template", "payload": {"template_type": template_type, "elements": shown}},
    }
    if quick_replies:
        message["quick_replies"] = quick_replies
    return chat._send(dest_id, message, kwargs, method)


# -- the tap ---------------------------------------------------------------------------------------
def next_page(chat: "Messenger", sender_id: str, text: str) -> None:
    """The internal command ``__amp_page``: send the page a "next" tap asks for.

    :param text: the tap's payload, ``"__amp_page <token>"``.  A token that is unknown, already
        taken or another user's sends nothing (logged at INFO).
    """
    token = text[len(PAGE_PREFIX):].strip()
    if chat.pages is None or not token:
        logger.warning("a next-page tap arrived but this Messenger has no page store (pages=None)")
        return
    data = chat.pages.take_page(token, str(sender_id))
    if not isinstance(data, dict):
        logger.info("stale or repeated next-page tap from user %s: nothing sent", sender_id)
        return
    kwargs = data.get("kwargs") or {}
    label = data.get("next") or None
    if data.get("kind") == "template":
        template_page(chat, sender_id, list(data.get("elements") or ()), list(data.get("quick_rep") or ()),
                      label, kwargs, "send_template")
    elif data.get("kind") == "quick_reply":
        quick_reply_page(chat, sender_id, list(data.get("items") or ()), data.get("text") or "", label, kwargs)
    elif data.get("kind") == "product":
        product_page(chat, sender_id, list(data.get("elements") or ()), list(data.get("quick_rep") or ()),
                     label, kwargs)
    else:
        logger.warning("unknown page kind %r ignored", data.get("kind"))


def _button(label: str, token: str) -> dict[str, str]:
    return {"content_type": "text", "title": label, "payload": PAGE_PREFIX + token}


def _save(chat: "Messenger", dest_id: Any, data: dict[str, Any]) -> str:
    data["kwargs"] = {k: v for k, v in data["kwargs"].items() if k in _KEPT_KWARGS}
    assert chat.pages is not None  # checked before the first page is built (paged())
    # Payload objects are encoded now, with the sending app's codec: the store keeps plain JSON.
    return chat.pages.save_page(str(dest_id), chat._jsonable(data))
