"""The aiohttp transport: real HTTP to the node gateway, and the node API's HTTP server.

This module and :mod:`._server` are where aiohttp meets the project's own
:class:`~flame_async._transport.Request` and :class:`~flame_async._transport.Response`: every
aiohttp exception is translated here, also those raised while a body is read, so nothing above
the transport ever sees one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import anyio
from aiohttp import payload
from aiohttp.abc import AbstractStreamWriter
from anyio.abc import TaskStatus
from yarl import URL

from ..errors import (
    IncompleteResponse,
    RequestTimeout,
    SDKStateError,
    ServiceError,
    ServiceUnavailable,
    TransportError,
)
from ._http import Body, Buffer, Handler, Multipart, Request, Response

if TYPE_CHECKING:
    from ..config import FlameConfig
    from ._server import NodeApiMount

__all__ = ["AiohttpTransport", "aiohttp_data", "aiohttp_send"]

log = logging.getLogger("flame_async.transport")

_CHUNK = 1 << 20


class _SlicedPayload(payload.Payload):
    """A body of known size written from its buffers in slices of their own memory.

    A known size lets the body carry a Content-Length (no chunked framing, which would copy
    every chunk); slices of at most 1 MiB keep the event loop responsive.
    """

    def __init__(
        self,
        buffers: Sequence[Buffer],
        *,
        content_type: str,
        filename: str | None = None,
    ) -> None:
        super().__init__(buffers, content_type=content_type, filename=filename)
        self._buffers = buffers
        self._size = sum(memoryview(b).nbytes for b in buffers)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The body as text (aiohttp's interface; not meaningful for binary parts)."""
        return b"".join(bytes(b) for b in self._buffers).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        """Write every buffer in slices of at most 1 MiB."""
        for buffer in self._buffers:
            view = memoryview(buffer).cast("B")
            for start in range(0, len(view), _CHUNK):
                await writer.write(view[start : start + _CHUNK])

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        """Write the buffers (the length is the whole size by construction)."""
        await self.write(writer)


def aiohttp_data(body: Body) -> Any:
    """``body`` as aiohttp's client sends it: forms encoded, large bytes in slices."""
    if isinstance(body, Multipart):
        return _encode_form(body)
    if isinstance(body, bytes) and len(body) > _CHUNK:
        # aiohttp warns on raw bytes above 1 MiB: in one piece they would hold the loop
        return _SlicedPayload((body,), content_type="application/octet-stream")
    return body


def _encode_form(form: Multipart) -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    for part in form.parts:
        body = _SlicedPayload(part.data, content_type=part.content_type, filename=part.filename)
        if part.filename is None:
            body.set_content_disposition("form-data", name=part.name)
        else:
            body.set_content_disposition("form-data", name=part.name, filename=part.filename)
        writer.append_payload(body)
    return writer


async def _release(raw: aiohttp.ClientResponse) -> None:
    """``aclose()`` of an :class:`_AiohttpResponse`: give the connection back to the pool."""
    raw.release()


class _AiohttpResponse(Response):
    """A client response whose body is read from aiohttp, failures mapped to FlameErrors."""

    __slots__ = ("_raw", "_where")

    def __init__(self, raw: aiohttp.ClientResponse, where: tuple[str, str, str]) -> None:
        super().__init__(
            raw.status,
            headers=raw.headers,  # case-insensitive already: no copy
            content_length=raw.content_length,
            # not a method of self: a cycle would keep the response until the next collection
            on_close=functools.partial(_release, raw),
        )
        self._raw = raw
        self._where = where  # service, method, url

    def release(self) -> None:
        """Give the connection back to the pool."""
        self._raw.release()

    def _failed(self, exc: BaseException) -> TransportError:
        service, method, url = self._where
        if isinstance(exc, TimeoutError):
            return RequestTimeout(
                f"{service} stopped sending the answer to {method} {url} (timeout)",
                service=service,
                method=method,
                url=url,
            )
        return IncompleteResponse(
            f"the answer of {service} to {method} {url} was cut off: {exc}",
            service=service,
            method=method,
            url=url,
        )

    async def iter_chunks(self) -> AsyncIterator[Buffer]:
        """The body as it arrives.

        Raises:
            IncompleteResponse: The connection broke before the body was complete.
            RequestTimeout: The body stopped arriving.
        """
        content = self._raw.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise self._failed(exc) from exc
            if not chunk:
                return
            yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (one aiohttp read on the message hot path).

        Raises:
            IncompleteResponse: The connection broke before the body was complete.
            RequestTimeout: The body stopped arriving.
        """
        if limit is not None:
            return await super().read(limit)
        try:
            return await self._raw.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._failed(exc) from exc


class _Exchange:
    """One request's lifetime as an async context manager (a class: the message hot path)."""

    __slots__ = ("_request", "_response", "_transport")

    def __init__(self, transport: AiohttpTransport, request: Request) -> None:
        self._transport = transport
        self._request = request
        self._response: _AiohttpResponse | None = None

    async def __aenter__(self) -> Response:
        self._response = await self._transport._send(self._request)
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            self._response.release()


