"""The transport seam: how a node reaches its gateway, and how the platform reaches the node."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from anyio.abc import TaskStatus

from ._http import Handler, Request, Response

__all__ = ["DirectWebhook", "Transport"]


class Transport(Protocol):
    """What carries a node's HTTP exchanges, outbound and inbound.

    A transport is entered once (``async with``) by the :class:`~flame_async.FlameSDK` that is
    given it, and closed when the SDK closes. Implementations: :class:`AiohttpTransport` (real
    HTTP, the default) and :class:`flame_async.local.MemoryTransport` (the local platform in
    the same event loop, without sockets).
    """

    async def __aenter__(self) -> Self:
        """Acquire what the transport needs (a connection pool, a platform registration)."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release everything; responses still open are closed."""
        ...

    def open(self, request: Request) -> AbstractAsyncContextManager[Response]:
        """Send ``request`` to the node gateway; the answer is open inside the block.

        Raises:
            ServiceUnavailable: The gateway could not be reached.
            RequestTimeout: No answer within ``request.timeout``.

        Reading the response body raises :class:`~flame_async.errors.TransportError`
        subclasses only (e.g. :class:`~flame_async.errors.IncompleteResponse`).
        """
        ...

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        """Make ``handler`` (the node API) reachable for the platform until cancelled.

        Reports the port it listens on (None when there is no socket) once reachable.

        Raises:
            StartupError: It cannot be made reachable (e.g. the port is taken).
        """
        ...


@runtime_checkable
class DirectWebhook(Protocol):
    """A node API handler that also takes webhook bodies without a request around them.

    An in-process transport (the in-memory one) hands broker deliveries to
    :meth:`deliver_webhook` instead of building a ``POST /webhook`` request for the handler:
    the same checks and the same answer, without the HTTP layer. Handlers without it get the
    request.
    """

    async def deliver_webhook(self, body: bytes) -> int:
        """Take one webhook body as ``POST /webhook`` would; the status it would answer."""
        ...

    def takes_webhooks_at_once(self) -> bool:
        """True when :meth:`deliver_webhook` answers without waiting (the node runs; while it
        starts, a delivery may be held until it can take it)."""
        ...
