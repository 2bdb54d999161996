"""The Blueprint: webhook verification (GET /), reception (POST /), public assets, health.

It stays thin: the body is checked and parsed, every event is recorded durably in the inbox,
the executor is told, and the 200 goes out.  Handlers run after (or, with the ``inline``
executor, before) the answer, never in this module.
"""
from __future__ import annotations

import hmac
import json
import logging
import os

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import NotFound

from .events import BadWebhook, parse_body
from .signature import HEADER, verify_signature

__all__ = ["bp"]

logger = logging.getLogger(__name__)

#: Webhook bodies larger than this are refused (Meta's batches are far smaller).
MAX_BODY = 4 * 1024 * 1024

bp = Blueprint("ampalibe", __name__)


@bp.record_once
def _setup(setup_state: object) -> None:
    app = setup_state.app  # type: ignore[attr-defined]
    if "ampalibe" not in app.extensions:
        from .extension import Ampalibe
        Ampalibe().init_app(app, register_blueprint=False)


def _state():  # type: ignore[no-untyped-def]
    return current_app.extensions["ampalibe"]


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


@bp.get("/")
def verify() -> Response:
    """Facebook's webhook check: echo ``hub.challenge`` when the verify token matches."""
    expected = _state().settings["VERIF_TOKEN"]
    mode = request.args.get("hub.mode")
    token = request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge")
    if mode == "subscribe" and expected and challenge is not None and hmac.compare_digest(
            token.encode(), str(expected).encode()):
        return _text(challenge, 200)
    return _text("Forbidden", 403)


@bp.post("/")
def receive() -> Response:
    """Record every event of the webhook body, then answer 200."""
    state = _state()
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _text("Payload Too Large", 413)
    raw = request.get_data(cache=False)
    secret = state.settings["APP_SECRET"]
    if secret and not verify_signature(str(secret), raw, request.headers.get(HEADER)):
        logger.warning("webhook post refused: missing or wrong %s", HEADER)
        return _text("Forbidden", 403)
    try:
        events = parse_body(json.loads(raw))
    except (ValueError, BadWebhook) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _text(f"Bad Request: {exc}", 400)
    wanted = []
    for event in events:
        if state.router.wants(event):
            wanted.append(event)
        else:
            logger.debug("webhook %s event of %s ignored: no handler for it", event.kind, event.sender_id)
    try:
        users = state.inbox.record(wanted)
    except SQLAlchemyError:
        logger.exception("could not record webhook events; answering 503 so Facebook retries")
        return _text("Service Unavailable", 503)
    state.executor.notify(users)
    return _text("EVENT_RECEIVED", 200)


@bp.get("/asset/<path:filename>")
def asset(filename: str) -> Response:
    """Files of ``assets/public`` (``assets/private`` and anything else is 404)."""
    folder = os.path.join(current_app.root_path, _state().settings["ASSETS_FOLDER"], "public")
    try:
        return send_from_directory(folder, filename)
    except NotFound:
        return _text("Not Found", 404)


@bp.get("/_ampalibe/health")
def health() -> Response:
    """Inbox counts for operators; 404 unless ``AMPALIBE_HEALTH_TOKEN`` is set, 401 without it."""
    token = _state().settings["HEALTH_TOKEN"]
    if not token:
        return _text("Not Found", 404)
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), str(token).encode()):
        return _text("Unauthorized", 401)
    return jsonify(_state().inbox.stats())