class AiohttpTransport:
    """HTTP to the node gateway over one aiohttp session, and the node API on a TCP socket.

    Args:
        base_url: The gateway base URL (``http://nginx-{DEPLOYMENT_NAME}`` on the platform).
        api_host: Address the node API listens on.
        api_port: Port the node API listens on (0: any free port, reported on start).
        api_socket: A listening socket to serve the node API on instead of binding one; the
            transport takes it over and closes it.
        trust_env: Honour ``HTTP_PROXY`` and friends (what a container on the platform needs).
        connections: Most connections kept open at once.
        api: Serve the node API through these routes of your own aiohttp application
            (:func:`flame_async.embed.mount_node_api`) instead of a server of its own; the
            address options are then unused.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_host: str = "0.0.0.0",  # noqa: S104 - the platform's nginx must reach the API
        api_port: int = 8000,
        api_socket: socket.socket | None = None,
        trust_env: bool = False,
        connections: int = 256,
        api: NodeApiMount | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._mount = api
        self._api_host = api_host
        self._api_port = api_port
        self._api_socket = api_socket
        self._trust_env = trust_env
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    @classmethod
    def from_config(
        cls,
        config: FlameConfig,
        *,
        api_socket: socket.socket | None = None,
        api: NodeApiMount | None = None,
    ) -> AiohttpTransport:
        """The transport a node with ``config`` uses (its gateway, its API address, or the
        routes of your application that ``api`` mounted)."""
        return cls(
            config.base_url,
            api_host=config.api_host,
            api_port=config.api_port,
            api_socket=api_socket,
            api=api,
            # honour HTTP_PROXY & co. only where the platform's nginx name is used
            trust_env=config.uses_platform_gateway,
        )

    def __repr__(self) -> str:
        return f"AiohttpTransport({self._base!r})"

    async def __aenter__(self) -> Self:
        """Open the session.

        Raises:
            SDKStateError: The transport was entered before.
        """
        if self._session is not None:
            raise SDKStateError("an AiohttpTransport can be entered once")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300),
            trust_env=self._trust_env,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the session and, if it was never served, the handed-over API socket."""
        session = self._session
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()
        if self._api_socket is not None:
            self._api_socket.close()

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = URL(self._base + path, encoded=True)
            if len(self._urls) < 256:  # the fixed service paths; not every object id
                self._urls[path] = url
        return url

    def open(self, request: Request) -> AbstractAsyncContextManager[Response]:
        """Send ``request``; the response is open (its connection held) inside the block.

        Raises:
            ServiceUnavailable: (entering) The gateway could not be reached.
            RequestTimeout: (entering) No answer in time.
            SDKStateError: (entering) The transport is not entered.

        Cancellation:
            The request is abandoned and its connection released.
        """
        return _Exchange(self, request)

    async def _send(self, request: Request) -> _AiohttpResponse:
        session = self._session
        if session is None:
            raise SDKStateError("the transport is not open (enter it with 'async with')")
        url = (
            URL(f"{self._base}{request.path}?{request.query_string}", encoded=True)
            if request.query_string
            else self._url(request.path)
        )
        timeout = aiohttp.ClientTimeout(total=request.timeout, sock_connect=request.connect_timeout)
        return await aiohttp_send(
            session,
            request.method,
            url,
            data=aiohttp_data(request.body),
            headers=request.headers,
            timeout=timeout,
            service=request.service,
        )

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        """Serve ``handler`` over HTTP on the API address (or the handed-over socket).

        Raises:
            StartupError: The address cannot be bound.

        Cancellation:
            Closes the listening socket and open connections (shielded, bounded).
        """
        if self._mount is not None:  # the host application serves the routes
            self._mount.attach(handler)
            try:
                task_status.started(None)
                await anyio.sleep_forever()
            finally:
                self._mount.detach()
            return
        sock, self._api_socket = self._api_socket, None
        # imported here: aiohttp.web (and the warning filter it adds) only where a server runs
        from ._server import serve_handler

        await serve_handler(
            handler,
            host=self._api_host,
            port=self._api_port,
            sock=sock,
            task_status=task_status,
        )


async def aiohttp_send(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    *,
    data: Any,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    service: str,
    shown_url: str | None = None,
) -> _AiohttpResponse:
    """Send one request over ``session``: aiohttp's failures become FlameErrors, also while the
    answer's body is read later. The one place where any client of the project meets aiohttp.

    Args:
        session: The session (its owner keeps it open).
        method: The HTTP method.
        url: The full URL, as sent.
        data: The body in aiohttp's terms (see :func:`aiohttp_data`).
        headers: Request header fields.
        timeout: aiohttp's timeouts for this request.
        service: The service named in errors.
        shown_url: The URL as errors show it (e.g. without query secrets); ``url`` when omitted.

    Raises:
        ServiceUnavailable: The service could not be reached, or the connection broke.
        RequestTimeout: No answer in time.

    Cancellation:
        The request is abandoned; aiohttp closes its connection.
    """
    shown = str(url) if shown_url is None else shown_url
    try:
        raw = await session.request(
            method, url, data=data, headers=headers, timeout=timeout, allow_redirects=False
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise _translate(exc, service, method, shown) from exc
    return _AiohttpResponse(raw, (service, method, shown))


def _translate(exc: BaseException, service: str, method: str, url: str) -> TransportError:
    if isinstance(exc, asyncio.TimeoutError):
        return RequestTimeout(
            f"{service} did not answer {method} {url} in time",
            service=service,
            method=method,
            url=url,
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return ServiceError(
            service=service, method=method, url=url, status=exc.status, detail=exc.message
        )
    return ServiceUnavailable(
        f"cannot reach {service} at {url}: {exc}", service=service, method=method, url=url
    )
