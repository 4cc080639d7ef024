"""The in-memory transport: a node talks to the local platform in the same event loop.

A request goes straight to the node's gateway handler (the same route logic that answers over
HTTP), with no socket, no HTTP encoding and no parsing; bodies, multipart forms included, are
handed over as they are. The node's API is registered with the platform, so webhook deliveries
and the pod orchestrator's calls reach it by a function call. Everything the services check
(tokens, routes, sizes, one-shot objects) is checked exactly as over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

import anyio
from anyio.abc import TaskStatus

from .._transport import Buffer, ConnectionDropped, Handler, Request, Response
from ..errors import (
    IncompleteResponse,
    RequestTimeout,
    SDKStateError,
    ServiceUnavailable,
    TransportError,
)

if TYPE_CHECKING:
    from ._core import PlatformCore

__all__ = ["MemoryTransport"]

TransportErrorT = TypeVar("TransportErrorT", bound=TransportError)


def _where(node_id: str, request: Request) -> tuple[str, str, str]:
    """Service, method and URL of ``request`` to ``node_id``'s gateway (for error messages)."""
    return request.service, request.method, f"memory://{node_id}{request.path}"


class _MemoryResponse(Response):
    """A gateway's answer whose body errors are mapped like a transport's."""

    __slots__ = ("_inner", "_node_id", "_request")

    def __init__(self, inner: Response, node_id: str, request: Request) -> None:
        super().__init__(
            inner.status,
            headers=inner.headers,
            content_length=inner.content_length,
            on_close=inner.aclose,
        )
        self._inner = inner
        self._node_id = node_id
        self._request = request

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (a body the service built in memory is handed over as it is).

        Raises:
            BodyTooLarge: It is longer than ``limit`` bytes.
            IncompleteResponse: The service failed while producing it.
        """
        if isinstance(self._inner.body, bytes):
            return await self._inner.read(limit)
        return await super().read(limit)

    async def iter_chunks(self) -> AsyncIterator[Buffer]:
        """The body as the service produces it.

        Raises:
            IncompleteResponse: The service failed while producing it.
        """
        try:
            async for chunk in self._inner.iter_chunks():
                yield chunk
        except (OSError, ConnectionError) as exc:
            service, method, url = _where(self._node_id, self._request)
            raise IncompleteResponse(
                f"the answer of {service} to {method} {url} was cut off: {exc}",
                service=service,
                method=method,
                url=url,
            ) from exc


class _Exchange:
    """One request handed to a gateway and its answer, as an async context manager (a class,
    not a generator: it is entered for every message of a simulation)."""

    __slots__ = ("_core", "_node_id", "_request", "_response")

    def __init__(self, core: PlatformCore, node_id: str, request: Request) -> None:
        self._core = core
        self._node_id = node_id
        self._request = request
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        request = self._request
        gateway = self._core.gateways.get(self._node_id)
        if gateway is None or self._core.closed:
            raise self._error(ServiceUnavailable, "the local platform is not running")
        try:
            answer = await self._answer(gateway, request)
        except ConnectionDropped as exc:
            raise self._error(ServiceUnavailable, "the connection was reset") from exc
        if type(answer) is Response and isinstance(answer.body, bytes):
            self._response = answer  # in memory already: reading it cannot fail
        else:
            # no reference back to the exchange: a cycle would keep every body of a
            # simulation alive until the collector's next pass
            self._response = _MemoryResponse(answer, self._node_id, request)
        return self._response

    async def _answer(self, gateway: Handler, request: Request) -> Response:
        """The gateway's answer, within ``request.timeout`` (kept by the platform's
        :class:`RequestClock`: no timer per request; as ``asyncio.timeout`` does, a
        cancellation from elsewhere wins over the deadline).

        Raises:
            RequestTimeout: No answer in time.
        """
        if request.timeout is None:
            return await gateway(request)
        task = asyncio.current_task()
        assert task is not None  # a request is made by a task
        cancelling = task.cancelling()
        clock = self._core.request_clock
        bounded = clock.watch(task, time.monotonic() + request.timeout)
        expired = False
        try:
            try:
                return await gateway(request)
            finally:
                # uncancel() undoes the clock's cancel; what remains is somebody else's
                expired = clock.forget(bounded) and task.uncancel() <= cancelling
        except asyncio.CancelledError as exc:
            if expired:
                raise self._error(RequestTimeout) from exc
            raise

    def _error(self, kind: type[TransportErrorT], reason: str = "") -> TransportErrorT:
        """``kind`` for this request, worded as the HTTP transport words it: ``cannot reach
        SERVICE at URL: REASON``, or for a timeout ``SERVICE did not answer METHOD URL in
        time``."""
        service, method, url = _where(self._node_id, self._request)
        if reason:
            message = f"cannot reach {service} at {url}: {reason}"
        else:
            message = f"{service} did not answer {method} {url} in time"
        return kind(message, service=service, method=method, url=url)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            await self._response.aclose()


class MemoryTransport:
    """The transport of one node of an in-memory :class:`~flame_async.local.LocalPlatform`.

    Get it from :meth:`LocalPlatform.transport_for` (the runner does this for you with
    ``--transport memory``); the SDK enters it and closes it.

    Args:
        core: The running platform.
        node_id: The node this transport belongs to.
    """

    def __init__(self, core: PlatformCore, node_id: str) -> None:
        self._core = core
        self._node_id = node_id
        self._open = False

    def __repr__(self) -> str:
        return f"MemoryTransport({self._node_id!r})"

    async def __aenter__(self) -> Self:
        """Start using the platform.

        Raises:
            SDKStateError: Entered twice.
        """
        if self._open:
            raise SDKStateError("a MemoryTransport can be entered once")
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop using the platform; the node's API is no longer reachable."""
        self._open = False
        self._core.unregister_api(self._node_id)

    def open(self, request: Request) -> AbstractAsyncContextManager[Response]:
        """Hand ``request`` to the node's gateway; its answer is open inside the block.

        Raises:
            ServiceUnavailable: The platform is gone (it exited), or the service dropped the
                connection (chaos mode).
            RequestTimeout: The gateway did not answer within ``request.timeout``.
            SDKStateError: The transport is not entered.

        Cancellation:
            The request is abandoned where the service is (as a dropped connection would).
        """
        if not self._open:
            raise SDKStateError("the transport is not open (enter it with 'async with')")
        return _Exchange(self._core, self._node_id, request)

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        """Register ``handler`` as the node's API with the platform until cancelled.

        Cancellation:
            Unregisters it.
        """
        self._core.register_api_handler(self._node_id, handler)
        try:
            task_status.started(None)
            await anyio.sleep_forever()
        finally:
            self._core.unregister_api(self._node_id)
