"""The Send API envelope: who a message goes to and how (``recipient``, ``messaging_type``, ``tag``,
persona), built from the keyword arguments every send method of
:class:`~flask_ampalibe.messenger.Messenger` takes.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

__all__ = ["SEND_KWARGS", "envelope", "extra_fields"]

#: Keyword arguments every send method knows; others go into the Send API body as they are, as
#: Ampalibe 1.1.9 passes them (``metadata=...``), unless they look like a misspelling of these.
SEND_KWARGS = frozenset({
    "messaging_type", "tag", "notification_type", "persona_id", "personas_id",
    "one_time_notif_token", "notification_messages_token",
})


def envelope(dest_id: Any, kwargs: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The Send API body around a message, from a send method's keyword arguments.

    The recipient is the user (``RESPONSE``, or ``MESSAGE_TAG`` with ``tag=``) unless a
    one-time or recurring notification token is given; ``persona_id`` sends as a persona.
    Other keyword arguments go into the body as they are (see :func:`extra_fields`).

    :param method: the send method's name, for error messages.
    :raises TypeError: a keyword argument looks like a misspelling of a known one.
    """
    extra = extra_fields(kwargs, SEND_KWARGS, method, ("recipient", "message"))
    body: dict[str, Any] = {}
    if kwargs.get("one_time_notif_token"):
        body["recipient"] = {"one_time_notif_token": kwargs["one_time_notif_token"]}
    elif kwargs.get("notification_messages_token"):
        body["recipient"] = {"notification_messages_token": kwargs["notification_messages_token"]}
    else:
        body["recipient"] = {"id": str(dest_id)}
        body["messaging_type"] = "MESSAGE_TAG" if kwargs.get("tag") else "RESPONSE"
    if kwargs.get("messaging_type"):
        body["messaging_type"] = kwargs["messaging_type"]
    for key in ("tag", "notification_type"):
        if kwargs.get(key):
            body[key] = kwargs[key]
    persona = kwargs.get("persona_id") or kwargs.get("personas_id")
    if persona:
        body["persona_id"] = str(persona)
    body.update(extra)
    return body


def extra_fields(kwargs: Mapping[str, Any], known: "set[str] | frozenset[str]", method: str,
                 built: tuple[str, ...]) -> dict[str, Any]:
    """The keyword arguments that go into the request body as they are (Ampalibe 1.1.9 passes
    every unknown one through); a near-miss of a known one or a field the method builds raises."""
    extra = {k: v for k, v in kwargs.items() if k not in known}
    for key in extra:
        if key in built:
            raise TypeError(f"{method}() builds {key!r} itself; use send_custom() to send a body of your own.")
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            raise TypeError(f"{method}() got an unexpected keyword argument {key!r}; did you mean {close[0]!r}? "
                            "(Other Send API fields pass through as they are; see also send_custom().)")
    return extra
