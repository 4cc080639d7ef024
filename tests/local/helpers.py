"""Helpers for the local platform tests.

Node APIs are stood in for by :class:`StubApi`, a small aiohttp server on a socket the platform
bound for the node (:meth:`LocalPlatform.bind_api`), that records what the broker and the PO send
it. Gateways are called with a raw aiohttp client
(:class:`Gateway`). Nothing here waits on wall-clock speed: waits are for conditions, with
generous deadlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import orjson
from aiohttp import web

from flame_async._jwt import remaining_seconds
from flame_async.local import LocalNode, LocalPlatform

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
