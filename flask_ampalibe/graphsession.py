"""The HTTP session of a :class:`~flask_ampalibe.graph.GraphClient` that made its own.

A :class:`requests.Session` prepares every call from scratch: it merges the session's headers,
cookies, auth, hooks and environment settings into the call's, parses and re-quotes the URL, then
sends and looks for cookies and redirects in the answer.  For the Send API (a JSON ``POST`` to one
of a handful of URLs) most of that work finds nothing to do, and it was about half of the CPU a
send cost (``bench/ANALYSIS.md``, fourteenth session).

:class:`GraphSession` takes a shorter path for the calls that need none of it: bytes for a body,
no ``params``, ``files`` or other per-call options, and a session without auth, cookies, default
params, response hooks or ``trust_env``.  The request goes straight to the adapter mounted for its
URL, with the session's headers, proxies, ``verify`` and ``cert``, as :meth:`requests.Session.send`
would pass them; a URL is prepared once and remembered.  Errors are requests' own (the adapter
raises them).  Any other call, or any call once the session has auth, cookies or hooks, takes
requests' usual path.

What the short path does not do: follow a redirect (Graph answers its API calls without one; a
3xx comes back as the response, which the client reports as an error) or keep the answer's
cookies.
"""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import requests
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict

__all__ = ["GraphSession"]

#: Prepared URLs remembered per session (a bot calls a few; past this many they are not kept).
_URLS_KEPT = 64


class GraphSession(requests.Session):
    """A :class:`requests.Session` with a short path for plain calls (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._urls: dict[str, str] = {}

    def _plain(self) -> bool:
        """The session adds nothing a call must carry or an answer must feed (auth, cookies, …)."""
        return not (self.trust_env or self.auth is not None or self.params or len(self.cookies)
                    or any(self.hooks.values()))

    def request(self, method: str, url: Any, params: Any = None, data: Any = None,  # type: ignore[override]
                headers: Any = None, files: Any = None, timeout: Any = None, **options: Any) -> requests.Response:
        if params or files or options or not isinstance(data, bytes) or not isinstance(url, str) \
                or not self._plain():
            return super().request(method, url, params=params, data=data, headers=headers, files=files,
                                   timeout=timeout, **options)
        prepared = PreparedRequest()
        prepared.method = method.upper()
        prepared.url = self._prepared_url(url)
        merged: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(self.headers)
        if headers:
            merged.update(headers)
        merged["Content-Length"] = str(len(data))
        prepared.headers = merged
        prepared.body = data
        started = time.perf_counter()
        response = self.get_adapter(prepared.url).send(prepared, stream=False, timeout=timeout, verify=self.verify,
                                                        cert=self.cert, proxies=self.proxies)
        response.elapsed = timedelta(seconds=time.perf_counter() - started)
        response.content  # read the body: the connection goes back to the pool  # noqa: B018
        return response

    def _prepared_url(self, url: str) -> str:
        prepared = self._urls.get(url)
        if prepared is None:
            probe = PreparedRequest()
            probe.prepare_url(url, None)
            prepared = probe.url
            assert prepared is not None
            if len(self._urls) < _URLS_KEPT:
                self._urls[url] = prepared
        return prepared
