"""The Graph calls about the Page and the people it talks to, rather than about one message.

:class:`PageClient` adds to the transport (:class:`~flask_ampalibe.graph.GraphClient`) the
Messenger Profile API (the Get Started button, the persistent menu), the User Profile API and
personas.  It is the base of :class:`~flask_ampalibe.messenger.Messenger`, which adds the Send
API: use these methods through ``bot.chat``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import requests

from . import ui
from .graph import GraphClient
from .ui import MENU_TITLE_MAX

__all__ = ["PageClient"]


class PageClient(GraphClient):
    """The Page's settings, its users' profiles and its personas (the parameters are
    :class:`~flask_ampalibe.graph.GraphClient`'s)."""

    @property
    def page_id(self) -> str | None:
        """The id of the Page the access token belongs to (asks Graph: ``GET /me?fields=id``)."""
        response = self._request("GET", "/me", label="page_id", params={"fields": "id"}, idempotent=True)
        found = _json_or(response, {}).get("id")
        return str(found) if found is not None else None

    # -- Messenger Profile ---------------------------------------------------------------------
    def get_started(self, payload: Any = "/") -> requests.Response:
        """Set the Get Started button of the Page; tapping it sends ``payload``.

        Example::

            chat.get_started()
        """
        ui.check_payload(payload, "The get_started payload")
        return self._request("POST", "/me/messenger_profile", label="get_started",
                             json_body={"get_started": {"payload": payload}}, idempotent=True)

    def persistent_menu(self, dest_id: str | None, persistent_menu: Iterable[Any], action: str = "PUT", *,
                        locale: str = "default", composer_input_disabled: bool = False,
                        per_user: bool | None = None) -> requests.Response:
        """Set (``action='PUT'``) or remove (``'DELETE'``) the persistent menu.

        As in Ampalibe 1.1.9, with a user's id it is that user's own menu (``custom_user_settings``),
        and removing it removes only theirs.  With ``dest_id=None`` (or ``per_user=False``) it is
        the Page's menu, everyone's (Messenger Profile API).  Items are :class:`~flask_ampalibe.ui.Button` objects or
        dicts with titles of at most 30 characters; a list of complete locale entries (dicts
        with ``call_to_actions``) is sent as it is.  Messenger shows the menu only once
        :meth:`get_started` is set.

        Example::

            persistent_menu = [
                {"type": "postback", "title": "Menu", "payload": "/menu"},
                {"type": "postback", "title": "Logout", "payload": "/logout"},
            ]
            chat.persistent_menu(sender_id, persistent_menu)
        """
        action = str(action).upper()
        if per_user is None:
            per_user = bool(dest_id)
        path = "/me/custom_user_settings" if per_user else "/me/messenger_profile"
        if per_user and not dest_id:
            raise ValueError("persistent_menu(per_user=True) needs the user's id as dest_id.")
        if action == "DELETE":
            if per_user:
                return self._request("DELETE", path, label="persistent_menu", idempotent=True,
                                     params={"psid": str(dest_id), "params": '["persistent_menu"]'})
            return self._request("DELETE", path, label="persistent_menu", idempotent=True,
                                 json_body={"fields": ["persistent_menu"]})
        if action not in ("PUT", "POST"):
            raise ValueError(f"persistent_menu: action must be 'PUT' or 'DELETE', not {action!r}.")
        items = list(persistent_menu)
        if items and all(isinstance(i, Mapping) and "call_to_actions" in i for i in items):
            menus = items
            for menu in menus:
                _check_menu_items(menu["call_to_actions"])
        else:
            _check_menu_items(items)
            menus = [{"locale": locale, "composer_input_disabled": bool(composer_input_disabled),
                      "call_to_actions": items}]
        body: dict[str, Any] = {"persistent_menu": menus}
        if per_user:
            body = {"psid": str(dest_id), **body}
        return self._request("POST", path, label="persistent_menu", json_body=body, idempotent=True)

    # -- users and personas -------------------------------------------------------------------------
    def get_user_profile(self, dest_id: str, fields: str = "first_name,last_name,profile_pic") -> dict[str, Any]:
        """The user's public profile fields, or ``{}`` when Graph gives none (error logged).

        Example::

            chat.get_user_profile(sender_id)["first_name"]
        """
        response = self._request("GET", f"/{dest_id}", label="get_user_profile", params={"fields": fields},
                                 idempotent=True)
        return _json_or(response, {})

    def create_personas(self, name: str, profile_picture_url: str) -> str | None:
        """Create a persona; return its id (``None`` when Graph refused, error logged).

        Send as the persona with ``persona_id=`` on any send method::

            persona_id = chat.create_personas("Rivo", "https://example.com/rivo.png")
            chat.send_text(sender_id, "Hello", persona_id=persona_id)
        """
        response = self._request("POST", "/me/personas", label="create_personas",
                                 json_body={"name": name, "profile_picture_url": profile_picture_url})
        return _json_or(response, {}).get("id")

    def get_personas(self, personas_id: str) -> dict[str, Any]:
        """A persona as a dict (``{}`` when Graph refused, error logged)."""
        response = self._request("GET", f"/{personas_id}", label="get_personas", idempotent=True)
        return _json_or(response, {})

    def list_personas(self) -> list[dict[str, Any]]:
        """Every persona of the Page (all result pages followed)."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        for _ in range(100):  # a bound, in case Graph kept answering the same cursor
            body = _json_or(self._request("GET", "/me/personas", label="list_personas", params=params,
                                          idempotent=True), {})
            found.extend(body.get("data") or ())
            after = ((body.get("paging") or {}).get("cursors") or {}).get("after")
            if not (body.get("paging") or {}).get("next") or not after:
                break
            params = {"after": after}
        return found

    def delete_personas(self, personas_id: str) -> requests.Response:
        """Delete a persona."""
        return self._request("DELETE", f"/{personas_id}", label="delete_personas", idempotent=True)


def _check_menu_items(items: Iterable[Any]) -> None:
    for item in items:
        if not isinstance(item, Mapping):
            raise TypeError(f"A persistent menu item must be a Button or a dict, not {type(item).__name__}.")
        title = item.get("title")
        ui.check_length(title, MENU_TITLE_MAX, f"The persistent menu title {title!r}", "Shorten it.")
        ui.check_button(item, "persistent menu item")


def _json_or(response: requests.Response, default: Any) -> Any:
    """Graph's JSON answer when it is a ``default``-shaped success, else ``default``."""
    if not response.ok:
        return default
    try:
        body = response.json()
    except ValueError:
        return default
    return body if isinstance(body, type(default)) else default

