"""The transport maps every HTTP failure to a specific FlameError, retrying only what is safe.

A scripted aiohttp server on 127.0.0.1 stands in for the gateway (aioresponses 0.7.9 cannot
build responses for aiohttp 3.14); the client side is the SDK's own :class:`GatewayClient` over
:class:`AiohttpTransport`.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import pytest
from aiohttp import web
from pydantic import SecretStr

from flame_async import (
    AuthenticationError,
    IncompleteResponse,
    NotFoundError,
    RequestTimeout,
    RetryPolicy,
    ServiceError,
    ServiceUnavailable,
    TransportError,
)
from flame_async._jwt import TokenStore
from flame_async._transport import AiohttpTransport, GatewayClient, Request


@dataclass
class Script:
    answers: deque[tuple[int, bytes]] = field(default_factory=deque)
    seen_auth: list[str] = field(default_factory=list)
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen_auth.append(request.headers.get("Authorization", ""))
        await request.read()
        if self.delay:
            await anyio.sleep(self.delay)
        status, body = self.answers.popleft() if self.answers else (200, b"")
        return web.Response(status=status, body=body, content_type="application/json")


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[GatewayClient, Script]]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with AiohttpTransport(f"http://127.0.0.1:{port}") as transport:
        yield (
            GatewayClient(
                transport,
                TokenStore(SecretStr("t.e.s")),
                retry=RetryPolicy(attempts=3, instant=True),
                timeout=5,
            ),
            script,
        )
    await runner.cleanup()


DETAIL = b'{"detail": "why it failed"}'


@pytest.mark.parametrize(
    ("status", "error", "service"),
    [
        (400, ServiceError, "broker"),
        (401, AuthenticationError, "broker"),
        (403, AuthenticationError, "storage"),
        (404, NotFoundError, "storage"),
        (422, ServiceError, "storage"),
        (500, ServiceError, "po"),
        (502, ServiceError, "hub-adapter"),
        (503, ServiceError, "data"),
    ],
)
async def test_status_codes_map_to_errors_with_the_service_and_detail(
    gateway: tuple[GatewayClient, Script], status: int, error: type[ServiceError], service: str
) -> None:
    transport, script = gateway
    script.answers.extend([(status, DETAIL)] * 3)
    with pytest.raises(
        error, match=f"{service} answered {status} to GET .*: why it failed"
    ) as info:
        await transport.request("GET", "/x", service=service)
    assert info.value.status == status and info.value.service == service
    assert len(script.seen_auth) == (
        3 if status in (502, 503) else 1
    )  # only gateway errors retried


async def test_gateway_errors_are_retried_then_succeed(
    gateway: tuple[GatewayClient, Script],
) -> None:
    transport, script = gateway
    script.answers.extend([(502, b""), (503, b""), (202, b"")])
    assert await transport.request("POST", "/m", service="broker", json={}, expect=(202,)) == b""
    assert len(script.seen_auth) == 3


async def test_connection_refused_is_service_unavailable() -> None:
    # bound but not listening for as long as the test runs: connections are refused
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        await _refused(port)


async def _refused(port: int) -> None:
    async with AiohttpTransport(f"http://127.0.0.1:{port}") as raw:
        transport = GatewayClient(
            raw,
            TokenStore(SecretStr("t.e.s")),
            retry=RetryPolicy(attempts=2, instant=True),
            timeout=5,
        )
        with pytest.raises(ServiceUnavailable, match="cannot reach gateway"):
            await transport.request("GET", "/healthz", service="gateway")


async def test_slow_answer_is_request_timeout(gateway: tuple[GatewayClient, Script]) -> None:
    transport, script = gateway
    script.delay = 1.0
    with pytest.raises(RequestTimeout, match="did not answer"):
        await transport.request("GET", "/healthz", service="gateway", retry=False, timeout=0.1)


async def test_bearer_token_is_read_on_every_request(gateway: tuple[GatewayClient, Script]) -> None:
    transport, script = gateway
    await transport.request("GET", "/a", service="po")
    transport.tokens.replace("new.token.value")
    await transport.request("GET", "/b", service="po")
    assert script.seen_auth == ["Bearer t.e.s", "Bearer new.token.value"]


async def test_a_body_cut_off_midway_raises_incomplete_response() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, AiohttpTransport(f"http://127.0.0.1:{port}") as raw:
        client = GatewayClient(
            raw, TokenStore(SecretStr("t.e.s")), retry=RetryPolicy(instant=True), timeout=5
        )
        for read_all in (True, False):
            with pytest.raises(IncompleteResponse, match="cut off") as info:
                async with client.stream("GET", "/obj", service="storage") as response:
                    if read_all:
                        await response.read()
                    else:
                        async for _ in response.iter_chunks():
                            pass
            assert info.value.service == "storage"
            assert isinstance(info.value, TransportError)


def test_a_request_never_shows_its_headers_in_its_repr() -> None:
    request = Request("GET", "/kong/x", headers={"authorization": "Bearer SECRET", "apikey": "KEY"})
    assert "SECRET" not in repr(request) and "KEY" not in repr(request)
    assert "GET /kong/x" in repr(request)
    unicode_digits = Request("POST", "/webhook", headers={"content-length": "²"}, body=None)
    assert unicode_digits.content_length is None
