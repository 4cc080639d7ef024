"""Serving a :data:`~flame_async._transport.Handler` over HTTP with aiohttp's server.

The node API and the local platform's gateways are written against the project's own request
and response types; this adapter turns aiohttp's inbound requests into those and writes the
answers back. Bodies stream both ways: a request body is an async byte iterator (or, for
``multipart/form-data``, a :class:`~flame_async._transport.Form` read part by part) and an
answer's body is written as it is produced, a :class:`~flame_async._transport.FileBody` with
``sendfile``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from typing import Final

import anyio
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from anyio.abc import TaskStatus

from ..errors import StartupError
from ._http import (
    Body,
    Buffer,
    ConnectionDropped,
    FileBody,
    Form,
    FormPart,
    Handler,
    Request,
    Response,
)

__all__ = [
    "NodeApiMount",
    "aiohttp_app",
    "mount_node_api",
    "serve_handler",
    "to_request",
    "write_response",
]

log = logging.getLogger("flame_async.transport")

_CHUNK: Final = 1 << 20
_EAGER_BODY: Final = 256 * 1024
"""Bodies of known size up to this are read before the handler runs (one read, no stream)."""
_SHUTDOWN_TIMEOUT: Final = 1.0


class _Part:
    """A part of an inbound multipart body, read from aiohttp's part reader."""

    __slots__ = ("_reader",)

    def __init__(self, reader: BodyPartReader) -> None:
        self._reader = reader

    @property
    def name(self) -> str | None:
        return self._reader.name

    @property
    def filename(self) -> str | None:
        return self._reader.filename

    @property
    def content_type(self) -> str:
        return self._reader.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")

    async def chunks(self) -> AsyncIterator[Buffer]:
        reader = self._reader
        while chunk := await reader.read_chunk(_CHUNK):
            yield reader.decode(chunk)


class _AiohttpForm(Form):
    """The parts of an inbound ``multipart/form-data`` body, parsed as they are read.

    Iterating raises :class:`ValueError` for a malformed body (aiohttp's word for it).
    """

    __slots__ = ("_request",)

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def __aiter__(self) -> AsyncIterator[FormPart]:
        return self._parts()

    async def _parts(self) -> AsyncIterator[FormPart]:
        reader = await self._request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader):
                yield _Part(part)
                await part.release()  # whatever the reader left of it
            else:
                await part.release()  # a nested multipart body: no field of ours


async def _stream(request: web.Request) -> AsyncIterator[Buffer]:
    content = request.content
    while chunk := await content.readany():
        yield chunk


async def to_request(request: web.Request) -> Request:
    """The project's view of an inbound aiohttp request.

    A small body of known size (a message, a JSON call) is read at once; anything else stays
    a stream (or, for ``multipart/form-data``, a :class:`Form`) that the handler reads.
    """
    body: Body = None
    if request.body_exists:
        if request.content_type.startswith("multipart/"):
            body = _AiohttpForm(request)
        elif (size := request.content_length) is not None and size <= _EAGER_BODY:
            body = await request.read()
        else:
            body = _stream(request)
    return Request(
        request.method,
        request.rel_url.raw_path,
        query_string=request.rel_url.raw_query_string,
        headers=request.headers,  # case-insensitive already: no copy
        body=body,
    )


class _FileHandOver(web.FileResponse):
    """Sends a file with ``sendfile``, then reports whether all of it went out and closes the
    answer it came from (aiohttp prepares it once the handler returned)."""

    def __init__(self, response: Response, file: FileBody, headers: dict[str, str]) -> None:
        super().__init__(file.path, status=response.status, headers=headers)
        self._file = file
        self._response = response
        response.mark_consumed()  # completion is reported here, not by closing the answer

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)  # sends the whole file
        except BaseException:
            if self._file.on_abort is not None:
                self._file.on_abort()
            raise
        finally:
            await self._response.aclose()
        if self._file.on_complete is not None:
            await self._file.on_complete()
        return writer


async def write_response(response: Response, request: web.Request) -> web.StreamResponse:
    """Turn ``response`` into aiohttp's answer to ``request`` (streamed bodies are written now).

    A :class:`FileBody` answer is returned unsent: aiohttp sends it, and it closes
    ``response`` itself. Any other answer is closed by the caller.

    Cancellation:
        The answer is cut off; a file body counts as not delivered.
    """
    body = response.body
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    if isinstance(body, bytes):
        return web.Response(status=response.status, body=body, headers=headers)
    if isinstance(body, FileBody):
        return _FileHandOver(response, body, headers)
    stream = web.StreamResponse(status=response.status, headers=headers)
    if response.content_length is not None:
        stream.content_length = response.content_length
    await stream.prepare(request)
    async for chunk in response.iter_chunks():
        await stream.write(chunk)
    await stream.write_eof()
    return stream


