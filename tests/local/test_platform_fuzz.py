"""No input gets a 5xx from the local platform, and none makes it hold on to memory.

A seeded generator sends a few thousand requests through the gateways to every service (bad
JSON, wrong types, huge and deeply nested bodies, invalid UTF-8, wrong content types,
out-of-range numbers and dates, control characters in names and file names, forged ids, other
nodes' tokens, and over HTTP oversize headers and malformed request heads). Then two real
``FlameSDK`` nodes must still exchange messages on the same platform, and the process's
resident memory must have grown by less than 100 MB.
"""

from __future__ import annotations

import gc
import io
import json
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import psutil
import pytest
from aiohttp import web
from yarl import URL

from flame_async import FlameSDK
from flame_async._transport import Buffer, Multipart, Part, Request, Response
from flame_async.local import LocalPlatform, MemoryTransport
from flame_async.local._tokens import TokenIssuer

pytestmark = pytest.mark.slow

SEED = 20261126
REQUESTS = 3000  # per transport, besides the raw HTTP heads
RSS_BUDGET = 100 * 1024 * 1024
MiB = 1 << 20


# -- what a case is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawPart:
    """A multipart part as bytes on the wire (names may hold anything)."""

    name: bytes | None
    data: bytes
    filename: bytes | None = None
    content_type: bytes | None = None
    extra: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class RawForm:
    parts: tuple[RawPart, ...]
    closed: bool = True  # False: the closing boundary is missing

    def encode(self, boundary: bytes) -> bytes:
        out = bytearray()
        for part in self.parts:
            out += b"--" + boundary + b"\r\n"
            disposition = b"form-data"
            if part.name is not None:
                disposition += b'; name="' + part.name + b'"'
            if part.filename is not None:
                disposition += b'; filename="' + part.filename + b'"'
            out += b"Content-Disposition: " + disposition + b"\r\n"
            if part.content_type is not None:
                out += b"Content-Type: " + part.content_type + b"\r\n"
            for line in part.extra:
                out += line + b"\r\n"
            out += b"\r\n" + part.data + b"\r\n"
        if self.closed:
            out += b"--" + boundary + b"--\r\n"
        return bytes(out)

    def multipart(self) -> Multipart:
        def text(raw: bytes | None) -> str | None:
            return None if raw is None else raw.decode("utf-8", "surrogateescape")

        return Multipart(
            tuple(
                Part(
                    text(p.name) or "",
                    (p.data,),
                    filename=text(p.filename),
                    content_type=(p.content_type or b"").decode("latin-1")
                    or "application/octet-stream",
                )
                for p in self.parts
            )
        )


@dataclass(frozen=True)
class Stream:
    """A body of ``size`` bytes sent without a length (chunked over HTTP)."""

    size: int
    byte: bytes = b"x"

    async def chunks(self) -> AsyncIterator[Buffer]:
        left = self.size
        while left > 0:
            yield self.byte * min(left, MiB)
            left -= MiB


Body = bytes | RawForm | Stream | None


@dataclass
class Case:
    gateway: str
    method: str
    path: str  # percent-encoded
    query: str = ""
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Body = None
    shared: bool = False  # over HTTP: through the shared port with a Host header


# -- the generator ----------------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """JSON as anyone may write it: big integers, NaN, lone surrogates (invalid UTF-8) too."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


