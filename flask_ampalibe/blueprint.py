"""The Blueprint: webhook verification (GET /), reception (POST /), public assets, health.

It only translates: a POST's body stream and signature header go to the app's
:class:`~flask_ampalibe.webhook.Webhook` (the framework-free core that checks, parses and
records the events), and its ``(status, body)`` comes back as the response.  Handlers run
after (or, with the ``inline`` executor, before) the answer, never in this module.
"""
from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import NotFound

from .context import default_router
from .errors import ConfigurationError
from .signature import HEADER
from .state import set_up

if TYPE_CHECKING:
    from .state import AmpalibeState

__all__ = ["bp"]


class _WebhookBlueprint(Blueprint):
    def register(self, app: Any, options: dict) -> None:
        if options.get("name", self.name) in app.blueprints:
            raise ConfigurationError(
                "flask_ampalibe's webhook is already registered on this app: Ampalibe(app) registers it "
                "(at AMPALIBE_URL_PREFIX). Use either Ampalibe(app) or app.register_blueprint(ampalibe.bp), "
                "not both."
            )
        super().register(app, options)


bp = _WebhookBlueprint("ampalibe", __name__)


@bp.record_once
def _setup(setup_state: BlueprintSetupState) -> None:
    app = setup_state.app
    assert isinstance(app, Flask)  # Flask's own blueprints are registered on Flask apps
    if "ampalibe" not in app.extensions:
        # No extension object to register on: the handlers are the module-level decorators'.
        set_up(app, default_router()).set_up_by_blueprint = True


def _state() -> AmpalibeState:
    return current_app.extensions["ampalibe"]


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


# strict_slashes=False: under a prefix (``/messenger``) the webhook answers at ``/messenger`` and
# ``/messenger/`` alike; Facebook does not follow the 308 redirect Flask would answer otherwise.
@bp.get("/", strict_slashes=False)
def verify() -> Response:
    """Facebook's webhook check: echo ``hub.challenge`` when the verify token matches."""
    expected = _state().settings.verif_token
    mode = request.args.get("hub.mode")
    token = request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge")
    if mode == "subscribe" and expected and challenge is not None and hmac.compare_digest(
            token.encode(), str(expected).encode()):
        return _text(challenge, 200)
    return _text("Forbidden", 403)


@bp.post("/", strict_slashes=False)
def receive() -> Response:
    """Hand the body to the app's webhook core (:mod:`flask_ampalibe.webhook`) and answer what it says."""
    status, body = _state().webhook.receive_stream(request.stream, request.content_length, request.headers.get(HEADER))
    return _text(body, status)


@bp.get("/asset/<path:filename>")
def asset(filename: str) -> Response:
    """Files of ``assets/public`` (``assets/private`` and anything else is 404)."""
    folder = os.path.join(current_app.root_path, _state().settings.assets_folder, "public")
    try:
        return send_from_directory(folder, filename)
    except NotFound:
        return _text("Not Found", 404)


@bp.get("/_ampalibe/health")
def health() -> Response:
    """Inbox counts for operators; 404 unless ``AMPALIBE_HEALTH_TOKEN`` is set, 401 without it."""
    token = _state().settings.health_token
    if not token:
        return _text("Not Found", 404)
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), str(token).encode()):
        return _text("Unauthorized", 401)
    return jsonify(_state().inbox.stats())
