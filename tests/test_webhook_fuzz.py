"""A seeded fuzz of the webhook route on SQLite and PostgreSQL (issue 12).

Each run posts ``AMPALIBE_FUZZ_BODIES`` (10,000) bodies through the real route (the Flask test
client, in process): valid batches, batches mixing valid events with structurally mutated items,
byte-level mutations of signed bodies, forged signatures, redeliveries and junk envelopes.  It
asserts that no answer is a 5xx, that no forged body is accepted (nothing of it is recorded or
handled), that every valid event is handled exactly once and in its user's timestamp order (with
the users' lanes drained while the fuzz goes on), that nothing recorded fails before its handler,
and that a valid message is handled at once afterwards.

The generator is seeded (``AMPALIBE_FUZZ_SEED``, default 12): a failure is reproduced by
running the same seed again.
"""
from __future__ import annotations

import io
import json
import os
import random
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select

import flask_ampalibe
from flask_ampalibe.signature import HEADER, generate_signature
from flask_ampalibe.tables import inbox as inbox_table
from flask_ampalibe.testing import PAGE_ID
from flask_ampalibe.webhook import MAX_BODY
from conftest import SECRET

BODIES = int(os.environ.get("AMPALIBE_FUZZ_BODIES", "10000"))
SEED = int(os.environ.get("AMPALIBE_FUZZ_SEED", "12"))
DRAIN_EVERY = 500  # bodies between two drains of every user's lane

USERS = [f"fz{n}" for n in range(24)]
HOSTILE_STRINGS = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff\ud800", "\U0001f600" * 3, "x" * 65, "y" * 200, "z" * 3000,
    "\u00e9", "\u2028", "%s%n", "'; DROP TABLE amp_inbox;--", "\\", '"', "null", "\U0001f3f3\ufe0f\u200d\U0001f308",
    "\U0010ffff", "\ufeff", "~amp.forged", "/", "__amp_next x", "PAGE1",
]
HOSTILE_NUMBERS = [0, -1, 1, 2 ** 31, 2 ** 53, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 10 ** 30,
                   1.5, -0.0, 1e308, 1e-308, 5e-324]
KINDS = ["message", "postback", "read", "delivery", "reaction", "referral", "optin", "message_edit",
         "pass_thread_control", "app_roles", "policy_enforcement", "brand_new_kind", "sender", "recipient"]
