"""Builders for the pieces of a Messenger message: quick replies, buttons, template elements,
receipt parts and notification opt-ins.

Each builder checks Messenger's documented limits when it is created, so a mistake shows up
at the line that made it rather than as a Graph error later.  A builder is a read-only
:class:`~collections.abc.Mapping`: it is accepted wherever a dict is, serialises to the same
JSON every time, and sending it never changes it.  :class:`~flask_ampalibe.Payload` objects
may be used as payloads; the Messenger client encodes them when it sends.

Example::

    from flask_ampalibe import Payload
    from flask_ampalibe.ui import Button, Element, QuickReply

    card = Element(
        title="Tee-shirt",
        image_url="https://example.com/tee.png",
        buttons=[Button(type="postback", title="Buy", payload=Payload("/buy", item=12))],
    )
    chat.send_template(sender_id, [card], quick_rep=[QuickReply(title="Menu", payload="/menu")])
"""
from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Iterator

from .errors import LimitError

__all__ = [
    "LimitError",
    "QuickReply",
    "Button",
    "Element",
    "ReceiptElement",
    "Address",
    "Summary",
    "Adjustment",
    "Product",
    "RecurringNotificationOptin",
    "ContentType",
    "Content_type",
    "ButtonType",
    "Type",
    "Action",
    "Filetype",
    "TEXT_LIMIT",
    "QUICK_REPLIES_MAX",
    "QUICK_REPLY_TITLE_MAX",
    "PAYLOAD_MAX",
    "TEMPLATE_ELEMENTS_MAX",
    "ELEMENT_TITLE_MAX",
    "ELEMENT_SUBTITLE_MAX",
    "ELEMENT_BUTTONS_MAX",
    "BUTTON_TEXT_MAX",
    "MENU_TITLE_MAX",
    "NOTIFICATION_TITLE_MAX",
    "PRODUCTS_MAX",
    "ATTACHMENT_MAX_BYTES",
]

# -- Messenger's limits (https://developers.facebook.com/docs/messenger-platform) --------------
#: A text message must be *shorter* than this many characters.
TEXT_LIMIT = 2000
#: Quick replies on one message.
QUICK_REPLIES_MAX = 13
#: Characters in a quick reply title.
QUICK_REPLY_TITLE_MAX = 20
#: Characters in a quick reply or postback payload.
PAYLOAD_MAX = 1000
#: Elements in one generic template.
TEMPLATE_ELEMENTS_MAX = 10
#: Characters in a template element title / subtitle.
ELEMENT_TITLE_MAX = 80
ELEMENT_SUBTITLE_MAX = 80
#: Buttons on one template element, and on one button template.
ELEMENT_BUTTONS_MAX = 3
#: Characters in the text of a button template.
BUTTON_TEXT_MAX = 640
#: Characters in a persistent-menu item title.
MENU_TITLE_MAX = 30
#: Characters in a one-time / recurring notification request title.
NOTIFICATION_TITLE_MAX = 65
#: Products in one product template.
PRODUCTS_MAX = 10
#: Size of an uploaded attachment.
ATTACHMENT_MAX_BYTES = 25 * 1024 * 1024


# -- enumerations (str subclasses: they compare equal to, and serialise as, their value) -------
class ContentType(str, enum.Enum):
    """``content_type`` of a quick reply."""

    text = "text"
    user_phone_number = "user_phone_number"
    user_email = "user_email"

    def __str__(self) -> str:
        return self.value


class ButtonType(str, enum.Enum):
    """``type`` of a button."""

    postback = "postback"
    web_url = "web_url"
    phone_number = "phone_number"
    account_link = "account_link"
    account_unlink = "account_unlink"
    game_play = "game_play"

    def __str__(self) -> str:
        return self.value


class Action(str, enum.Enum):
    """Sender actions for :meth:`Messenger.send_action <flask_ampalibe.messenger.Messenger.send_action>`."""

    mark_seen = "mark_seen"
    typing_on = "typing_on"
    typing_off = "typing_off"

    def __str__(self) -> str:
        return self.value


class Filetype(str, enum.Enum):
    """Attachment types for the file-sending methods."""

    file = "file"
    image = "image"
    video = "video"
    audio = "audio"

    def __str__(self) -> str:
        return self.value


# Ampalibe's names, for authors migrating from it (``from ampalibe.ui import Type, Content_type``).
Content_type = ContentType
Type = ButtonType


#: A phone number as the Send API wants it: '+', the country code, then the number.
_PHONE = re.compile(r"\+[0-9][0-9 ().-]{3,30}")


