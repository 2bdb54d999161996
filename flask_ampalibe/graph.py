"""The Graph API transport under :class:`~flask_ampalibe.messenger.Messenger`.

A :class:`GraphClient` holds one :class:`requests.Session` (connection pooling), signs every
request with the access token (and ``appsecret_proof`` when an app secret is set), encodes JSON
bodies (:class:`~flask_ampalibe.Payload` objects through ``payload_encoder``) and applies the
retry policy.

Transient Graph errors (rate limits, temporary failures, connection refused) are retried with
exponential backoff and jitter, bounded in count (``max_retries``) and time (``retry_budget``).
A request that may have reached Meta without an answer (a read timeout, a dropped connection) is
never sent again: the Send API has no idempotency key, so a retry could deliver a message twice;
:class:`~flask_ampalibe.errors.GraphTimeout` or :class:`~flask_ampalibe.errors.GraphConnectionError`
is raised instead.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from .errors import ConfigurationError, GraphConnectionError, GraphError, GraphTimeout
from .graphsession import GraphSession

__all__ = ["GraphClient", "GraphErrorInfo", "graph_error", "TRANSIENT_CODES"]

# The transport's records keep the logger name they had when it lived in messenger.py, so logging
# already set up for "flask_ampalibe.messenger" still sees Graph's refusals and the retries.
logger = logging.getLogger("flask_ampalibe.messenger")

#: Graph error codes worth retrying: temporary failures and rate limits.
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 341, 613, 1200})


@dataclass(frozen=True)
class GraphErrorInfo:
    """The ``error`` object of a Graph answer."""

    status: int
    code: int | None
    subcode: int | None
    type: str | None
    message: str | None
    fbtrace_id: str | None


def graph_error(response: requests.Response) -> GraphErrorInfo | None:
    """The Graph error carried by ``response``, or ``None`` when it has none.

    Example::

        res = chat.send_text(sender_id, "Hi")
        err = graph_error(res)
        if err is not None and err.code == 551:
            ...  # the user cannot be reached
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None if response.ok else GraphErrorInfo(response.status_code, None, None, None, None, None)

    def _int(value: Any) -> int | None:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    return GraphErrorInfo(
        status=response.status_code,
        code=_int(error.get("code")),
        subcode=_int(error.get("error_subcode")),
        type=error.get("type"),
        message=error.get("message"),
        fbtrace_id=error.get("fbtrace_id"),
    )