BYTE_INSERTS = [b"\x00", b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\\u0000", b"\\ud800", b"[" * 1200, b"{", b"}",
                b",", b"1e999", b"-", b'"', b"\\", b"NaN", b"Infinity", b"9" * 5000, b"\xf0\x9f\x98\x80"]


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for n in range(levels):
        value = [value] if n % 2 else {"d": value}
    return value


class Fuzzer:
    """Builds the bodies; knows which events are valid and must be handled."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.clock = 1_700_000_000_000
        self.good: dict[str, list[str]] = defaultdict(list)  # user -> valid mids, in timestamp order
        self.sent_bodies: list[bytes] = []

    def _next(self) -> int:
        self.n += 1
        return self.n

    def _tick(self) -> int:
        self.clock += self.rng.randint(1, 5)
        return self.clock

    def good_event(self) -> dict:
        """A valid event of one of the users, with a mid seen nowhere else."""
        user, n = self.rng.choice(USERS), self._next()
        mid = f"good-{n}"
        envelope = {"sender": {"id": user}, "recipient": {"id": PAGE_ID}, "timestamp": self._tick()}
        shape = self.rng.randrange(4)
        if shape == 0:
            envelope["message"] = {"mid": mid, "text": self.rng.choice(["hi", "caf\u00e9 \U0001f600", f"t{n}", "a\x00b"])}
        elif shape == 1:
            envelope["message"] = {"mid": mid, "text": "r", "quick_reply": {"payload": f"QR_{n}"}}
        elif shape == 2:
            envelope["postback"] = {"mid": mid, "title": "Go", "payload": f"PB_{n}"}
        else:
            envelope["message"] = {"mid": mid, "attachments": [
                {"type": "image", "payload": {"url": f"https://example.invalid/{n}.png"}}]}
        self.good[user].append(mid)
        return envelope

    def victim(self) -> Any:
        """An item mutated from a valid one: maybe still valid (then handled), maybe not (rejected)."""
        n = self._next()
        item: Any = {"sender": {"id": self.rng.choice(USERS)}, "recipient": {"id": PAGE_ID},
                     "timestamp": self._tick(),
                     "message": {"mid": f"victim-{n}", "text": "v", "quick_reply": {"payload": "p"},
                                 "attachments": [{"type": "image", "payload": {"url": "https://x.invalid/v"}}]}}
        for _ in range(self.rng.randint(1, 3)):
            item = self.mutate(item)
        return item

    def hostile(self) -> Any:
        pick = self.rng.randrange(10)
        if pick < 4:
            return self.rng.choice(HOSTILE_STRINGS)
        if pick < 7:
            return self.rng.choice(HOSTILE_NUMBERS)
        return self.rng.choice([True, False, None, [], {}, [1, "a"], {"id": "x"}, {"id": 5}, _deep(40), _deep(8),
                                [{"type": "image"}], {"payload": 7}])

    def mutate(self, value: Any) -> Any:
        """Replace, delete, add or rename somewhere inside ``value``."""
        if not isinstance(value, (dict, list)) or not value or self.rng.random() < 0.25:
            return self.hostile()
        if isinstance(value, list):
            index = self.rng.randrange(len(value))
            value = list(value)
            value[index] = self.mutate(value[index])
            return value
        value = dict(value)
        key = self.rng.choice(list(value))
        action = self.rng.randrange(5)
        if action == 0:
            del value[key]
        elif action == 1:
            value[self.rng.choice(KINDS + ["mid", "text", "id", "attachments", "is_echo"])] = self.hostile()
        elif action == 2:
            value[self.rng.choice(KINDS)] = value.pop(key)
        else:
            value[key] = self.mutate(value[key])
        return value

    @staticmethod
    def page(*items: Any, standby: list | None = None) -> dict:
        entry: dict = {"id": PAGE_ID, "time": 1, "messaging": list(items)}
        if standby:
            entry["standby"] = standby
        return {"object": "page", "entry": [entry]}

    def dumps(self, body: Any) -> bytes:
        if self.rng.random() < 0.2:  # raw UTF-8 (and CESU-8 for lone surrogates), as some senders do
            return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return json.dumps(body).encode()

    def chaos(self, raw: bytes) -> bytes:
        data = bytearray(raw)
        for _ in range(self.rng.randint(1, 4)):
            pos = self.rng.randrange(len(data) + 1)
            action = self.rng.randrange(5)
            if action == 0 and data:
                data[min(pos, len(data) - 1)] = self.rng.randrange(256)
            elif action == 1:
                data[pos:pos] = self.rng.choice(BYTE_INSERTS)
            elif action == 2:
                del data[pos:pos + self.rng.randint(1, 20)]
            elif action == 3:
                data[pos:pos] = data[max(0, pos - 30):pos]
            else:
                del data[pos:]
        return bytes(data)

    def forged_signature(self, raw: bytes) -> tuple[bytes, str | None]:
        """A body and a signature header that does not authenticate it."""
        good = generate_signature(SECRET, raw)
        pick = self.rng.randrange(7)
        if pick == 0:
            return raw, None
        if pick == 1:
            return raw, "sha256=" + "0" * 64
        if pick == 2:
            return raw, generate_signature("not-the-secret", raw)
        if pick == 3:
            return raw, good[:-1]
        if pick == 4:
            return raw, "sha256=\u00e9" + good[8:]
        if pick == 5:
            return raw, good.replace("sha256=", "sha1=")
        return self.chaos(raw) + b" ", good  # tampered after signing (never equal: one byte longer)

    def bodies(self, count: int) -> Iterator[tuple[str, bytes, str | None]]:
        """``(family, raw body, signature header)``."""
        for _ in range(count):
            family = self.rng.choices(["good", "mixed", "chaos", "forged", "envelope", "redeliver"],
                                      [15, 25, 25, 20, 10, 5])[0]
            if family == "redeliver" and not self.sent_bodies:
                family = "good"
            if family == "redeliver":
                raw = self.rng.choice(self.sent_bodies)
                yield family, raw, generate_signature(SECRET, raw)
            elif family == "good":
                body = self.page(*(self.good_event() for _ in range(self.rng.choice((1, 1, 1, 2)))))
                raw = self.dumps(body)
                self.sent_bodies.append(raw)
                yield family, raw, generate_signature(SECRET, raw)
            elif family == "mixed":
                items = [self.good_event()]
                items += [self.victim() for _ in range(self.rng.randint(1, 3))]
                self.rng.shuffle(items)
                standby = [self.victim()] if self.rng.random() < 0.2 else None
                raw = self.dumps(self.page(*items, standby=standby))
                self.sent_bodies.append(raw)
                yield family, raw, generate_signature(SECRET, raw)
            elif family == "chaos":
                raw = self.chaos(self.dumps(self.page(*(self.victim() for _ in range(self.rng.randint(1, 3))))))
                yield family, raw, generate_signature(SECRET, raw)
            elif family == "forged":
                n = self._next()
                body = self.page({"sender": {"id": self.rng.choice(USERS)}, "recipient": {"id": PAGE_ID},
                                  "timestamp": self._tick(), "message": {"mid": f"forged-{n}", "text": "forged"}})
                raw, signature = self.forged_signature(self.dumps(body))
                yield family, raw, signature
            else:
                body = {"object": self.rng.choice(["page", "page", "user", 1, None]),
                        "entry": self.mutate([{"id": PAGE_ID, "time": 1, "messaging": [self.victim()]}])}
                raw = self.dumps(self.mutate(body) if self.rng.random() < 0.3 else body)
                yield family, raw, generate_signature(SECRET, raw)


EXPECTED = {"good": {200}, "mixed": {200}, "redeliver": {200}, "forged": {403}, "chaos": {200, 400},
            "envelope": {200, 400}}


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzz_url(request: Any, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fuzz.db'}"
    server = request.getfixturevalue("postgresql_server")
    server.reset()
    return server.url


def test_fuzzed_webhook_bodies(fuzz_url, tmp_path, graph):
    app = Flask("fuzz", instance_path=str(tmp_path / "instance"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_VERIF_TOKEN="v", AMPALIBE_APP_SECRET=SECRET,
                      AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="worker", AMPALIBE_DATABASE_URL=fuzz_url)
    router = flask_ampalibe.Router()
    handled: dict[str, list[str]] = defaultdict(list)

    @router.command("/")
    def main(sender_id: str, event: Any, **extends: Any) -> None:
        handled[sender_id].append(str(event.mid))

    flask_ampalibe.Ampalibe(app, router=router)
    state = app.extensions["ampalibe"]
    client = app.test_client()
    post: Callable[[bytes, str | None], Any] = lambda raw, sig: client.post(
        "/", data=raw, headers={HEADER: sig, "Content-Type": "application/json"} if sig else {})

    def drain() -> None:
        while True:
            users = state.inbox.ready_users(limit=10_000)
            if not users:
                return
            for user in users:
                state.executor.drain(user)

    fuzzer = Fuzzer(SEED)
    statuses: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    started, cpu = time.monotonic(), time.process_time()
    try:
        for count, (family, raw, signature) in enumerate(fuzzer.bodies(BODIES), 1):
            status = post(raw, signature).status_code
            statuses[family][status] += 1
            assert status in EXPECTED[family], (family, status, raw[:300], SEED)
            if count % DRAIN_EVERY == 0:
                drain()
        for _ in range(3):  # over the size limit, sent without Content-Length (streamed)
            big = json.dumps(Fuzzer.page({"sender": {"id": "fz0"}, "recipient": {"id": PAGE_ID}, "timestamp": 1,
                                          "message": {"mid": "too-big", "text": "x" * MAX_BODY}})).encode()
            response = client.post("/", input_stream=io.BytesIO(big), environ_overrides={"wsgi.input_terminated": True},
                                   headers={HEADER: generate_signature(SECRET, big)})
            assert response.status_code == 413
        drain()
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu

        # Every valid event was handled exactly once, each user's in timestamp order.
        for user in USERS:
            got = [mid for mid in handled[user] if mid.startswith("good-")]
            assert got == fuzzer.good[user], (user, SEED)
        assert not any(mid.startswith("forged-") for mids in handled.values() for mid in mids)
        with state.store.engine.connect() as conn:
            forged_rows = conn.execute(select(func.count()).select_from(inbox_table)
                                       .where(inbox_table.c.body.like("%forged-%"))).scalar()
        assert forged_rows == 0
        stats = state.inbox.stats()
        assert (stats["pending"], stats["running"], stats["failed"]) == (0, 0, 0), stats
        assert stats["rejected"] > 0 and statuses["chaos"][400] > 0 and statuses["forged"][403] > 0

        # And the next valid message of a user is handled at once: no lane is blocked.
        raw = json.dumps(Fuzzer.page({"sender": {"id": "fz1"}, "recipient": {"id": PAGE_ID},
                                      "timestamp": fuzzer.clock + 10, "message": {"mid": "after", "text": "hello"}}))
        assert post(raw.encode(), generate_signature(SECRET, raw.encode())).status_code == 200
        assert state.executor.drain("fz1") == 1 and handled["fz1"][-1] == "after"
    finally:
        state.shutdown(timeout=5)
        state.store.engine.dispose()
    print(f"\n{BODIES} fuzzed bodies on {state.store.engine.dialect.name} in {elapsed:.1f} s "
          f"({cpu:.1f} s of this process's CPU); answers: " + ", ".join(
              f"{family} {dict(counts)}" for family, counts in sorted(statuses.items()))
          + f"; inbox: {stats}")