class Fuzzer:
    """Seeded requests against every service of ``platform``'s gateways."""

    def __init__(self, rng: random.Random, platform: LocalPlatform) -> None:
        self.rng = rng
        self.platform = platform
        self.nodes = list(platform.node_ids)
        other = TokenIssuer(platform.analysis_id, lifetime=60)
        self.bad_tokens = [
            "",
            "not-a-jwt",
            "a.b.c",
            other.mint("node-1"),
            other.mint("node-1", lifetime=-5),
            TokenIssuer("other-analysis", lifetime=60).mint("node-2"),
            "x" * 5000,
            "ü.ö.ä",
        ]
        self.object_ids: list[str] = [str(uuid.UUID(int=0))]
        self.subscription_ids: list[str] = [str(uuid.uuid4())]
        self.makers: list[tuple[int, Callable[[Case], None]]] = [
            (4, self.broker_send),
            (1, self.broker_broadcast),
            (2, self.broker_subscribe),
            (2, self.broker_read),
            (4, self.storage_upload),
            (3, self.storage_read),
            (3, self.po_log),
            (1, self.hub_adapter),
            (2, self.kong),
            (1, self.admin),
            (1, self.analysis),
            (1, self.junk),
        ]

    # pieces

    def pick(self, *options: Any) -> Any:
        return self.rng.choice(options)

    def token(self, gateway: str) -> str | None:
        roll = self.rng.random()
        if roll < 0.7:
            return self.platform.node(gateway).env["KEYCLOAK_TOKEN"]
        if roll < 0.85:
            other = self.pick(*[n for n in self.nodes if n != gateway])
            return str(self.platform.node(other).env["KEYCLOAK_TOKEN"])
        if roll < 0.92:
            return None
        return str(self.pick(*self.bad_tokens))

    def text(self) -> str:
        return str(
            self.pick(
                "",
                "x",
                "node-1",
                "node-9",
                "a" * self.rng.randint(1, 5000),
                "\x00\x01\x1f\x7f",
                "line\nbreak\r\n",
                "\u202eevil\u202c",
                "grüße 🎉",
                "../../etc/passwd",
                "%00%zz",
                str(uuid.uuid4()),
                self.pick(*self.object_ids),
            )
        )

    def value(self, depth: int = 0) -> Any:
        kind = self.rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.random() < 0.5
        if kind == 2:
            return self.pick(0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0, 1e308)
        if kind == 3:
            return self.text()
        if kind == 4:
            return self.pick("0001-01-01T00:00:00+01:00", "9999-12-31 23:59:60", "not a date")
        if kind == 5:
            return str(self.rng.random())
        if kind == 6:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self.text()[:20]: self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def json_body(self, good: dict[str, Any]) -> bytes:
        """``good``, or one of many ways to get it wrong."""
        roll = self.rng.randrange(16)
        if roll < 5:
            return dumps(good)
        if roll == 5:  # a field of the wrong type
            key = self.pick(*good) if good else "x"
            return dumps({**good, key: self.value()})
        if roll == 6:  # a field missing
            return dumps({k: v for k, v in good.items() if self.rng.random() < 0.5})
        if roll == 7:
            return bytes(
                self.pick(b"", b"{", b"[]", b"null", b'"str"', b"{'single': 1}", b"\xff\xfe{}")
            )
        if roll == 8:  # deep
            depth: int = self.pick(100, 255, 300, 1023, 1025, 5000)
            return b'{"message":' + b"[" * depth + b"]" * depth + b', "recipients": ["node-2"]}'
        if roll == 9:  # numbers out of any range
            key = self.pick(*good) if good else "progress"
            number = self.pick(str(2**70), "1e400", "-1e400", "NaN", "1" * 5000, "-0")
            raw = dumps({**good, key: "@@"}).replace(b'"@@"', number.encode())
            return bytes(raw)
        if roll == 10:  # invalid UTF-8 inside a string
            return dumps(good).replace(b"}", b',"bad":"\xc3\x28\xed\xa0\x80"}', 1)
        if roll == 11:
            return dumps({**good, "extra": self.value()})
        if roll == 12:
            return dumps([good])
        if roll == 13:
            return dumps({**good, "log": "\x00" * 100_000, "message": "m" * 100_000})
        return dumps(self.value())

    def json_headers(self) -> dict[str, str]:
        return {
            "content-type": self.pick(
                "application/json",
                "application/json",
                "text/plain",
                "multipart/form-data",
                "multipart/form-data; boundary=zz",
                "application/x-www-form-urlencoded",
                "application/json; charset=latin-1",
            )
        }

    def analysis_id(self) -> str:
        return str(
            self.pick(
                self.platform.analysis_id,
                self.platform.analysis_id,
                self.platform.analysis_id,
                "other",
                "%00",
                "a" * 300,
            )
        )

    # the makers

    def broker_send(self, case: Case) -> None:
        case.method = "POST"
        case.path = f"/message-broker/analyses/{self.analysis_id()}/messages"
        recipients: Any = self.pick(
            [n for n in self.nodes if n != case.gateway][:1],
            [n for n in self.nodes if n != case.gateway],
            [case.gateway],
            ["node-9"],
            [],
            "node-2",
            [1, 2],
            ["node-2"] * 5000,
        )
        meta = {
            "id": self.text()[:40],
            "sender": self.pick(case.gateway, case.gateway, "node-3", 5, None),
            "akn_id": self.pick(None, None, case.gateway, "node-1"),
            "category": self.text()[:20],
            "created_at": self.value(),
            "number": self.value(),
        }
        message: Any = self.pick({"meta": meta, "v": self.value()}, self.value(), None)
        roll = self.rng.randrange(200)
        if roll == 0:  # just within the limit (when the recipients are valid)
            size = self.platform.max_message_bytes - 64
            case.body = b'{"recipients":["node-3"],"message":"' + b"m" * size + b'"}'
        elif roll == 1:  # over it, declared
            case.body = b'{"recipients":["node-3"],"message":"' + b"m" * (17 * MiB) + b'"}'
        elif roll == 2:  # over it, streamed
            case.body = Stream(17 * MiB)
        elif roll == 3:  # within the read limit, over the message limit once written
            case.body = dumps(
                {
                    "recipients": ["node-3"],
                    "message": ["\x01" * 1000] * 3000,  # \x01 is written as \u0001
                }
            )
        else:
            case.body = self.json_body({"recipients": recipients, "message": message})
        case.headers = self.json_headers()

    def broker_broadcast(self, case: Case) -> None:
        case.method = "POST"
        case.path = f"/message-broker/analyses/{self.analysis_id()}/messages/broadcast"
        case.body = self.json_body({"message": {"v": self.value()}})
        case.headers = self.json_headers()

    def broker_subscribe(self, case: Case) -> None:
        case.method = "POST"
        case.path = f"/message-broker/analyses/{self.analysis_id()}/messages/subscriptions"
        other = self.pick(*[n for n in self.nodes if n != case.gateway])
        url = self.pick(
            f"{self.platform.node(case.gateway).gateway_url}/analysis/webhook",
            f"{self.platform.node(other).gateway_url}/analysis/webhook",
            "http://127.0.0.1:1/hook",
            "http://127.0.0.1:1/" + "a" * 3000,
            "ftp://127.0.0.1/x",
            "not a url",
            "http://[::1",
            "",
        )
        case.body = self.json_body({"webhookUrl": url})
        case.headers = self.json_headers()

    def broker_read(self, case: Case) -> None:
        base = f"/message-broker/analyses/{self.analysis_id()}"
        case.method, case.path = self.pick(
            ("GET", f"{base}/participants"),
            ("GET", f"{base}/participants/self"),
            ("GET", f"{base}/messages/subscriptions"),
            ("GET", f"{base}/messages/subscriptions/{self.pick(*self.subscription_ids)}"),
            ("DELETE", f"{base}/messages/subscriptions/{self.pick(*self.subscription_ids)}"),
            ("GET", f"{base}/messages/subscriptions/not-a-uuid"),
            ("PUT", f"{base}/messages"),
            ("GET", "/message-broker/healthz"),
        )

    def name(self) -> bytes:
        return bytes(
            self.pick(
                b"data.bin",
                b"x" * self.rng.randint(100, 9000),
                b"ok\x01bad",
                b"tab\tbed",
                b"a\rb",
                b"../../escape.txt",
                b"..",
                b"\xff\xfe",
                "ü".encode() * 200,
                b'quote\\"d',
                b"",
            )
        )

    def form(self, fields: dict[str, str]) -> RawForm:
        parts = [RawPart(k.encode(), v.encode("utf-8", "surrogatepass")) for k, v in fields.items()]
        roll = self.rng.randrange(12)
        content_type: bytes | None = b"application/octet-stream"
        extra: tuple[bytes, ...] = ()
        if roll == 0:
            parts += [RawPart(b"f%d" % i, b"v" * 60_000) for i in range(self.rng.randint(2, 40))]
        elif roll == 1:
            parts.append(RawPart(b"tag", b"v" * 70_000))
        elif roll == 2:
            parts.append(RawPart(b"tag", b"\xff\xfe"))
        elif roll == 3:
            content_type = self.pick(b"", b"text/plain\x01", b"x" * 400, b"no-slash", b"a/b\r\n")
        elif roll == 4:
            extra = (b"X-Long: " + b"h" * 9000,)
        elif roll == 5:
            extra = (b"Content-Transfer-Encoding: " + self.pick(b"base64", b"quoted-printable"),)
        elif roll == 6:
            extra = (b"Content-Encoding: " + self.pick(b"gzip", b"deflate", b"br", b"bogus"),)
        elif roll == 7:
            parts.append(RawPart(b"file2", b"second", filename=b"two.bin"))
        elif roll == 8:
            parts.append(RawPart(None, b"no name"))
        file = RawPart(
            b"file",
            self.pick(b"42", b"1e400", b"nan", b"payload", b"\x00" * 2000, b""),
            filename=self.name() if self.rng.random() < 0.9 else None,
            content_type=content_type,
            extra=extra,
        )
        if self.rng.random() < 0.9:
            parts.insert(self.rng.randint(0, len(parts)), file)
        return RawForm(tuple(parts), closed=self.rng.random() < 0.9)

    def storage_upload(self, case: Case) -> None:
        case.method = "PUT"
        path, fields = self.pick(
            ("/storage/final", {}),
            (
                "/storage/final/localdp",
                {
                    "epsilon": self.pick("1", "0", "-1", "1e-308", "nan", "inf", "x", "1e308"),
                    "sensitivity": self.pick("1", "1e308", "1e-308", "", "2"),
                },
            ),
            ("/storage/intermediate", {"remote_node_id": self.pick(*self.nodes, "node-9", "")}),
            ("/storage/local", {"tag": self.pick("t1", "Bad!", "a" * 40, "-x", "\x00")}),
            ("/storage/local", {}),
        )
        case.path = path
        roll = self.rng.randrange(10)
        if roll == 0:
            case.body = self.json_body({"file": "x"})
            case.headers = self.json_headers()
        elif roll == 1:
            case.body = b"--zz\r\nContent-Disposition: form-data\r\n\r\nbroken"
            case.headers = {"content-type": self.pick("multipart/form-data", "multipart/mixed")}
        else:
            case.body = self.form(fields)

    def storage_read(self, case: Case) -> None:
        object_id = self.pick(*self.object_ids, "not-a-uuid", "%00", "a" * 500)
        case.method, case.path, case.query = self.pick(
            (
                "GET",
                f"/storage/intermediate/{object_id}",
                f"remote_node_id={self.pick(*self.nodes, 'node-9', '%ff', '')}",
            ),
            ("GET", f"/storage/intermediate/{object_id}", ""),
            ("GET", f"/storage/local/{object_id}", ""),
            ("GET", "/storage/local/tags", ""),
            ("GET", f"/storage/local/tags/{self.pick('t1', '%00', 'x' * 300)}", ""),
            (
                "POST",
                "/storage/local/tags",
                f"tag_name={self.pick('t1', 'Bad!', '%00', '')}&object_id={object_id}"
                + self.pick("", "&filename=f.bin", "&filename=%00%01", "&filename=" + "n" * 400),
            ),
            ("DELETE", "/storage/local", "project_id=x"),
            ("GET", "/storage/healthz", ""),
        )

    def po_log(self, case: Case) -> None:
        case.method, case.path = "POST", "/po/stream_logs"
        good = {
            "log": self.pick("hello", "x" * 100_000, "\n" * 5000, "\x00\x1b[31m"),
            "log_type": self.pick("info", "warning", "debug", 5),
            "analysis_id": self.analysis_id(),
            "status": self.pick("executing", "running", "failed", None),
            "progress": self.pick(0, 50, 100, 101, -1, 2**70, 1.5, "10"),
        }
        if self.rng.randrange(100) == 0:
            case.body = Stream(3 * MiB)
        else:
            case.body = self.json_body(good)
        case.headers = self.json_headers()

    def hub_adapter(self, case: Case) -> None:
        case.method = "GET"
        project = self.pick(self.platform.project_id, "other", "%00", "x" * 300)
        case.path = f"/hub-adapter/kong/datastore/{project}"
        case.query = self.pick("", "detailed=true", "detailed=%ff")

    def kong(self, case: Case) -> None:
        case.method = "GET"
        source = self.pick(*[f"{n}-fhir" for n in self.nodes], *[f"{n}-s3" for n in self.nodes])
        kind = source.rsplit("-", 1)[1]
        if kind == "fhir":
            case.path = f"/kong/{source}/fhir/" + self.pick(
                "Patient", "Observation/obs-1", "Patient/%00", "Bad Type", "a/b/c"
            )
            case.query = self.pick(
                "",
                "_count=5&_offset=2",
                "_count=" + "9" * 5000,
                "_count=-1",
                "code=%ff",
                "&".join(f"p{i}=1" for i in range(100)),
                "subject=Patient/x&_summary=count",
                "unknown=1",
            )
            if self.rng.random() < 0.3:
                case.headers["prefer"] = "handling=lenient"
        else:
            case.path = f"/kong/{source}/s3" + self.pick(
                "",
                "/rows.csv",
                "/outside.csv",
                "/%2e%2e/%2e%2e/secret",
                "/%00",
                "/" + "k" * 5000,
                "/sub/%01",
            )
            case.query = self.pick("", "prefix=sub", "prefix=%00", "delimiter=/")
        owner = source.rsplit("-", 1)[0]
        key_owner = owner if self.rng.random() < 0.7 else self.pick(*self.nodes)
        case.headers["apikey"] = self.pick(
            self.platform.node(key_owner).env["DATA_SOURCE_TOKEN"],
            self.platform.node(key_owner).env["DATA_SOURCE_TOKEN"],
            "wrong",
            "ü" * 10,
        )
        case.gateway = owner if self.rng.random() < 0.8 else self.pick(*self.nodes)

    def admin(self, case: Case) -> None:
        # node-3's API is the stub the /analysis cases reach: nothing moves it
        case.gateway = self.pick("node-1", "node-2")
        case.method = "PUT"
        if self.rng.random() < 0.5:
            case.path = "/local-platform/node-api"
            case.body = self.json_body({"port": self.pick(1, 0, 65536, 2**70, "80")})
        else:
            case.path = "/local-platform/node-blocked"
            case.body = self.json_body(
                {"seconds": self.pick(1.0, -1, 2**70), "location": "x" * 20_000}
            )
        case.headers = self.json_headers()

    def analysis(self, case: Case) -> None:
        case.gateway = "node-3"
        case.token = None
        case.method = self.pick("GET", "POST", "PUT")
        case.path = "/analysis/" + self.pick("webhook", "healthz", "x/%00/y", "a" * 3000, "")
        if case.method != "GET":
            case.body = self.json_body({"v": self.value()})
            case.headers = self.json_headers()

    def junk(self, case: Case) -> None:
        case.method = self.pick("GET", "PATCH", "OPTIONS", "TRACE", "FOO", "HEAD")
        case.path = self.pick(
            "/",
            "/healthz",
            "/%00",
            "/storage",
            "/message-broker",
            "/kong",
            "/po",
            "/local-platform/other",
            "/" + "z" * 6000,
            "/storage/final/%2e%2e",
        )

    def case(self) -> Case:
        case = Case(gateway=self.pick(*self.nodes), method="GET", path="/")
        maker = self.rng.choices([m for _, m in self.makers], weights=[w for w, _ in self.makers])[
            0
        ]
        case.token = self.token(case.gateway)
        maker(case)
        case.shared = self.rng.random() < 0.3
        return case

    def learn(self, case: Case, status: int, body: bytes) -> None:
        """Remember ids the platform handed out, to forge requests with them later."""
        if status not in (200, 201) or not body.startswith(b"{"):
            return
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(answer, dict):
            if isinstance(found := answer.get("object_id"), str):
                self.object_ids.append(found)
            if isinstance(found := answer.get("subscriptionId"), str):
                self.subscription_ids.append(found)