class GraphClient:
    """A client of the Graph API: session, authentication, JSON encoding and retries.

    The base of :class:`~flask_ampalibe.messenger.Messenger`, which passes these keyword
    arguments through.

    :param access_token: the Page access token (an empty one makes every call raise
        :class:`~flask_ampalibe.errors.ConfigurationError`).
    :param graph_url: base URL of the Graph API (tests point it at a fake).
    :param graph_version: the Graph version, e.g. ``"v24.0"``.
    :param app_secret: when set, every request carries ``appsecret_proof``.
    :param timeout: seconds to wait for Graph (connect and read) on every request.
    :param payload_encoder: turns a :class:`~flask_ampalibe.Payload` (any object that is not
        JSON) into its string; ``None`` uses ``str(obj)``.
    :param max_retries: retries of a transient error after the first attempt.
    :param retry_budget: seconds after which no new retry starts.
    :param session: a :class:`requests.Session` to use (one is created otherwise).
    :param pool_maxsize: connections to Graph kept alive for reuse by concurrent calls (the
        app passes ``AMPALIBE_MAX_CONCURRENCY``); ignored with ``session``.

    ``sleep`` and ``clock`` are attributes (``time.sleep`` and ``time.monotonic``) that tests
    may replace; the backoff policy itself stays the same.
    """

    #: Whether credentials and settings are still to be taken from the configured bot (see
    #: :meth:`_bind`): a ``Messenger()`` made without an access token.
    _unbound = False

    #: The credentials (``_auth``'s items) and their encoded query string, built once per
    #: credentials: requests would encode the same ``params`` again on every call.
    _signed: tuple[tuple[tuple[str, str], ...], str] = ((), "")

    #: First backoff delay in seconds, doubled at each retry, capped by :attr:`backoff_max`.
    backoff_base = 0.5
    backoff_max = 8.0

    def __init__(
        self,
        access_token: str,
        *,
        graph_url: str = "https://graph.facebook.com",
        graph_version: str = "v24.0",
        app_secret: str | None = None,
        timeout: float = 10.0,
        payload_encoder: Callable[[Any], str] | None = None,
        max_retries: int = 4,
        retry_budget: float = 30.0,
        session: requests.Session | None = None,
        pool_maxsize: int = 64,
    ) -> None:
        version = str(graph_version).strip("/")
        if not version.startswith("v"):
            version = "v" + version
        self.base_url = f"{graph_url.rstrip('/')}/{version}"
        self.timeout = timeout
        self.payload_encoder = payload_encoder
        self.max_retries = max(0, int(max_retries))
        self.retry_budget = float(retry_budget)
        self.pool_maxsize = max(1, int(pool_maxsize))
        self._own_session = session is None
        self.session = session if session is not None else self._new_session()
        self._auth = {"access_token": access_token or ""}
        if app_secret and access_token:
            proof = hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()
            self._auth["appsecret_proof"] = proof
        self.sleep: Callable[[float], Any] = time.sleep
        self.clock: Callable[[], float] = time.monotonic
        #: Called with the Graph error code (``"551"``), ``"http_<status>"`` or the exception's
        #: class name of every request that ends in an error: the dashboard's counters.
        self.on_error: Callable[[str], Any] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    def _bind(self) -> None:
        """Take credentials and settings from elsewhere before the first request (subclasses)."""
        self._unbound = False

    def _new_session(self) -> requests.Session:
        """A session that reads proxies and the CA bundle from the environment once.

        With ``trust_env`` requests looks them up again on every call, a sizeable part of the
        cost of a send; the environment of a running bot does not change.
        """
        session = GraphSession()  # a short path for the Send API's plain calls
        session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
        # requests keeps 10 connections per host by default: more concurrent calls would open
        # connections that are then dropped ("Connection pool is full, discarding connection").
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_maxsize)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def close(self) -> None:
        """Close the HTTP session (only when this client created it)."""
        if self._own_session:
            self.session.close()

    # -- JSON ----------------------------------------------------------------------------------
    def _default(self, obj: Any) -> Any:
        """``json.dumps`` hook: builders and mappings become dicts, Payloads their string."""
        if isinstance(obj, Mapping):
            return dict(obj)
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        if self.payload_encoder is not None:
            return self.payload_encoder(obj)
        return str(obj)

    def _dumps(self, body: Any) -> bytes:
        return json.dumps(body, default=self._default, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _jsonable(self, value: Any) -> Any:
        """``value`` as plain JSON data, Payloads encoded (what a page store can keep)."""
        return json.loads(self._dumps(value))

    # -- transport -----------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        label: str,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        files: Any = None,
        idempotent: bool = False,
    ) -> requests.Response:
        """Send one Graph request with the retry policy; return Graph's answer.

        ``idempotent`` requests (reads, profile settings) may also be retried after a read
        timeout or a 5xx; the others only when Graph surely did not act on them.
        """
        if self._unbound:
            self._bind()
        if not self._auth["access_token"]:
            raise ConfigurationError(
                f"{label}: no Page access token; set AMPALIBE_ACCESS_TOKEN (Configuration.ACCESS_TOKEN)."
            )
        url, query = self._signed_url(path, params)
        headers = None
        if json_body is not None:
            data = self._dumps(json_body)  # once: every attempt sends the same bytes
            headers = {"Content-Type": "application/json; charset=utf-8"}
        started = self.clock()
        attempt = 0
        while True:
            response: requests.Response | None = None
            failure: GraphError | None = None
            try:
                response = self.session.request(method, url, params=query, data=data, files=files,
                                                headers=headers, timeout=self.timeout)
            except requests.exceptions.ConnectTimeout:
                failure = GraphConnectionError(f"Graph did not accept a connection within {self.timeout}s ({label}).")
                retry, reason = True, "connect timeout"
            except requests.exceptions.ReadTimeout:
                retry, reason = idempotent, "read timeout"
                failure = GraphTimeout(
                    f"Graph did not answer {label} within {self.timeout}s"
                    + ("." if idempotent else "; the request was sent, so it may have been carried out. "
                       "It was not retried, to avoid a double send.")
                )
            except requests.exceptions.ConnectionError as exc:
                never_sent = _never_sent(exc)
                retry, reason = never_sent or idempotent, "connection error"
                if never_sent:
                    failure = GraphConnectionError(f"Graph could not be reached for {label} ({_describe(exc)}).")
                elif idempotent:
                    failure = GraphConnectionError(f"The connection to Graph broke during {label} ({_describe(exc)}).")
                else:
                    failure = GraphConnectionError(
                        f"The connection to Graph broke during {label} ({_describe(exc)}); the request may have been "
                        "carried out, so it was not retried."
                    )
            except requests.exceptions.RequestException as exc:
                # Never chain requests' exception: its text holds the URL and so the access token.
                raise GraphError(f"Graph request {label} failed: {_describe(exc)}") from None
            else:
                if response.ok:
                    return response
                error = graph_error(response)
                retry = self._transient(response, error, idempotent)
                reason = _error_text(error)
                if not retry:
                    _log_error(label, error)
                    self._count_error(error, None)
                    return response

            delay = min(self.backoff_max, self.backoff_base * (2 ** attempt))
            delay = delay / 2 + random.random() * delay / 2  # "equal jitter"
            out_of_budget = self.clock() - started + delay > self.retry_budget
            if not retry or attempt >= self.max_retries or out_of_budget:
                if retry:
                    logger.warning("Graph %s: giving up after %d attempt(s): %s", label, attempt + 1, reason)
                if response is not None:
                    _log_error(label, graph_error(response))
                    self._count_error(graph_error(response), None)
                    return response
                assert failure is not None
                logger.warning("Graph %s: %s", label, failure)
                self._count_error(None, failure)
                raise failure from None
            attempt += 1
            logger.warning("Graph %s: %s; retry %d of %d in %.2fs", label, reason, attempt, self.max_retries, delay)
            self.sleep(delay)

    def _signed_url(self, path: str, params: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any] | None]:
        """``path``'s URL carrying the credentials, and the ``params`` requests is left to add.

        The credentials' query string is encoded once and again only when they change; requests
        appends the call's own ``params`` after it, as it did when both went in one dict.  A call
        whose ``params`` name a credential (they replaced it then) takes the old path.
        """
        credentials = tuple(self._auth.items())
        signed = self._signed
        if signed[0] != credentials:
            signed = self._signed = (credentials, urlencode(credentials))
        if params and not params.keys().isdisjoint(self._auth):
            return self.base_url + path, {**self._auth, **params}
        return f"{self.base_url}{path}?{signed[1]}", params or None

    def _count_error(self, error: GraphErrorInfo | None, failure: BaseException | None) -> None:
        if self.on_error is None or (error is None and failure is None):
            return
        if failure is not None:
            code = type(failure).__name__
        else:
            assert error is not None
            code = str(error.code) if error.code is not None else f"http_{error.status}"
        try:
            self.on_error(code)
        except Exception:  # counting must never break a send
            logger.exception("counting a Graph error failed")

    @staticmethod
    def _transient(response: requests.Response, error: GraphErrorInfo | None, idempotent: bool) -> bool:
        if error is not None and error.code is not None:
            return error.code in TRANSIENT_CODES
        # No Graph error code: 502/503 come from Meta's front end before the request is handled.
        if response.status_code in (502, 503):
            return True
        return idempotent and response.status_code >= 500


# -- helpers ---------------------------------------------------------------------------------------
def _never_sent(exc: BaseException) -> bool:
    """True when the exception proves the request never left (no connection was made)."""
    stack: list[Any] = [exc]
    seen: set[int] = set()
    while stack:
        err = stack.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, (NewConnectionError, ConnectTimeoutError, ConnectionRefusedError, socket.gaierror)):
            return True
        if isinstance(err, MaxRetryError):
            stack.append(err.reason)
        stack.extend(err.args)
        stack.extend((err.__cause__, err.__context__))
    return False


def _describe(exc: BaseException) -> str:
    """The kind of a transport failure, without requests' text (which holds the URL and token)."""
    inner: BaseException | None = exc
    while inner is not None:
        reason = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        if reason is None:
            break
        inner = reason
    return type(inner or exc).__name__


def _error_text(error: GraphErrorInfo | None) -> str:
    if error is None:
        return "no error body"
    return (f"HTTP {error.status}, code={error.code}, subcode={error.subcode}, type={error.type}, "
            f"fbtrace_id={error.fbtrace_id}")


def _log_error(label: str, error: GraphErrorInfo | None) -> None:
    if error is None:
        return
    logger.warning("Graph refused %s: %s: %s", label, _error_text(error), error.message)
