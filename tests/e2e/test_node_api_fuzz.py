"""Seeded random input against a running node's API: never a 5xx, never a crash, and the node
still exchanges messages with its peer afterwards.

A generator drawing from ``random.Random(SEED)`` builds requests to every endpoint: wrong
methods, paths and content types; bodies that are invalid UTF-8, invalid or deeply nested
JSON, too large, streamed or forms; wrong types, out-of-range numbers and dates, control
characters; webhook messages with forged senders, ids and acknowledgements; tokens that are
unsigned, forged, expired or absurd; partner statuses of every shape. They reach the API the way
the broker and the PO reach it (``platform.call_api``: real HTTP, or a direct call in memory);
over HTTP a second generator also writes raw bytes to the API's socket (malformed request
lines, headers and framing). A failure names the seed, the case number and the request.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
import pytest

from flame_async import FlameSDK
from flame_async._transport import Body, Multipart, Request
from flame_async.local import LocalPlatform

from .conftest import running

pytestmark = pytest.mark.slow

SEED: Final = 20261126
COUNT: Final = 2_000
BATCH: Final = 4
RAW_COUNT: Final = 200
MAX_BODY: Final = 64 * 1024
PATHS: Final = ("/webhook", "/healthz", "/token_refresh", "/partner_status")
METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
CONTENT_TYPES: Final = (
    "application/json",
    "application/json; charset=utf-8",
    "text/json",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "",
    "json",
    "application/json; charset=latin-1; x=\u00e9",
)
STATUSES: Final = (
    "starting",
    "started",
    "executing",
    "executed",
    "stopping",
    "stopped",
    "failed",
    "stuck",
)
DATES: Final = (
    "2026-01-01 00:00:00",
    "2026-01-01 00:00:00.123456",
    "9999-12-31 23:59:59.999999",
    "0001-01-01 00:00:00",
    "1970-01-01T00:00:00+14:00",
    "2026-13-45 25:61:61",
    "-1",
    "",
    "yesterday",
    "2026-01-01\x00",
    "\u0662\u0660\u0662\u0666-01-01",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One generated request."""

    kind: str
    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | tuple[bytes, ...] | Multipart | None = None

    def request(self) -> Request:
        body: Body = _chunks(self.body) if isinstance(self.body, tuple) else self.body
        return Request(
            self.method, self.path, query_string=self.query, headers=dict(self.headers), body=body
        )

    def __str__(self) -> str:
        body = self.body if not isinstance(self.body, bytes) else self.body[:200]
        return f"{self.kind}: {self.method} {self.path}?{self.query} {self.headers} {body!r}"


_DROP: Final = object()


