"""What Ampalibe 1.1.9 bots use that is not part of flask_ampalibe's own API.

- :data:`Logger`, the logger 1.1.9 bots write to (``Logger.info(...)``);
- :func:`download_file`, to save an attachment a user sent;
- :func:`configured_chat`, where a ``Messenger()`` made without an access token (1.1.9's
  ``chat = Messenger()`` at the top of ``core.py``) finds its token and settings;
- :func:`fastapi_rule`, which turns 1.1.9's FastAPI-style paths (``/items/{item_id}``) into
  Flask rules for ``@webserver.get``.

Nothing here runs at import.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from flask import Flask

from .context import current_state
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .messenger import Messenger

__all__ = ["Logger", "Webserver", "download_file", "configured_chat", "fastapi_rule", "accept_119_keywords"]

#: The logger of 1.1.9 bots (``from ampalibe import Logger``).  As every library logger, it has no
#: handler of its own: its records go where the application's logging sends them (gunicorn's
#: error log under ``ampalibe run``).
Logger = logging.getLogger("ampalibe")

#: Seconds :func:`download_file` waits for the server (connect, and between bytes).
DOWNLOAD_TIMEOUT = 30.0


def download_file(url: str, file: "str | os.PathLike[str]", *, timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """Save what ``url`` points to (e.g. ``cmd`` of an attachment message) in ``file``; return ``file``.

    Unlike 1.1.9, which wrote whatever came back, an error answer raises and writes nothing.

    :raises requests.HTTPError: when the server answers with an error status.

    Example::

        @ampalibe.command("/")
        def main(sender_id, cmd, **extends):
            if cmd.webhook == "attachments":
                download_file(cmd, f"assets/private/{sender_id}.jpg")
    """
    import requests  # not at import: ``import flask_ampalibe`` (every ``flask`` command) stays light

    with requests.get(url, stream=True, timeout=timeout, allow_redirects=True) as response:
        response.raise_for_status()
        tmp = f"{os.fspath(file)}.part"
        with open(tmp, "wb") as out:
            for chunk in response.iter_content(chunk_size=64 * 1024):
                out.write(chunk)
        os.replace(tmp, file)
    return file if isinstance(file, str) else os.fspath(file)


def configured_chat() -> "Messenger | None":
    """The configured bot's Messenger client (the current app's, else the one ``init`` set up).

    :returns: ``None`` when no bot is configured yet.
    """
    try:
        return current_state().chat
    except ConfigurationError:
        return None


def environ_token() -> str | None:
    """The access token of the environment (``AMPALIBE_ACCESS_TOKEN``, else 1.1.9's ``AMP_ACCESS_TOKEN``)."""
    return os.environ.get("AMPALIBE_ACCESS_TOKEN") or os.environ.get("AMP_ACCESS_TOKEN") or None


# -- FastAPI-style paths ------------------------------------------------------------------------
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")
_CONVERTERS: dict[object, str] = {int: "int", float: "float", str: "string"}


def fastapi_rule(rule: str, func: Callable[..., Any]) -> str:
    """Turn a FastAPI path (``/items/{item_id}``) into a Flask rule (``/items/<int:item_id>``).

    The converter follows the view's annotation of the parameter (``int``, ``float``; anything
    else, or none, is a string); FastAPI's ``{path:path}`` becomes ``<path:path>``.  A rule with
    no ``{`` is returned as is, so Flask rules (``/items/<int:item_id>``) keep working.
    """
    if "{" not in rule:
        return rule
    hints: Mapping[str, inspect.Parameter]
    try:
        hints = inspect.signature(func).parameters
    except (TypeError, ValueError):
        hints = {}

    def convert(match: re.Match[str]) -> str:
        name, kind = match.group(1), match.group(2)
        if kind == "path":
            return f"<path:{name}>"
        param = hints.get(name)
        annotation = param.annotation if param is not None else None
        if isinstance(annotation, str):  # ``from __future__ import annotations`` in the bot
            annotation = {"int": int, "float": float, "str": str}.get(annotation)
        converter = _CONVERTERS.get(annotation, "string")
        return f"<{converter}:{name}>"

    return _PARAM.sub(convert, rule)


class Webserver(Flask):
    """The Flask app of spec-style projects (``ampalibe.webserver``).

    Ampalibe 1.1.9's webserver was FastAPI: its custom endpoints are written with FastAPI paths
    (``@webserver.get('/items/{item_id}')`` over ``def read_item(item_id: int)``).  Such a rule
    is turned into the Flask rule (``/items/<int:item_id>``) when the view is registered; Flask
    rules work as usual.
    """

    def add_url_rule(self, rule: str, endpoint: str | None = None, view_func: Callable[..., Any] | None = None,
                     provide_automatic_options: bool | None = None, **options: Any) -> None:
        if view_func is not None:
            rule = fastapi_rule(rule, view_func)
        super().add_url_rule(rule, endpoint, view_func, provide_automatic_options, **options)


# -- Messenger's keyword names in 1.1.9 ---------------------------------------------------------
_TO_USER = {"sender_id": "dest_id"}
#: ``{method: {1.1.9's keyword: ours}}``: the spec (1.0.4) names the user ``dest_id``, 1.1.9 ``sender_id``.
MESSENGER_KEYWORDS: dict[str, dict[str, str]] = {
    **{name: _TO_USER for name in (
        "send_text", "send_message", "send_action", "send_template", "send_generic_template", "send_file_url",
        "send_file", "send_attachment", "send_media", "send_button", "send_receipt_template",
        "send_onetime_notification_request", "send_recurring_notification_optin", "get_user_profile")},
    "send_quick_reply": {**_TO_USER, "quick_reps": "quick_rep"},
    "send_product_template": {**_TO_USER, "products": "product_ids"},
    "persistent_menu": {**_TO_USER, "menu": "persistent_menu"},
    "send_recurring_notification": {"message_token": "token", "elements": "message"},
    "get_personas": {"persona_id": "personas_id"},
    "delete_personas": {"persona_id": "personas_id"},
    "send_custom": {"json": "custom_json"},
}


def accept_119_keywords(cls: type) -> type:
    """Let the methods of ``cls`` (the Messenger client) also take Ampalibe 1.1.9's keyword names
    (``chat.send_text(sender_id=..., text=...)``); returns ``cls``."""
    for name, aliases in MESSENGER_KEYWORDS.items():
        setattr(cls, name, _renaming(getattr(cls, name), aliases))
    return cls


def _renaming(method: Callable[..., Any], aliases: dict[str, str]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        for old, new in aliases.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{method.__name__}() got both {old!r} and {new!r}; they are the same argument.")
                kwargs[new] = kwargs.pop(old)
        return method(self, *args, **kwargs)
    return call