# -- checks shared by the builders and by the Messenger client (which also accepts dicts) -----
def _length(value: Any) -> int | None:
    """Length of a string value; ``None`` for values checked elsewhere (Payload objects)."""
    return len(value) if isinstance(value, str) else None


def check_length(value: Any, limit: int, what: str, fix: str) -> None:
    """Raise :class:`LimitError` when the string ``value`` is longer than ``limit`` characters."""
    size = _length(value)
    if size is not None and size > limit:
        raise LimitError(f"{what} is {size} characters long; Messenger allows at most {limit}. {fix}")


def check_payload(value: Any, what: str) -> None:
    """Check a payload string against Messenger's 1000-character limit.

    :class:`~flask_ampalibe.Payload` objects are checked when they are encoded.
    """
    check_length(value, PAYLOAD_MAX, what,
                 "Keep an id in the payload and store the rest (query.set_temp) or use a shorter Payload.")


def check_filetype(filetype: Any) -> str:
    """``filetype`` as one of :class:`Filetype`'s values (``'image'``, …); anything else raises ``ValueError``."""
    value = str(filetype)
    allowed = [f.value for f in Filetype]
    if value not in allowed:
        raise ValueError(f"filetype must be one of {allowed}, not {value!r}.")
    return value


def check_quick_reply(item: Any, where: str = "quick reply") -> None:
    """Validate one quick reply (a :class:`QuickReply` or a dict)."""
    if not isinstance(item, Mapping):
        raise TypeError(f"A {where} must be a QuickReply or a dict, not {type(item).__name__}.")
    if str(item.get("content_type", "text")) != "text":
        return
    title = item.get("title")
    check_length(title, QUICK_REPLY_TITLE_MAX, f"The {where} title {title!r}", "Shorten the title.")
    check_payload(item.get("payload"), f"The payload of {where} {title!r}")


def check_button(item: Any, where: str = "button") -> None:
    """Validate one button (a :class:`Button` or a dict)."""
    if not isinstance(item, Mapping):
        raise TypeError(f"A {where} must be a Button or a dict, not {type(item).__name__}.")
    if str(item.get("type", "postback")) in ("postback", "game_play"):
        check_payload(item.get("payload"), f"The payload of {where} {item.get('title')!r}")


def check_buttons(buttons: Any, where: str) -> list[Any]:
    """Validate a list of at most three buttons; return it as a list."""
    items = list(buttons or ())
    if len(items) > ELEMENT_BUTTONS_MAX:
        raise LimitError(
            f"{where} has {len(items)} buttons; Messenger allows at most {ELEMENT_BUTTONS_MAX}. "
            "Move the other choices to quick replies or to another element."
        )
    for button in items:
        check_button(button)
    return items


def check_element(item: Any, where: str = "template element") -> None:
    """Validate one generic-template element (an :class:`Element` or a dict)."""
    if not isinstance(item, Mapping):
        raise TypeError(f"A {where} must be an Element or a dict, not {type(item).__name__}.")
    title = item.get("title")
    check_length(title, ELEMENT_TITLE_MAX, f"The {where} title {title!r}", "Shorten it or move text to the subtitle.")
    check_length(item.get("subtitle"), ELEMENT_SUBTITLE_MAX, f"The subtitle of {where} {title!r}", "Shorten it.")
    check_buttons(item.get("buttons"), f"The {where} {title!r}")


def _frozen(value: Any) -> Any:
    """A private copy of ``value`` that the caller can no longer change under us."""
    if isinstance(value, _Builder):
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Builder(Mapping):
    """A read-only mapping of the JSON fields of one Messenger object (``None`` fields omitted)."""

    __slots__ = ("_fields",)

    def __init__(self, **fields: Any) -> None:
        data = {k: _frozen(v) for k, v in fields.items() if v is not None}
        object.__setattr__(self, "_fields", data)

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only; build a new one instead.")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_plain(v)!r}" for k, v in self._fields.items())
        return f"{type(self).__name__}({args})"

    def to_dict(self) -> dict[str, Any]:
        """A new plain dict of the fields (nested builders become dicts; Payloads stay as they are)."""
        return _plain(self._fields)

    @property
    def value(self) -> dict[str, Any]:
        """Ampalibe 1.1.9's name of :meth:`to_dict` (``Button(...).value``)."""
        return self.to_dict()

    # Copying a read-only object can return the object itself.
    def __copy__(self) -> "_Builder":
        return self

    def __deepcopy__(self, memo: dict) -> "_Builder":
        return self

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.to_dict()))


