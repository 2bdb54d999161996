"""The webhook core: what a POST to the webhook does, with no web framework in sight.

:class:`Webhook` runs the whole pipeline on bytes and a header value and returns the answer
as ``(status, body)``; the Flask Blueprint only translates a request into that call and the
result into a response::

    body limit (413) → signature (403) → parse (400 if not JSON or not a page webhook)
        → validate every item: a valid one is kept if a handler wants it, an invalid one is
          logged and kept as ``rejected`` with its reason
        → record them in the inbox (503 if the database is down) → notify the executor → 200

Nothing a sender can put in a body gives another answer: a 5xx only ever means our own outage.

The limit holds while reading: a body sent without ``Content-Length`` (chunked, streamed) is
read at most one byte past the limit, before its signature is checked.
"""
from __future__ import annotations

import json
import logging
from typing import IO, Any, Callable, Iterable, NamedTuple

from sqlalchemy.exc import SQLAlchemyError

from .dberrors import is_unavailable
from .events import BadWebhook, Event, parse_body
from .schema import SchemaError
from .signature import verify_signature

__all__ = ["Webhook", "Answer", "MAX_BODY", "read_limited"]

logger = logging.getLogger(__name__)

#: Webhook bodies larger than this are refused (Meta's batches are far smaller).
MAX_BODY = 4 * 1024 * 1024
#: At most this many rejected items of one body are kept (and logged); the others only counted.
MAX_REJECTED = 100

_CHUNK = 64 * 1024


class Answer(NamedTuple):
    """What the webhook answers: an HTTP status and a short plain-text body."""

    status: int
    body: str


OK = Answer(200, "EVENT_RECEIVED")
TOO_LARGE = Answer(413, "Payload Too Large")
FORBIDDEN = Answer(403, "Forbidden")
UNAVAILABLE = Answer(503, "Service Unavailable")


def read_limited(stream: IO[bytes], limit: int, length: int | None = None) -> bytes | None:
    """Read ``stream`` to its end, or give up once it holds more than ``limit`` bytes.

    :param length: the declared ``Content-Length``, if any: a larger one is refused unread.
    :returns: the bytes, or ``None`` when the body is over the limit (never reads more than
        ``limit + 1`` bytes of it).
    """
    if length is not None and length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


class Webhook:
    """The webhook pipeline of one app.

    :param record: stores events durably and returns the users that have events now
        (:meth:`flask_ampalibe.inbox.Inbox.record`).
    :param notify: tells the executor which users have events.
    :param secret: the Facebook app secret; ``None`` or empty accepts unsigned posts.
    :param wants: whether any handler takes an event (those nobody handles are not recorded).
    :param max_body: the largest body accepted, in bytes.
    :param outage: where database outages are reported (:class:`flask_ampalibe.dberrors.Outage`).

    Example (any framework)::

        hook = Webhook(inbox.record, executor.notify, secret="…", wants=router.wants)
        status, text = hook.receive_stream(environ["wsgi.input"], content_length,
                                           headers.get("X-Hub-Signature-256"))
    """

    def __init__(self, record: Callable[[list[Event]], list[str]], notify: Callable[[Iterable[str]], None],
                 secret: str | None = None, wants: Callable[[Event], bool] | None = None,
                 max_body: int = MAX_BODY, outage: Any = None) -> None:
        self.record = record
        #: A :class:`flask_ampalibe.dberrors.Outage`: database outages are reported there, in one
        #: line when they start and end, instead of a traceback per refused post.
        self.outage = outage
        self.notify = notify
        self.secret = str(secret) if secret else None
        self.wants = wants
        self.max_body = max_body

    def receive_stream(self, stream: IO[bytes], length: int | None, signature: str | None) -> Answer:
        """Read the body from ``stream`` under the size limit, then :meth:`receive` it."""
        raw = read_limited(stream, self.max_body, length)
        if raw is None:
            return TOO_LARGE
        return self.receive(raw, signature)

    def receive(self, raw: bytes, signature: str | None) -> Answer:
        """Handle one webhook POST whose body is ``raw`` and ``X-Hub-Signature-256`` is ``signature``."""
        if len(raw) > self.max_body:
            return TOO_LARGE
        if self.secret and not verify_signature(self.secret, raw, signature):
            logger.warning("webhook post refused: missing or wrong X-Hub-Signature-256")
            return FORBIDDEN
        try:
            events = parse_body(_loads(raw))
        except BadWebhook as exc:
            return Answer(400, f"Bad Request: {exc}")
        wanted, rejected = [], 0
        for event in events:
            if event.problem is not None:
                rejected += 1
                if rejected <= MAX_REJECTED:
                    logger.warning("webhook item rejected (%s, user %r): %s; kept for `ampalibe inbox rejected`, "
                                   "never handled", event.kind, event.sender_id, event.problem)
                    wanted.append(event)
            elif self.wants is None or self.wants(event):
                wanted.append(event)
            else:
                logger.debug("webhook %s event of %s ignored: no handler for it", event.kind, event.sender_id)
        if rejected > MAX_REJECTED:
            logger.warning("%s more rejected items of the same webhook body were not kept", rejected - MAX_REJECTED)
        try:
            users = self.record(wanted)
        except SQLAlchemyError as exc:
            if self.outage is not None and is_unavailable(exc):  # one line when an outage starts, not per post
                self.outage.webhook_failed(exc)
            else:
                logger.exception("could not record webhook events; answering 503 so Facebook retries")
            return UNAVAILABLE
        except SchemaError as exc:  # the database needs `ampalibe db upgrade`: one line, no traceback
            logger.error("could not record webhook events (answering 503 so Facebook retries): %s", exc)
            return UNAVAILABLE
        if self.outage is not None:
            self.outage.succeeded()
        self.notify(users)
        return OK


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadWebhook(f"the body is not JSON ({type(exc).__name__})") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would read NaN, Infinity and -Infinity
