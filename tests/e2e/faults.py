"""Faults that real networks and brokers produce, injected at the transport seam or on the wire.

:class:`FaultyTransport` wraps a node's transport (HTTP or in memory) and, for the requests it
is told to hurt, answers 500 or 503 without forwarding, drops the connection before forwarding
(the broker never saw the request), drops it after forwarding (the broker took the message but
the sender sees a reset), and delays requests. Everything is drawn from a seeded random number
generator, so a run replays exactly.

:class:`CuttingProxy` is a TCP proxy in front of a gateway that cuts chosen answers off in the
middle of their body, the way a dying connection does.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskStatus

from flame_async import ServiceUnavailable
from flame_async._transport import Handler, Request, Response, Transport

FAULTS = ("500", "503", "reset-before", "reset-after")


def unreachable(request: Request, why: str) -> ServiceUnavailable:
    """The error a transport raises when ``request`` cannot reach its service (``why``)."""
    return ServiceUnavailable(
        f"cannot reach {request.service}: {why}",
        service=request.service,
        method=request.method,
        url=request.path,
    )


class WrappedTransport:
    """A node's transport with something in front: entering, leaving and serving go to
    ``inner``; subclasses change :meth:`open` (by default it only passes requests on)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Response]:
        async with self.inner.open(request) as response:
            yield response

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        await self.inner.serve(handler, task_status=task_status)


class FaultyTransport(WrappedTransport):
    """A transport that hurts a share of the requests ``hurt`` selects.

    Args:
        inner: The node's real transport.
        rng: Where every decision comes from (seed it).
        rate: The share of selected requests that fail (split evenly over :data:`FAULTS`).
        max_delay: Each selected request is delayed by up to this many seconds.
        hurt: Which requests are exposed to faults (default: POSTs of broker messages).
    """

    def __init__(
        self,
        inner: Transport,
        rng: random.Random,
        *,
        rate: float = 1 / 3,
        max_delay: float = 0.02,
        hurt: Callable[[Request], bool] | None = None,
    ) -> None:
        super().__init__(inner)
        self.rng = rng
        self.rate = rate
        self.max_delay = max_delay
        self.hurt = hurt or (lambda r: r.method == "POST" and r.path.endswith("/messages"))
        self.injected: Counter[str] = Counter()

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Response]:
        if not self.hurt(request):
            async with self.inner.open(request) as response:
                yield response
            return
        fault = self.rng.choice(FAULTS) if self.rng.random() < self.rate else None
        delay = self.rng.uniform(0, self.max_delay)
        if delay:
            await anyio.sleep(delay)
        if fault is not None:
            self.injected[fault] += 1
        if fault in ("500", "503"):
            yield Response(int(fault), b'{"detail": "injected"}')
            return
        if fault == "reset-before":
            raise unreachable(request, "connection reset (injected)")
        async with self.inner.open(request) as response:
            await response.read()
            if fault == "reset-after":  # the broker took it; the sender never hears so
                raise unreachable(request, "connection reset (injected)")
            yield Response(response.status, b"", headers=response.headers)


class CuttingProxy:
    """A TCP proxy to ``upstream_port`` that cuts answers to matching requests in half.

    Every proxied request is sent upstream with ``Connection: close``, so one connection carries
    one exchange and the proxy only pipes bytes. For a request whose target matches ``cut``, only
    the answer's head and the first half of its body get through; then both connections close.

    Args:
        upstream_port: The gateway's port on 127.0.0.1.
        cut: A pattern searched in the request target.
    """

    def __init__(self, upstream_port: int, cut: str) -> None:
        self._upstream_port = upstream_port
        self._cut = re.compile(cut)
        self.cuts = 0
        self.port = 0

    def __call__(self) -> AbstractAsyncContextManager[CuttingProxy]:
        return self._serving()

    @asynccontextmanager
    async def _serving(self) -> AsyncIterator[CuttingProxy]:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, _, rest = head.partition(b"\r\n")
        target = request_line.split(b" ")[1].decode()
        lines = [
            line for line in rest.split(b"\r\n") if not line.lower().startswith(b"connection:")
        ]
        head = request_line + b"\r\n" + b"\r\n".join(lines[:-2]) + b"\r\nConnection: close\r\n\r\n"
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        up_writer.write(head)
        cut = bool(self._cut.search(target))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pipe, reader, up_writer)
                if cut:
                    await self._cut_answer(up_reader, writer)
                    self.cuts += 1
                else:
                    await _pipe(up_reader, writer)
                tg.cancel_scope.cancel()  # the exchange is over (or cut): stop the other way
        finally:
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _cut_answer(upstream: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        head = await upstream.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        client.write(head)
        if length > 1:
            client.write(await upstream.readexactly(length // 2))
        await client.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except ConnectionError:
        pass


class TokenTap(WrappedTransport):
    """A transport that sees the bearer token of every request a node sends.

    It records ``(method, path, token)`` per request, can present another token instead of the
    node's (``forge``: how a test gets a token the services refuse without the node's help),
    and can make the node's token check (``GET .../participants/self``) fail as if the gateway
    were down (``check_down``) or answer it with a status of its own (``check_status``).

    Args:
        inner: The node's real transport.
    """

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.seen: list[tuple[str, str, str]] = []
        self.forge: str | None = None
        self.check_down = False
        self.check_status: int | None = None

    def tokens_on(self, suffix: str) -> list[str]:
        """The tokens sent with requests whose path ends with ``suffix``, in order."""
        return [token for _, path, token in self.seen if path.endswith(suffix)]

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Response]:
        auth = request.headers.get("authorization", "")
        self.seen.append((request.method, request.path, auth.removeprefix("Bearer ")))
        if self.forge is not None and auth:
            request.headers = {**request.headers, "authorization": f"Bearer {self.forge}"}
        if request.path.endswith("/participants/self"):
            if self.check_down:
                raise unreachable(request, "connection refused (injected)")
            if self.check_status is not None:
                yield Response(self.check_status, b'{"detail": "injected"}')
                return
        async with self.inner.open(request) as response:
            yield response
