"""A fast fake Graph API for the benchmark: raw HTTP/1.1 keep-alive on asyncio, loopback only.

It answers ``POST /{version}/me/messages`` (any version, any query string) like the Send API
(``{"recipient_id": ..., "message_id": ...}``) and counts what it receives, so the harness can
measure end-to-end replies without a real network. Counters are read and reset over HTTP:

- ``GET /__stats`` -> JSON: replies, unique recipients, unique reply texts (the bench bots put the
  incoming ``mid`` in the text, so ``replies - unique_texts`` counts double handling), first/last
  reply wall-clock time, replies per wall-clock second, other requests, bad requests.
- ``POST /__reset`` -> zero every counter.

Run ``python bench/fakegraph.py --port 0`` : it prints ``READY <port>`` on stdout once listening.
A single asyncio process does well over ten thousand requests per second on one core
(``python bench/run.py`` measures and reports it), far above what the systems under test reach.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

_MAX_HEADER = 64 * 1024


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.replies = 0
        self.recipients: set = set()
        self.texts: set = set()
        self.first = 0.0
        self.last = 0.0
        self.other = 0
        self.bad = 0
        self.per_second: dict[int, int] = {}  # replies per wall-clock second (int(time.time()))

    def record(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
            rid = str(data["recipient"]["id"])
            msg = data.get("message") or {}
            text = msg.get("text")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.bad += 1
            return b'{"error":{"message":"bad body","type":"OAuthException","code":100}}'
        now = time.time()
        if not self.replies:
            self.first = now
        self.last = now
        self.replies += 1
        second = int(now)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        self.recipients.add(rid)
        if text is not None:
            self.texts.add(text)
        return b'{"recipient_id":"%s","message_id":"m_fake_%d"}' % (rid.encode(), self.replies)

    def stats(self) -> dict:
        return {
            "replies": self.replies,
            "unique_recipients": len(self.recipients),
            "unique_texts": len(self.texts),
            "first_reply": self.first,
            "last_reply": self.last,
            "other_requests": self.other,
            "bad_requests": self.bad,
            "per_second": sorted(self.per_second.items()),
            "pid": os.getpid(),
        }


COUNTERS = Counters()


def _response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 ", status, b"\r\nContent-Type: application/json\r\nContent-Length: ",
            str(len(body)).encode(), b"\r\nConnection: ", b"keep-alive" if keep_alive else b"close",
            b"\r\n\r\n", body,
        )
    )


class GraphProtocol(asyncio.Protocol):
    """One connection; parses pipelined/keep-alive requests out of a byte buffer."""

    def connection_made(self, transport):  # noqa: D401
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEADER:
                    self.transport.close()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            length = 0
            keep_alive = version == "HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection":
                    v = value.strip().lower()
                    keep_alive = v == "keep-alive" or (keep_alive and v != "close")
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4:total])
            del self.buf[:total]
            self.transport.write(self.handle(method, target, body, keep_alive))
            if not keep_alive:
                self.transport.close()
                return

    def handle(self, method: str, target: str, body: bytes, keep_alive: bool) -> bytes:
        path = target.split("?", 1)[0]
        if method == "POST" and path.endswith("/me/messages"):
            return _response(b"200 OK", COUNTERS.record(body), keep_alive)
        if path == "/__stats":
            return _response(b"200 OK", json.dumps(COUNTERS.stats()).encode(), keep_alive)
        if path == "/__reset":
            COUNTERS.reset()
            return _response(b"200 OK", b"{}", keep_alive)
        COUNTERS.other += 1
        return _response(b"200 OK", b'{"success":true}', keep_alive)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(GraphProtocol, host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        sys.exit("fakegraph serves loopback only")
    try:  # optional: faster event loop when installed; plain asyncio is already fast enough
        import uvloop  # type: ignore

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