NODE_API_PATHS: Final = ("/webhook", "/healthz", "/token_refresh", "/partner_status")


class NodeApiMount:
    """The node API's routes inside an aiohttp application of yours: no second server.

    Create it before the application starts (aiohttp freezes its routes then), then give it to
    the node's transport (``AiohttpTransport.from_config(config, api=mount)``): while the
    ``FlameSDK`` runs, the four routes answer as the node API; before and after, they answer
    503. On the FLAME platform the application must listen where the node API is expected
    (port 8000, the routes at the root), since nginx forwards ``/analysis/*`` there.

    Args:
        app: The host application.
        prefix: Where the routes go (``""``: ``/webhook`` at the root, as the platform wants).
    """

    def __init__(self, app: web.Application, *, prefix: str = "") -> None:
        self.prefix = prefix.rstrip("/")
        self._handler: Handler | None = None
        for path in NODE_API_PATHS:
            app.router.add_route("*", self.prefix + path, self._route)

    @property
    def attached(self) -> bool:
        """True while a node API answers through the routes."""
        return self._handler is not None

    def attach(self, handler: Handler) -> None:
        """Answer the routes with ``handler`` from now on.

        Raises:
            RuntimeError: Another node API is attached already.
        """
        if self._handler is not None:
            raise RuntimeError("a node API is attached to these routes already")
        self._handler = handler

    def detach(self) -> None:
        """Stop answering (the routes answer 503 again)."""
        self._handler = None

    async def _route(self, request: web.Request) -> web.StreamResponse:
        handler = self._handler
        if handler is None:
            return web.json_response(
                {"detail": "the FLAME node API is not running (FlameSDK not entered)"},
                status=503,
            )
        return await _answer(handler, request, strip=self.prefix)


async def _answer(handler: Handler, request: web.Request, *, strip: str = "") -> web.StreamResponse:
    """``handler``'s answer to ``request`` (``strip``: a path prefix the handler does not see).

    A body aiohttp cannot read as sent (broken chunked framing, a ``Content-Encoding`` that does
    not decode) raises while it is read, here or in the handler: that is the caller's fault,
    answered 400 like aiohttp's own parser errors, never 500.
    """
    try:
        ours = await to_request(request)
        if strip:
            ours.path = ours.path[len(strip) :] or "/"
        response = await handler(ours)
    except ConnectionDropped:
        if request.transport is not None:
            request.transport.abort()  # the client sees the connection close, no answer
        return web.Response(status=204)  # never written: the connection is gone
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) else exc
        reason = getattr(cause, "message", "") or type(cause or exc).__name__
        return web.json_response(
            {"detail": f"the request body cannot be read as sent: {reason}"}, status=400
        )
    if isinstance(response.body, FileBody):
        return await write_response(response, request)  # it closes the answer itself
    try:
        return await write_response(response, request)
    finally:
        await response.aclose()


def aiohttp_app(handler: Handler) -> web.Application:
    """An aiohttp application that hands every request to ``handler``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _answer(handler, request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve_handler(
    handler: Handler,
    *,
    host: str,
    port: int,
    sock: socket.socket | None = None,
    task_status: TaskStatus[int | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` (or on the listening ``sock``) until cancelled.

    Reports the bound port once listening.

    Raises:
        StartupError: The address cannot be bound.

    Cancellation:
        Closes the listening socket and open connections (shielded, bounded).
    """
    runner = web.AppRunner(
        aiohttp_app(handler),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
            where = f"the handed-over socket {sock.getsockname()}"
        else:
            site = web.TCPSite(runner, host, port)
            where = f"{host}:{port}"
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"the node API cannot listen on {where}: {exc} "
                "(set FLAME_API_PORT to a free port, or 0 for any)"
            ) from exc
        bound = _bound_port(runner)
        task_status.started(bound if bound is not None else port)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await runner.cleanup()
        if sock is not None:
            sock.close()


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def mount_node_api(app: web.Application, *, prefix: str = "") -> NodeApiMount:
    """Add the node API's routes (``/webhook``, ``/healthz``, ``/token_refresh``,
    ``/partner_status``) to ``app``; give the result to the node's transport::

        mount = mount_node_api(app)
        FlameSDK(config, transport=AiohttpTransport.from_config(config, api=mount))

    Call it before the application starts. Until a ``FlameSDK`` runs with it, the routes
    answer 503.

    Args:
        app: Your aiohttp application.
        prefix: A path prefix for the routes (the FLAME platform forwards to the root).
    """
    return NodeApiMount(app, prefix=prefix)
