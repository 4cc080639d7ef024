"""Helpers for the local platform tests.

Node APIs are stood in for by :class:`StubApi`, a small aiohttp server on a socket the platform
bound for the node (:meth:`LocalPlatform.bind_api`), that records what the broker and the PO send
it. Gateways are called with a raw aiohttp client
(:class:`Gateway`). Nothing here waits on wall-clock speed: waits are for conditions, with
generous deadlines.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import anyio
import orjson
from aiohttp import web
from yarl import URL

from flame_async._jwt import remaining_seconds
from flame_async._transport import Multipart, Part, Request
from flame_async.local import LocalNode, LocalPlatform, MemoryTransport

DEADLINE = 10.0


async def eventually(predicate: Callable[[], object], *, timeout: float = DEADLINE) -> None:
    """Wait until ``predicate()`` is truthy (checked every few milliseconds).

    The state checked belongs to the platform under test, which offers no event to wait on.
    """
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class StubApi:
    """A node API that records every request and answers like the SDK's API would."""

    node: LocalNode
    webhook_answers: list[int] = field(default_factory=list)  # statuses to answer, then 200
    status: str = "executing"
    token: str = ""
    token_remaining: int | None = None  # reported instead of the token's real remaining time
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token = self.node.env["KEYCLOAK_TOKEN"]

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def start(self, stack: AsyncExitStack, platform: LocalPlatform) -> StubApi:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        sock = platform.bind_api(self.node.node_id)  # whoever binds a port owns it
        await web.SockSite(runner, sock).start()  # the runner's cleanup closes it
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        received = Received(
            request.method,
            request.path,
            request.rel_url.raw_query_string,
            dict(request.headers),
            await request.read(),
        )
        self.requests.append(received)
        if request.path == "/webhook":
            status = self.webhook_answers.pop(0) if self.webhook_answers else 200
            return web.json_response(None, status=status)
        if request.path == "/healthz":
            return web.json_response(
                {
                    "status": self.status,
                    "token_remaining_time": remaining_seconds(self.token)
                    if self.token_remaining is None
                    else self.token_remaining,
                }
            )
        if request.path == "/token_refresh":
            self.token = received.json()["token"]
            self.token_remaining = None
            return web.json_response({"message": "Token refreshed successfully"})
        if request.path == "/partner_status":
            return web.json_response({"status": self.status})
        return web.json_response(
            {"path": request.path, "query": received.query, "echo": received.body.decode()},
            status=200,
        )


class Gateway:
    """Raw HTTP calls to one node's gateway."""

    def __init__(self, http: aiohttp.ClientSession, platform: LocalPlatform, node: LocalNode):
        self.http = http
        self.platform = platform
        self.node = node
        self.auth = {"Authorization": "Bearer " + node.env["KEYCLOAK_TOKEN"]}

    def url(self, path: str) -> str:
        return self.node.gateway_url + path

    def broker(self, path: str = "") -> str:
        return self.url(f"/message-broker/analyses/{self.platform.analysis_id}{path}")

    async def subscribe(self, webhook_url: str | None = None) -> dict[str, Any]:
        url = webhook_url or f"{self.node.gateway_url}/analysis/webhook"
        async with self.http.post(
            self.broker("/messages/subscriptions"), json={"webhookUrl": url}, headers=self.auth
        ) as response:
            assert response.status == 201
            body: dict[str, Any] = await response.json()
            return body

    async def send(self, recipients: list[str], message: Any) -> int:
        async with self.http.post(
            self.broker("/messages"),
            json={"recipients": recipients, "message": message},
            headers=self.auth,
        ) as response:
            assert await response.read() == b""
            return response.status


# The types of the fixtures in conftest.py that are factories.
StartPlatform = Callable[..., Awaitable[LocalPlatform]]
StartApi = Callable[[LocalNode], Awaitable[StubApi]]
MakeGateway = Callable[[str], Gateway]


# -- calling any node's gateway, over HTTP (own port or shared port) or in memory -------------

Via = Literal["port", "shared", "memory"]
"""How a :class:`Caller` reaches a gateway: its own port, the shared port with ``Host``, or in
memory (through the gateway node's :class:`~flame_async.local.MemoryTransport`)."""


@dataclass(frozen=True)
class FormSpec:
    """A multipart form: text fields, then (unless ``file`` is None) the part ``file``."""

    fields: dict[str, str] = field(default_factory=dict)
    file: bytes | None = b"payload"
    filename: str | None = "data.bin"
    content_type: str = "application/octet-stream"

    def multipart(self) -> Multipart:
        parts = [Part(name, (value.encode(),)) for name, value in self.fields.items()]
        if self.file is not None:
            parts.append(Part("file", (self.file,), self.filename, self.content_type))
        return Multipart(tuple(parts))

    def form_data(self) -> aiohttp.FormData:
        data = aiohttp.FormData(quote_fields=False)
        for name, value in self.fields.items():
            data.add_field(name, value)
        if self.file is not None:
            data.add_field(
                "file", self.file, filename=self.filename, content_type=self.content_type
            )
        return data


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def detail(self) -> Any:
        body = self.json()
        return body.get("detail") if isinstance(body, dict) else None


class Caller:
    """Requests to any node's gateway with any node's token, the same way on each path."""

    def __init__(
        self,
        platform: LocalPlatform,
        via: Via,
        *,
        http: aiohttp.ClientSession | None = None,
        transports: dict[str, MemoryTransport] | None = None,
    ) -> None:
        self.platform = platform
        self.via = via
        self.http = http
        self.transports = transports or {}

    @classmethod
    async def start(cls, stack: AsyncExitStack, platform: LocalPlatform, via: Via) -> Caller:
        if via == "memory":
            transports = {}
            for node in platform.nodes:
                transport = platform.transport_for(node)
                assert isinstance(transport, MemoryTransport)
                transports[node.node_id] = await stack.enter_async_context(transport)
            return cls(platform, via, transports=transports)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        return cls(platform, via, http=http)

    def token(self, node_id: str) -> str:
        return self.platform.node(node_id).env["KEYCLOAK_TOKEN"]

    def broker(self, path: str = "") -> str:
        return f"/message-broker/analyses/{self.platform.analysis_id}{path}"

    async def call(
        self,
        gateway: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        as_node: str | None = None,
        json: Any = None,
        body: bytes | FormSpec | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
    ) -> Answer:
        """``method path`` on ``gateway``'s gateway with ``token`` (or ``as_node``'s token)."""
        sent = dict(headers or {})
        if as_node is not None:
            token = self.token(as_node)
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        if json is not None:
            body = orjson.dumps(json)
            sent.setdefault("content-type", "application/json")
        node = self.platform.node(gateway)
        if self.via == "memory":
            request = Request(
                method,
                path,
                query_string=query,
                headers=sent,
                body=body.multipart() if isinstance(body, FormSpec) else body,
            )
            async with self.transports[gateway].open(request) as answer:
                return Answer(answer.status, await answer.read())
        assert self.http is not None
        if self.via == "shared":
            base = self.platform.shared_url
            sent["host"] = node.nginx_host
        else:
            base = node.gateway_url
        url = URL(base + path + (f"?{query}" if query else ""), encoded=True)
        data: Any = body.form_data() if isinstance(body, FormSpec) else body
        if isinstance(data, bytes) and len(data) > 1 << 20:
            data = io.BytesIO(data)  # aiohttp warns about large bytes (they hold the loop)
        async with self.http.request(method, url, data=data, headers=sent) as response:
            return Answer(response.status, await response.read())
