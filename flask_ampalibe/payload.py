"""Payloads that carry typed arguments through Messenger buttons and quick replies.

``Payload('/membre', name='Angela', ref='2016-sac')`` becomes a string such as
``/membre ~amp.<signed JSON>`` when sent.  When the user taps it, the router finds the
``/membre`` command and passes ``name`` and ``ref`` as keyword arguments, with their JSON
types.  The arguments are signed with the app's payload secret (``itsdangerous``): text a user
types that only *looks* like a payload, or a tampered one, stays plain text.
"""
from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any, Callable

from itsdangerous import BadData, URLSafeSerializer

from .errors import PayloadError

__all__ = ["Payload", "PayloadCodec", "MAX_PAYLOAD_LENGTH"]

#: Messenger's limit for a postback or quick-reply payload.
MAX_PAYLOAD_LENGTH = 1000

_MARKER = "~amp."

# The codec used by ``str(Payload(...))``; set while an app is active (see extension.py).
_current_codec: ContextVar["PayloadCodec | None"] = ContextVar("flask_ampalibe_payload_codec", default=None)
_codec_finder: "Callable[[], PayloadCodec | None] | None" = None


class Payload:
    """A route with keyword arguments, usable as a quick-reply or button payload.

    :param payload: the route, e.g. ``'/membre'``: the command (or action) that will receive it.
    :param kwargs: JSON-serialisable arguments delivered to that handler as keyword arguments.

    Example::

        {"content_type": "text", "title": "Angela",
         "payload": Payload("/membre", name="Angela", ref="2016-sac")}
    """

    __slots__ = ("payload", "data")

    def __init__(self, payload: str, **kwargs: Any) -> None:
        if not isinstance(payload, str) or not payload.strip():
            raise PayloadError("Payload needs a route as its first argument, e.g. Payload('/membre', name='Angela').")
        try:
            json.dumps(kwargs)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"Payload arguments must be JSON-serialisable (str, int, float, bool, list, dict): {exc}") from None
        self.payload = payload
        self.data = kwargs

    def encode(self, codec: "PayloadCodec | None" = None) -> str:
        """The string to send to Messenger.

        :raises PayloadError: when the encoded string exceeds Messenger's 1000-character limit.
        """
        return (codec or current_codec()).encode(self)

    def __str__(self) -> str:
        return self.encode()

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.data.items())
        return f"Payload({self.payload!r}{args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Payload) and (self.payload, self.data) == (other.payload, other.data)

    def __hash__(self) -> int:
        return hash((self.payload, json.dumps(self.data, sort_keys=True)))

    # Ampalibe 1.0.4 names, kept for authors who called them directly.
    @staticmethod
    def trt_payload_out(payload: "Payload | str") -> str:
        """Encode a :class:`Payload` (or pass a plain string through) as the text Messenger carries."""
        return payload.encode() if isinstance(payload, Payload) else str(payload)

    @staticmethod
    def trt_payload_in(payload: str) -> tuple[str, dict[str, Any]]:
        """Decode received payload text into ``(route, arguments)``; plain text gives ``(text, {})``."""
        decoded = current_codec().decode(payload)
        return decoded if decoded is not None else (payload, {})


class PayloadCodec:
    """Encodes :class:`Payload` objects to signed text and back.

    :param secret: the signing key; every worker and host of a bot must share it.
    """

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeSerializer(secret, salt="flask_ampalibe.payload")

    def encode(self, payload: Payload) -> str:
        """Encode ``payload``; a payload without arguments is its bare route."""
        if not payload.data:
            text = payload.payload
        else:
            token = self._serializer.dumps({"r": payload.payload, "a": payload.data})
            text = f"{payload.payload} {_MARKER}{token}"
        if len(text) > MAX_PAYLOAD_LENGTH:
            raise PayloadError(
                f"Payload {payload.payload!r} encodes to {len(text)} characters; Messenger allows "
                f"{MAX_PAYLOAD_LENGTH}. Send less data in it (keep an id and store the rest with query.set_temp)."
            )
        return text

    def decode(self, text: str) -> tuple[str, dict[str, Any]] | None:
        """``(route, arguments)`` for a payload this codec signed, ``None`` for anything else."""
        if not isinstance(text, str) or _MARKER not in text:
            return None
        route, _, token = text.rpartition(" ")
        if not token.startswith(_MARKER):
            return None
        try:
            data = self._serializer.loads(token[len(_MARKER):])
        except BadData:
            return None
        if not isinstance(data, dict) or data.get("r") != route or not isinstance(data.get("a"), dict):
            return None
        return route, data["a"]


def set_codec_finder(finder: "Callable[[], PayloadCodec | None]") -> None:
    """Let the Flask layer tell this module how to find the active app's codec."""
    global _codec_finder
    _codec_finder = finder


def current_codec() -> PayloadCodec:
    """The codec of the active app (handler, app context, or the app ``ampalibe.init`` set up)."""
    codec = _current_codec.get()
    if codec is None and _codec_finder is not None:
        codec = _codec_finder()
    if codec is None:
        raise PayloadError(
            "A Payload can only be encoded once the bot is configured: call ampalibe.init(Configuration()) "
            "(or Ampalibe(app)) first, or encode inside an app context."
        )
    return codec
