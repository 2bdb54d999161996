"""A fake Graph API that listens on loopback and records what a bot sends.

Tests point the library's ``GRAPH_URL`` at :attr:`FakeGraph.url`; the fake answers the
Send API, the Messenger Profile API, user profiles and personas the way Meta documents,
and lets a test inject Graph errors.  It never talks to the real Graph API.

Example::

    with FakeGraph() as graph:
        app.config["AMPALIBE_GRAPH_URL"] = graph.url
        ...
        assert graph.sent_texts("1234") == ["Hello"]
"""
from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeGraph", "RecordedRequest"]


@dataclass
class RecordedRequest:
    """One request the fake Graph API received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str | None, str | None, bytes]] = field(default_factory=dict)

    @property
    def recipient(self) -> str | None:
        """The recipient PSID of a Send API call, whatever its encoding."""
        data = self.json if isinstance(self.json, dict) else None
        if data is None and "recipient" in self.form:
            data = {"recipient": json.loads(self.form["recipient"])}
        if data and isinstance(data.get("recipient"), dict):
            return data["recipient"].get("id")
        return None

    @property
    def message(self) -> dict | None:
        """The ``message`` object of a Send API call (decoded from multipart if needed)."""
        if isinstance(self.json, dict) and "message" in self.json:
            return self.json["message"]
        if "message" in self.form:
            return json.loads(self.form["message"])
        return None


@dataclass
class _Failure:
    status: int
    body: dict | None
    count: int
    match: Callable[[RecordedRequest], bool] | None
    delay: float = 0.0
    drop: bool = False


class _QuietServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` that says nothing when a client hung up before the answer."""

    # socketserver listens with a backlog of 5: a bot with hundreds of handlers sending at once
    # would see connections reset before they are accepted, which the real Graph API never does.
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a read-timeout test, a dropped connection) makes writing the answer
        # fail; that is expected here, and its traceback would only clutter the test output.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class FakeGraph:
    """A threaded HTTP server on ``127.0.0.1`` that plays the Graph API.

    :param version: the Graph version prefix expected in paths (any ``vNN.N`` is accepted).
    :param delay: seconds to wait before answering every request (to simulate a slow Graph).
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "FakeGraph":
        """Start listening on a free loopback port."""
        graph = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                graph._serve(self)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-graph", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and free its port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeGraph":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to use as ``GRAPH_URL``."""
        assert self._server is not None, "FakeGraph is not started"
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # bound to "127.0.0.1" by start()
        return f"http://{host}:{port}"

    # -- test controls ---------------------------------------------------------------
    def fail_next(
        self,
        status: int = 500,
        error: dict | None = None,
        count: int = 1,
        match: Callable[[RecordedRequest], bool] | None = None,
        delay: float = 0.0,
        drop: bool = False,
    ) -> None:
        """Answer the next ``count`` matching requests with an error.

        :param status: HTTP status to answer.
        :param error: the ``error`` object (``{"code": 613, ...}``); ``None`` sends an empty body.
        :param delay: seconds to sleep before answering (a slow Graph, for read timeouts).
        :param drop: close the connection without answering.
        """
        body = {"error": {"message": "fake error", "type": "OAuthException", "fbtrace_id": "FAKE", **error}} if error else None
        with self._lock:
            self._failures.append(_Failure(status, body, count, match, delay, drop))

    def clear(self) -> None:
        """Forget recorded requests and pending failures."""
        with self._lock:
            self.requests.clear()
            self._failures.clear()

    def wait_for(self, count: int, timeout: float = 10.0, predicate: Callable[[RecordedRequest], bool] | None = None) -> list[RecordedRequest]:
        """Block until at least ``count`` (matching) requests arrived; return them.

        :raises AssertionError: when they did not arrive within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.requests if predicate is None or predicate(r)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} Graph requests within {timeout}s, got {len(found)}: {found!r}")
                self._lock.wait(left)

    def sends(self, recipient: str | None = None) -> list[RecordedRequest]:
        """Send API calls (``/me/messages``), optionally only those to ``recipient``."""
        with self._lock:
            return [
                r for r in self.requests
                if r.path.endswith("/messages") and (recipient is None or r.recipient == str(recipient))
            ]

    def sent_messages(self, recipient: str | None = None) -> list[dict]:
        """The ``message`` objects sent, in order."""
        return [m for m in (r.message for r in self.sends(recipient)) if m is not None]

    def sent_texts(self, recipient: str | None = None) -> list[str]:
        """The texts of the text messages sent, in order."""
        return [m["text"] for m in self.sent_messages(recipient) if "text" in m]

    # -- serving ---------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        headers = {k: v for k, v in handler.headers.items()}
        record = RecordedRequest(handler.command, parts.path, query, headers, body)
        ctype = handler.headers.get("Content-Type", "")
        if ctype.startswith("application/json") and body:
            try:
                record.json = json.loads(body)
            except ValueError:
                record.json = None
        elif ctype.startswith("multipart/form-data"):
            self._parse_multipart(record, ctype)
        elif ctype.startswith("application/x-www-form-urlencoded"):
            record.form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}

        with self._lock:
            failure = next((f for f in self._failures if f.match is None or f.match(record)), None)
            if failure is not None:
                failure.count -= 1
                if failure.count <= 0:
                    self._failures.remove(failure)
            self.requests.append(record)
            self._lock.notify_all()

        delay = self.delay + (failure.delay if failure else 0.0)
        if delay:
            time.sleep(delay)
        if failure is not None:
            if failure.drop:
                handler.close_connection = True
                handler.connection.close()
                return
            self._answer(handler, failure.status, failure.body)
            return
        self._answer(handler, 200, self._success(record))

    def _success(self, record: RecordedRequest) -> dict:
        path = record.path.rstrip("/")
        if path.endswith("/messages"):
            if isinstance(record.json, dict) and "sender_action" in record.json:
                return {"recipient_id": record.recipient}
            answer = {"recipient_id": record.recipient, "message_id": f"m_fake_{next(self._ids)}"}
            message = record.message or {}
            attachment = message.get("attachment") or {}
            if (attachment.get("payload") or {}).get("is_reusable") or "filedata" in record.files:
                answer["attachment_id"] = str(1000 + next(self._ids))
            return answer
        if path.endswith("/message_attachments"):
            return {"attachment_id": str(1000 + next(self._ids))}
        if path.endswith("/personas"):
            if record.method == "POST":
                return {"id": str(2000 + next(self._ids))}
            return {"data": []}
        if path.endswith("/messenger_profile") or path.endswith("/custom_user_settings"):
            return {"result": "success"}
        if record.method == "DELETE":
            return {"success": True}
        if path.rsplit("/", 1)[-1] == "me":  # the Page the token belongs to
            from .webhook import PAGE_ID
            return {"id": PAGE_ID, "name": "Fake Page"}
        # a user profile: GET /{version}/{psid}
        psid = path.rsplit("/", 1)[-1]
        return {"first_name": "Test", "last_name": f"User{psid}", "profile_pic": "https://example.invalid/p.png", "id": psid}

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, body: dict | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _parse_multipart(record: RecordedRequest, ctype: str) -> None:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + record.body
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):  # no field name (None), or an RFC 2231 one (a tuple): not a form field
                continue
            filename = part.get_filename()
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):  # None for a nested multipart part
                payload = b""
            if filename is not None:
                record.files[name] = (filename, part.get_content_type(), payload)
            else:
                record.form[name] = payload.decode()