async def _chunks(parts: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Inputs:
    """Draws requests for node ``me`` of an analysis with one peer, from ``rng`` only.

    Messages that the node would rightly take (from its real peer, well-formed) are drawn
    rarely, never in a reserved category and never with ordering information: those carry
    meaning to the protocol (a finished analysis, a new epoch), not bad input.

    Args:
        rng: Every choice comes from here.
        analysis_id: The node's analysis.
        me: The node under test.
        peer: Its one peer.
        over_http: Requests go over aiohttp's client (headers and paths must be sendable).
    """

    def __init__(
        self, rng: random.Random, *, analysis_id: str, me: str, peer: str, over_http: bool
    ) -> None:
        self.rng = rng
        self.analysis_id = analysis_id
        self.me = me
        self.peer = peer
        self.over_http = over_http

    # -- building blocks -------------------------------------------------------------------

    def text(self, longest: int = 12) -> str:
        rng = self.rng
        alphabets = (
            "abcxyz019-_.",
            "\x00\x01\x07\x1b\x1f\x7f\t\n\r",
            "\u00e9\u00df\u4e2d\u0627\u0662\U0001f600\u200b\ufeff",
            "\"'\\/{}[]:,<>%&?#",
        )
        return "".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(0, longest)))

    def number(self) -> Any:
        return self.rng.choice(
            [0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 1e300, -1e300, 1.5, -0.0, 5e-324]
        )

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(
                [None, True, False, self.number(), self.text(), rng.randint(-9, 9), "", "x" * 300]
            )
        if roll < 0.75:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {self.text(6): self.value(depth + 1) for _ in range(rng.randint(0, 4))}

    def encoded(self, value: Any) -> bytes:
        """``value`` as JSON, sometimes with a number orjson cannot write spliced in."""
        raw = orjson.dumps(value)
        if self.rng.random() < 0.1 and raw.endswith(b"}") and len(raw) > 2:
            number = self.rng.choice(
                [b"1e400", b"-1e400", b"123456789012345678901234567890", b"1e-400", b"NaN"]
            )
            raw = raw[:-1] + b',"n":' + number + b"}"
        return raw

    def broken(self, raw: bytes) -> bytes:
        """``raw`` damaged: cut, invalid UTF-8 or a stray byte."""
        rng = self.rng
        how = rng.randrange(4)
        if how == 0 and raw:
            return raw[: rng.randrange(len(raw))]
        at = rng.randrange(len(raw) + 1)
        insert = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80"])
        if how == 1:
            return raw[:at] + insert + raw[at:]
        if how == 2:
            return raw.replace(b'"', b'"' + insert, 1)
        return raw + rng.choice([b"}", b",", b"]]", b" trailing"])

    def mutated(self, fields: dict[str, Any], bad: dict[str, list[Any]]) -> dict[str, Any]:
        """``fields`` with none, one or two of them replaced by a bad value or removed."""
        rng = self.rng
        fields = dict(fields)
        for name in rng.sample(sorted(bad), rng.choice([0, 1, 1, 2])):
            choice = rng.choice([*bad[name], _DROP])
            if choice is _DROP:
                fields.pop(name, None)
            else:
                fields[name] = choice() if callable(choice) else choice
        return fields

    def token(self) -> Any:
        """A token that is not a platform token: mostly a signed-looking JWT of this analysis
        with one or two things wrong (or nothing but its signature)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            return self.value()
        if roll < 0.2:
            return self.text(40)
        if roll < 0.3:
            return ".".join(self.text(8) for _ in range(rng.randint(1, 5)))
        if roll < 0.33:
            return "a." * rng.randint(5000, 9000)
        now = int(time.time())
        claims = self.mutated(
            {"client_id": self.analysis_id, "sub": self.me, "iat": now, "exp": now + 600},
            {
                "client_id": ["another", "", None, 5, [self.analysis_id], self.text],
                "exp": [
                    *(now - 600, now + 10 * 366 * 86400, 1e300, -1e300, -1, 0, True, None),
                    *(str(now + 600), [now], {"n": now}),
                ],
                "sub": [self.peer, 5, None],
            },
        )
        header = self.mutated(
            {"alg": "HS256", "typ": "JWT"},
            {"alg": ["none", "NONE", "", None, 256, ["HS256"]], "typ": [None, 5]},
        )
        payload = orjson.dumps(claims)
        head = orjson.dumps(header) if rng.random() < 0.95 else orjson.dumps([header])
        if rng.random() < 0.1:
            payload = self.broken(payload)
        signature = rng.choice(["c2lnbmF0dXJl"] * 6 + ["", "!!", "a=", "x y", self.text()])
        return f"{_b64(head)}.{_b64(payload)}.{signature}"

    def meta(self) -> dict[str, Any]:
        """A message ``meta``: mostly well-formed, from a forged sender (a stranger, the node
        itself, a look-alike of its peer) or an acknowledgement of ids nobody sent; one or two
        fields may be wrong."""
        rng = self.rng
        peer = self.peer
        meta: dict[str, Any] = {
            "type": "outgoing",
            "category": rng.choice(["c", "data", self.text() or "c"]),
            "id": rng.choice([f"node-{rng.randrange(99)}", self.text() or "i", "x" * 500]),
            "akn_id": None,
            "status": "unread",
            "sender": rng.choice(
                ["stranger", self.me, self.text() or "s", "x" * 300, f"{peer}\n", peer.upper()]
            ),
            "created_at": rng.choice(DATES),
            "arrived_at": None,
            "number": rng.randrange(10),
        }
        if rng.random() < 0.25:  # an acknowledgement: of this node's messages, or of anyone's
            meta["akn_id"] = rng.choice([peer, self.me, "stranger", self.text() or "a"])
            meta["sender"] = rng.choice([self.me, meta["sender"]])
        optional: dict[str, Any] = {
            "stream": {"epoch": self.text() or "e", "seq": {self.me: 1}, "floor": {}},
            "acks": [self.text() for _ in range(3)],
            "reply_to": self.text(),
            "refused": self.text(),
            "ordered": True,
            "error": self.text(),
        }
        for name in rng.sample(sorted(optional), rng.randint(0, 2)):
            meta[name] = optional[name]
        bad: dict[str, list[Any]] = {
            "id": ["", 12, None, [1]],
            "sender": ["", 5, None],
            "category": [7, None, {}],
            "akn_id": [7, []],
            "type": [5, None],
            "status": [0, None],
            "created_at": [5, [], 1e300],
            "arrived_at": [1, {}],
            "number": ["one", 1.5, None, 1e300, 2**63, 2**64 - 1],
            "stream": [
                {"epoch": self.text(), "seq": {self.me: 0}},
                {"epoch": self.text(), "seq": {self.me: -1}, "floor": {self.me: -5}},
                {"epoch": 5, "seq": {}},
                {"epoch": "e", "seq": {self.me: "x"}},
                {"epoch": "e", "seq": [1]},
                "stream",
            ],
            "acks": ["a", [1, 2]],
            "ordered": ["yes", 2],
            "refused": [5],
        }
        return self.mutated(meta, bad)

    def taken_message(self) -> dict[str, Any]:
        """A well-formed message the node takes: from its peer, or an ack of an unknown id."""
        rng = self.rng
        unknown = f"forged-{rng.randrange(10**9)}"
        meta: dict[str, Any]
        if rng.random() < 0.5:
            meta = {"id": unknown, "sender": self.peer, "category": "fuzz", "akn_id": None}
        else:  # an acknowledgement of a message this node never sent
            meta = {"id": unknown, "sender": self.me, "category": "fuzz", "akn_id": self.peer}
            if rng.random() < 0.5:
                meta["acks"] = [f"forged-{rng.randrange(10**9)}" for _ in range(3)]
        meta["created_at"] = rng.choice(DATES)
        return {"meta": meta, "payload": self.value()}

    # -- requests --------------------------------------------------------------------------

    def headers(self, content_type: str | None) -> tuple[tuple[str, str], ...]:
        rng = self.rng
        headers: list[tuple[str, str]] = []
        if content_type is not None:
            headers.append(("content-type", content_type))
        for _ in range(rng.choice([0, 0, 1, 2])):
            name = rng.choice(["x-fuzz", "accept", "user-agent", "x-forwarded-for", "cookie"])
            value = "".join(rng.choice("abc 019;=,/*\"'") for _ in range(rng.randint(0, 20)))
            if not self.over_http and rng.random() < 0.5:
                value = self.text(20)  # in memory nothing stops control characters
            headers.append((name, value))
        if not self.over_http and rng.random() < 0.1:  # over HTTP the client sets it
            length = rng.choice(["\u00b2", "\u0663", "-1", "abc", " 5 ", "99999999999999999999"])
            headers.append(("content-length", length))
        return tuple(headers)

    def body(self, value: Any) -> bytes | tuple[bytes, ...] | Multipart | None:
        rng = self.rng
        roll = rng.random()
        raw = self.encoded(value)
        if roll < 0.55:
            return raw
        if roll < 0.70:
            return self.broken(raw)
        if roll < 0.75:
            return rng.choice([b"", None, b"null", b"[]", b'"text"', b"1", b"true", b" \n"])
        if roll < 0.80:
            depth = rng.choice([200, 1100, 5000])
            return rng.choice([b"[", b'{"a":']) * depth
        if roll < 0.84:
            size = MAX_BODY + rng.randint(1, MAX_BODY)
            return b'{"pad": "' + b"x" * size + b'"}'
        if roll < 0.92:
            cut = rng.randrange(len(raw) + 1)
            return (raw[:cut], raw[cut:])  # streamed, no Content-Length
        if roll < 0.95:
            return tuple(b"x" * 16 * 1024 for _ in range(rng.randint(5, 8)))  # too large
        return Multipart.form({"token": self.text()}, file=(raw,), filename="f.json")

    def case(self) -> Case:
        rng = self.rng
        kind = rng.choices(
            ["webhook", "token_refresh", "partner_status", "healthz", "elsewhere"],
            weights=[40, 20, 20, 10, 10],
        )[0]
        content_type = rng.choice([*CONTENT_TYPES[:3]] * 6 + [*CONTENT_TYPES, None])
        query = "" if rng.random() < 0.9 else rng.choice(["a=1", "token=x", "%ff%00", "a=" * 50])
        if kind == "elsewhere":
            path = rng.choice(PATHS)
            method = rng.choice([m for m in METHODS if m not in ("POST", "GET", "HEAD")])
            if rng.random() < 0.6:
                path = rng.choice(["/", "/webhooks", "/webhook/", "/%2e%2e/healthz", "/WEBHOOK"])
                path = rng.choice([path, "/" + "a" * 3000, "/caf%C3%A9", "/%ff%fe", "/a%00b"])
                if not self.over_http and rng.random() < 0.5:
                    path = "/" + self.text(30).replace("?", "")  # a query is no path
                method = rng.choice(METHODS)
            value = self.value()
            return Case(kind, method, path, query, self.headers(content_type), self.body(value))
        if kind == "healthz":
            method = rng.choice(["GET", "GET", "HEAD"])
            body = self.body(self.value()) if rng.random() < 0.2 else None
            return Case(kind, method, "/healthz", query, self.headers(content_type), body)
        if kind == "webhook":
            if rng.random() < 0.1:
                message: Any = self.taken_message()
            elif rng.random() < 0.85:
                message = {"meta": self.meta(), **{self.text(5): self.value() for _ in range(2)}}
            else:
                message = self.value()
            value = message
        elif kind == "token_refresh":
            value = {"token": self.token()} if rng.random() < 0.85 else self.value()
            if isinstance(value, dict) and rng.random() < 0.1:
                value[self.text(5)] = self.value()
        else:
            value = {"partner_status": self.partner_statuses()} if rng.random() < 0.85 else {}
        return Case(kind, "POST", f"/{kind}", query, self.headers(content_type), self.body(value))

    def partner_statuses(self) -> Any:
        rng = self.rng
        if rng.random() < 0.15:
            return self.value()
        statuses: dict[str, Any] = {}
        for _ in range(rng.choice([0, 1, 2, 5, 1000])):
            statuses[self.text(10) or "k"] = rng.choice(
                [*STATUSES, None, self.text(), 5, [], {}, 1e300]
            )
        if rng.random() < 0.5:  # the real peer, never reported ended: that is no bad input
            statuses[self.peer] = rng.choice(["executing", "started", None, "stuck"])
        return statuses

    # -- raw bytes on the socket (HTTP only) -------------------------------------------------

    def raw(self) -> bytes:
        rng = self.rng
        path = rng.choice([*PATHS, "/x"]).encode()
        if rng.random() < 0.3:
            path = rng.choice([path + b"\xff", path + b"%", b"*", b"", path + b" x", b"/\x00"])
        method = rng.choice([b"POST", b"GET", b"HEAD", b"BREW", b"P\xd6ST", b""])
        version = rng.choice([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""])
        body = rng.choice([b"{}", b'{"token": "a.b.c"}', b'{"partner_status": {}}', b"", b"{"])
        headers = [b"Host: node", b"Connection: close"]
        if rng.random() < 0.8:
            headers.append(b"Content-Type: application/json")
        framing = rng.randrange(6)
        if framing == 0:
            headers.append(b"Content-Length: %d" % len(body))
        elif framing == 1:
            headers.append(rng.choice([b"Content-Length: -1", b"Content-Length: abc"]))
            headers.append(rng.choice([b"Content-Length: \xc2\xb2", b"Content-Length: 1e3"]))
        elif framing == 2:
            chunk = rng.choice([b"%x\r\n%s\r\n0\r\n\r\n", b"zz\r\n%s\r\n0\r\n\r\n"])
            headers.append(b"Transfer-Encoding: chunked")
            body = chunk.replace(b"%x", b"%x" % len(body)).replace(b"%s", body)
        elif framing == 3:
            headers += [b"Transfer-Encoding: chunked", b"Content-Length: 2"]
        elif framing == 4:
            headers += [b"Content-Encoding: gzip", b"Content-Length: %d" % len(body)]
        for _ in range(rng.randint(0, 2)):
            headers.append(
                rng.choice(
                    [
                        b"X-Fuzz: a\x01b",
                        b"X-Fuzz: \xff\xfe",
                        b"X-Fuzz",
                        b": empty-name",
                        b"X-Fuzz:" + b"v" * 9000,
                        b" X-Folded: yes",
                        b"X-Fuzz: a\rb",
                    ]
                )
            )
        rng.shuffle(headers)
        head = method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(headers)
        return head + b"\r\n\r\n" + body


async def send(platform: LocalPlatform, node_id: str, case: Case) -> tuple[int, bytes]:
    async with platform.call_api(node_id, case.request(), timeout=10) as answer:
        return answer.status, await answer.read()


async def send_raw(port: int, raw: bytes) -> bytes:
    """Write ``raw`` to the API's socket; the answer's status line (b"" if it closed first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):  # a bound, not a wait: "Connection: close" ends it
            answer = await reader.read()
    finally:
        writer.close()
    return answer.partition(b"\r\n")[0]