# -- sending ----------------------------------------------------------------------------------


class Sender:
    """Sends cases over HTTP (own port or shared port) or in memory."""

    def __init__(
        self,
        platform: LocalPlatform,
        *,
        http: aiohttp.ClientSession | None = None,
        transports: dict[str, MemoryTransport] | None = None,
    ) -> None:
        self.platform = platform
        self.http = http
        self.transports = transports or {}

    async def send(self, case: Case) -> tuple[int, bytes]:
        headers = dict(case.headers)
        if case.token is not None:
            headers["authorization"] = f"Bearer {case.token}"
        if self.http is None:
            return await self._in_memory(case, headers)
        body: Any = case.body
        if isinstance(body, RawForm):
            boundary = b"fuzz" + uuid.uuid4().hex.encode()
            headers["content-type"] = "multipart/form-data; boundary=" + boundary.decode()
            body = body.encode(boundary)
        elif isinstance(body, Stream):
            body = body.chunks()
        if isinstance(body, bytes) and len(body) > MiB:
            body = io.BytesIO(body)  # aiohttp warns about large bytes (they hold the loop)
        node = self.platform.node(case.gateway)
        base = node.gateway_url
        if case.shared:
            base = self.platform.shared_url
            headers["host"] = node.nginx_host
        url = URL(base + case.path + (f"?{case.query}" if case.query else ""), encoded=True)
        async with self.http.request(
            case.method, url, data=body, headers=headers, skip_auto_headers=["content-type"]
        ) as response:
            return response.status, await response.read()

    async def _in_memory(self, case: Case, headers: dict[str, str]) -> tuple[int, bytes]:
        body: Any = case.body
        if isinstance(body, RawForm):
            body = body.multipart()
        elif isinstance(body, Stream):
            body = body.chunks()
        request = Request(case.method, case.path, query_string=case.query, headers=headers)
        request.body = body
        async with self.transports[case.gateway].open(request) as answer:
            return answer.status, await answer.read()