def _rebuild(cls: type[_Builder], fields: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_fields", {k: _frozen(v) for k, v in fields.items()})
    return obj


class QuickReply(_Builder):
    """A quick reply button shown above the composer.

    :param title: the label (at most 20 characters); required for ``content_type='text'``.
    :param payload: a string or :class:`~flask_ampalibe.Payload` (at most 1000 characters).
    :param image_url: an optional icon.
    :param content_type: ``'text'`` (default), ``'user_phone_number'`` or ``'user_email'``.

    Example::

        QuickReply(title="Angela", payload=Payload("/membre", name="Angela"))
    """

    __slots__ = ()

    def __init__(self, title: str | None = None, payload: Any = None, image_url: str | None = None,
                 content_type: str | ContentType = ContentType.text) -> None:
        content_type = str(content_type)
        if content_type not in {c.value for c in ContentType}:
            raise ValueError(f"QuickReply content_type must be one of {[c.value for c in ContentType]}, not {content_type!r}.")
        if content_type == "text" and (not title or payload is None):
            raise ValueError("A text QuickReply needs a title and a payload: QuickReply(title='Yes', payload='/yes').")
        super().__init__(content_type=content_type, title=title, payload=payload, image_url=image_url)
        check_quick_reply(self, "QuickReply")


class Button(_Builder):
    """A button of a button template, a template element or the persistent menu.

    :param type: ``'postback'`` (default), ``'web_url'``, ``'phone_number'``, ``'account_link'``,
        ``'account_unlink'`` or ``'game_play'``.
    :param title: the label.
    :param payload: for postback buttons, a string or :class:`~flask_ampalibe.Payload`
        (at most 1000 characters); for ``phone_number``, the number (``+33…``).
    :param url: for ``web_url`` and ``account_link`` buttons.
    :param extra: other documented fields, passed as they are (``webview_height_ratio``,
        ``messenger_extensions``, ``fallback_url``, ``webview_share_button``, ``game_metadata``).

    Example::

        Button(type="postback", title="Informations", payload="/contact")
        Button(type="web_url", title="Website", url="https://example.com")
    """

    __slots__ = ()

    def __init__(self, type: str | ButtonType = ButtonType.postback, title: str | None = None,
                 payload: Any = None, url: str | None = None, **extra: Any) -> None:
        kind = str(type)
        known = [t.value for t in ButtonType]
        if kind not in known:
            hint = " (a call button is type='phone_number')" if kind == "call" else ""
            raise ValueError(f"Button type must be one of {known}, not {kind!r}{hint}.")
        if kind == "phone_number" and not _PHONE.fullmatch(str(payload or "")):
            raise ValueError(f"A phone_number Button's payload is the number to call, with '+' and the country "
                             f"code (e.g. '+261340000000'), not {payload!r}.")
        needs = {"postback": ("title", "payload"), "phone_number": ("title", "payload"),
                 "web_url": ("title", "url"), "account_link": ("url",)}.get(kind, ())
        given = {"title": title, "payload": payload, "url": url}
        missing = [name for name in needs if given[name] in (None, "")]
        if missing:
            raise ValueError(f"A {kind} Button needs {' and '.join(missing)}: "
                             f"Button(type={kind!r}, {', '.join(f'{n}=...' for n in needs)}).")
        super().__init__(type=kind, title=title, payload=payload, url=url, **extra)
        check_button(self, "Button")


class Element(_Builder):
    """One card of a generic template.

    :param title: at most 80 characters.
    :param subtitle: at most 80 characters.
    :param image_url: the picture of the card.
    :param buttons: at most 3 :class:`Button` (or dicts).
    :param default_action: what tapping the card does, e.g. ``{"type": "web_url", "url": ...}``.
    """

    __slots__ = ()

    def __init__(self, title: str, subtitle: str | None = None, image_url: str | None = None,
                 buttons: Iterable[Any] | None = None, default_action: Mapping[str, Any] | None = None,
                 **extra: Any) -> None:
        if not title:
            raise ValueError("An Element needs a title: Element(title='Item', ...).")
        buttons = check_buttons(buttons, f"Element {title!r}") if buttons is not None else None
        super().__init__(title=title, subtitle=subtitle, image_url=image_url, default_action=default_action,
                         buttons=buttons or None, **extra)
        check_element(self, "Element")


class ReceiptElement(_Builder):
    """One line of a receipt template (:meth:`Messenger.send_receipt_template`)."""

    __slots__ = ()

    def __init__(self, title: str, price: float, subtitle: str | None = None, quantity: int | None = None,
                 currency: str | None = None, image_url: str | None = None) -> None:
        super().__init__(title=title, subtitle=subtitle, quantity=quantity, price=price, currency=currency,
                         image_url=image_url)


class Address(_Builder):
    """The shipping address of a receipt."""

    __slots__ = ()

    def __init__(self, street_1: str, city: str, postal_code: str, state: str, country: str,
                 street_2: str | None = None) -> None:
        super().__init__(street_1=street_1, street_2=street_2, city=city, postal_code=postal_code, state=state,
                         country=country)


class Summary(_Builder):
    """The payment summary of a receipt; ``total_cost`` is required."""

    __slots__ = ()

    def __init__(self, total_cost: float, subtotal: float | None = None, shipping_cost: float | None = None,
                 total_tax: float | None = None) -> None:
        super().__init__(subtotal=subtotal, shipping_cost=shipping_cost, total_tax=total_tax, total_cost=total_cost)


class Adjustment(_Builder):
    """A payment adjustment (a discount, a coupon) of a receipt."""

    __slots__ = ()

    def __init__(self, name: str, amount: float) -> None:
        super().__init__(name=name, amount=amount)


class Product(_Builder):
    """A catalog product for :meth:`Messenger.send_product_template`."""

    __slots__ = ()

    def __init__(self, id: str | int) -> None:  # noqa: A002 - Graph's field name
        super().__init__(id=str(id))


class RecurringNotificationOptin(_Builder):
    """The opt-in request of recurring notifications (Marketing Messages).

    It is the template payload sent by :meth:`Messenger.send_recurring_notification_optin`.

    :param title: at most 65 characters.
    :param payload: a string or :class:`~flask_ampalibe.Payload`, delivered back in the opt-in event.
    :param image_url: an optional picture.
    :param frequency: ``'DAILY'``, ``'WEEKLY'`` or ``'MONTHLY'`` (Meta no longer requires it).
    :param reoptin: ``True``/``False`` to enable or disable the re-opt-in reminder.
    :param timezone: the timezone id used to schedule notifications.
    :param cta_text: the button label, e.g. ``'GET_UPDATES'``, ``'ALLOW_MESSAGES'``.

    Ampalibe 1.1.9's keywords work too: ``notification_frequency``, ``notification_cta_text`` and
    ``notification_reoptin`` (texts or :mod:`flask_ampalibe.constant` members)::

        RecurringNotificationOptin(title="Daily news", payload="/news",
                                   notification_frequency=Notification_frequency.DAILY)
    """

    __slots__ = ()

    def __init__(self, title: str, payload: Any, image_url: str | None = None, frequency: str | None = None,
                 reoptin: bool | str | None = None, timezone: str | None = None, cta_text: str | None = None,
                 *, notification_frequency: str | None = None, notification_cta_text: str | None = None,
                 notification_reoptin: str | None = None) -> None:
        check_length(title, NOTIFICATION_TITLE_MAX, f"The notification title {title!r}", "Shorten it.")
        check_payload(payload, "The notification payload")
        frequency = _text(frequency if frequency is not None else notification_frequency)
        cta_text = _text(cta_text if cta_text is not None else notification_cta_text)
        reoptin = reoptin if reoptin is not None else _text(notification_reoptin)
        if isinstance(reoptin, bool):
            reoptin = "ENABLED" if reoptin else "DISABLED"
        if frequency is not None and frequency.upper() not in ("DAILY", "WEEKLY", "MONTHLY"):
            raise ValueError(f"RecurringNotificationOptin frequency must be DAILY, WEEKLY or MONTHLY, not {frequency!r}.")
        if reoptin is not None and str(reoptin).upper() not in ("ENABLED", "DISABLED"):
            raise ValueError(f"RecurringNotificationOptin reoptin must be ENABLED or DISABLED, not {reoptin!r}.")
        super().__init__(
            template_type="notification_messages",
            title=title,
            image_url=image_url,
            payload=payload,
            notification_messages_frequency=frequency.upper() if isinstance(frequency, str) else frequency,
            notification_messages_reoptin=str(reoptin).upper() if reoptin is not None else None,
            notification_messages_timezone=timezone,
            notification_messages_cta_text=cta_text,
        )


def _text(value: Any) -> str | None:
    """An enumeration member's text (``Notification_frequency.DAILY`` → ``'DAILY'``), a text as is."""
    if value is None:
        return None
    return str(value.value) if isinstance(value, enum.Enum) else str(value)