async def exchange(a: FlameSDK, b: FlameSDK, category: str) -> None:
    report = await a.send_message(b.node_id, {"n": category}, category=category, timeout=10)
    assert report.ok, report
    assert (await b.await_message(a.node_id, category=category, timeout=10)).data == {"n": category}


async def test_random_input_never_gets_a_5xx_and_the_node_keeps_working(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flame_async")
    config = {"max_api_body_bytes": MAX_BODY}
    async with running(2, transport=transport, partner_status_grace=3600, config=config) as (
        platform,
        (a, b),
    ):
        old_token = platform.token(b.node_id)
        rng = random.Random(f"{SEED}-{transport}")
        inputs = Inputs(
            rng,
            analysis_id=platform.analysis_id,
            me=b.node_id,
            peer=a.node_id,
            over_http=transport == "http",
        )
        statuses: Counter[int] = Counter()
        for first in range(0, COUNT, BATCH):  # a few at a time, as the broker and PO overlap
            cases = [inputs.case() for _ in range(BATCH)]
            answers = await asyncio.gather(*(send(platform, b.node_id, c) for c in cases))
            for number, case, (status, body) in zip(
                itertools.count(first), cases, answers, strict=False
            ):
                statuses[status] += 1
                where = f"seed {SEED}-{transport}, case {number}: {case} -> {status} {body[:300]!r}"
                assert status < 500, where
                if status >= 400 and case.method != "HEAD":
                    detail = orjson.loads(body)["detail"]
                    assert isinstance(detail, str) and detail, where

        if transport == "http":
            port = platform.api_port(b.node_id)
            assert port is not None
            for number in range(RAW_COUNT):
                raw = inputs.raw()
                line = await send_raw(port, raw)
                where = f"seed {SEED}-{transport}, raw {number}: {raw[:300]!r} -> {line!r}"
                code = line[9:12]
                assert not code.startswith(b"5"), where
                statuses[int(code) if code.isdigit() else 0] += 1

        # every kind of answer came up, and every refusal was counted with its reason
        assert statuses[200] > 100 and sum(n for s, n in statuses.items() if s >= 400) > 1000
        assert sum(b.rejected_requests.values()) > 1000
        assert len(b.rejected_requests) >= 15
        # the node is whole: its token, its health, its messaging both ways
        assert platform.token(b.node_id) == old_token
        health = orjson.loads((await send(platform, b.node_id, Case("h", "GET", "/healthz")))[1])
        assert health["status"] == "executing"
        assert 3000 < health["token_remaining_time"] <= 3600
        await exchange(a, b, "after fuzz")
        await exchange(b, a, "after fuzz, back")
    problems = [
        r for r in caplog.records if r.name.startswith("flame_async") and r.levelno >= logging.ERROR
    ]
    assert not problems, [r.getMessage() for r in problems]