RAW_HEADS = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x00Name: v\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: \x01\x7f\xff\r\n\r\n",
    b"NOT A REQUEST\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /po/stream_logs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /po/stream_logs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /po/stream_logs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /po/stream_logs HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    b"PUT /storage/local HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=q"
    b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n--q\r\n\r\nzz",
]


async def raw_status(port: int, head: bytes) -> int | None:
    """The status a raw request head gets (None: the connection closed without an answer)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(head)
        with anyio.move_on_after(2):  # a cut-off body waits for more; the answer came before
            await stream.send_eof()
        answer = b""
        with anyio.move_on_after(10):
            while b"\r\n" not in answer:
                try:
                    answer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    break
    if not answer.startswith(b"HTTP/"):
        return None
    return int(answer.split(b" ", 2)[1])


# -- the platform under test ------------------------------------------------------------------


def data_folder(root: Path) -> Path:
    for node in ("node-1", "node-2", "node-3"):
        fhir, s3 = root / node / "fhir", root / node / "s3"
        fhir.mkdir(parents=True)
        (s3 / "sub").mkdir(parents=True)
        (fhir / "patients.ndjson").write_text(
            '{"resourceType": "Patient", "id": "p1"}\n'
            '{"resourceType": "Observation", "id": "obs-1", "subject": {"reference": "Patient/p1"}}'
            "\n"
        )
        (s3 / "rows.csv").write_text("a\n1\n")
        (s3 / "sub" / "more.csv").write_text("b\n2\n")
    secret = root / "secret.csv"
    secret.write_text("not for anyone")
    (root / "node-1" / "s3" / "outside.csv").symlink_to(secret)
    return root


@asynccontextmanager
async def stub_api(platform: LocalPlatform, node_id: str) -> AsyncIterator[None]:
    """A node API that reads and forgets every request and answers 200 (keeps no bodies)."""
    if platform.transport == "memory":

        async def handler(request: Request) -> Response:
            if not isinstance(request.body, Multipart):
                await request.read()
            return Response(200, b"null", headers={"content-type": "application/json"})

        transport = platform.transport_for(node_id)
        async with transport, anyio.create_task_group() as tg:
            await tg.start(transport.serve, handler)
            yield
            tg.cancel_scope.cancel()
        return

    async def handle(request: web.Request) -> web.Response:
        async for _ in request.content.iter_chunked(MiB):
            pass
        return web.json_response(None)

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.SockSite(runner, platform.bind_api(node_id)).start()
        yield
    finally:
        await runner.cleanup()


def rss() -> int:
    gc.collect()
    return int(psutil.Process(os.getpid()).memory_info().rss)


async def unsubscribe_all(platform: LocalPlatform, sender: Sender, node_id: str) -> None:
    """Remove what the fuzz subscribed for ``node_id`` (a node holds at most 64)."""
    token = platform.node(node_id).env["KEYCLOAK_TOKEN"]
    base = f"/message-broker/analyses/{platform.analysis_id}/messages/subscriptions"
    status, body = await sender.send(Case(node_id, "GET", base, token=token))
    assert status == 200
    for subscription in orjson.loads(body):
        status, _ = await sender.send(
            Case(node_id, "DELETE", f"{base}/{subscription['subscriptionId']}", token=token)
        )
        assert status == 204


@pytest.mark.parametrize("transport", ["http", "memory"])
async def test_no_input_gets_a_5xx_holds_memory_or_stops_messaging(
    transport: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    async with AsyncExitStack() as stack:
        platform = await stack.enter_async_context(
            LocalPlatform(
                3,
                transport=transport,  # type: ignore[arg-type]
                data_dir=data_folder(tmp_path / "data"),
                state_dir=tmp_path / "state",
                out_dir=tmp_path / "out",
                webhook_retry_initial=0.001,
                po_interval=3600.0,
            )
        )
        if transport == "memory":
            transports = {}
            for node in platform.nodes[:2]:
                memory = platform.transport_for(node)
                assert isinstance(memory, MemoryTransport)
                transports[node.node_id] = await stack.enter_async_context(memory)
            sender = Sender(platform, transports=transports)
        else:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            sender = Sender(platform, http=http)
        await stack.enter_async_context(stub_api(platform, "node-3"))
        if transport == "memory":  # node-3's own transport serves the stub; cases reach it too
            memory = platform.transport_for("node-3")
            assert isinstance(memory, MemoryTransport)
            sender.transports["node-3"] = await stack.enter_async_context(memory)

        fuzzer = Fuzzer(rng, platform)
        failures: list[str] = []
        before: int | None = None
        for number in range(REQUESTS):
            if number == 100:
                before = rss()  # after the first allocations of every service
            case = fuzzer.case()
            status, body = await sender.send(case)
            if status >= 500:
                failures.append(
                    f"#{number} {case.method} {case.path[:80]} -> {status} {body[:200]!r}"
                )
            fuzzer.learn(case, status, body)
        if transport == "http":
            for head in RAW_HEADS:
                for node in platform.nodes[:1]:
                    status_of_head = await raw_status(node.gateway_port, head)
                    assert status_of_head is None or status_of_head < 500, head[:60]
        assert not failures, "\n".join(failures[:20])
        assert before is not None
        grown = rss() - before
        assert grown < RSS_BUDGET, f"RSS grew by {grown / MiB:.1f} MiB"

        # the platform still works: two real nodes exchange messages
        for node_id in ("node-1", "node-2"):
            await unsubscribe_all(platform, sender, node_id)
        async with (
            FlameSDK(platform.nodes[0].config(), transport=platform.transport_for("node-1")) as a,
            FlameSDK(platform.nodes[1].config(), transport=platform.transport_for("node-2")) as b,
        ):
            report = await a.send_message(b.node_id, {"after": "fuzz"}, category="c", timeout=10)
            assert report.ok, report
            message = await b.await_message(a.node_id, category="c", timeout=10)
            assert message.data == {"after": "fuzz"}
            reply = await b.send_message(a.node_id, {"n": 2}, category="r", timeout=10)
            assert reply.ok, reply
            assert (await a.await_message(b.node_id, category="r", timeout=10)).data == {"n": 2}
