"""The running platform as its services see it.

Services (broker, pod orchestrator, proxy, storage and data) borrow everything from one
:class:`PlatformCore`: the analysis ids, the node table, the token issuer, the shared HTTP
client session, the task group, and the way to reach each node's API. They never close or
cancel any of it; :class:`~flame_async.local.LocalPlatform` does.

A node's API is reached over HTTP on the port it announced (or that the platform bound for it),
or, for a node on the in-memory transport, by calling its handler directly: services ask
:meth:`PlatformCore.call_node` and do not care which.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVarTuple

import aiohttp
from anyio.abc import TaskGroup
from yarl import URL

from .._transport import DirectWebhook, Handler, Request, Response, aiohttp_data
from .._wire import BlockReport
from ._faults import FaultPlan
from ._node import LocalNode
from ._tokens import TokenIssuer

__all__ = ["NodeUnreachable", "PlatformCore"]

logger = logging.getLogger("flame_async.local")

_Ts = TypeVarTuple("_Ts")
_LOOPBACK_ALIASES = {"127.0.0.1": ("localhost",), "::1": ("localhost",)}
_NO_TIMEOUT: Final = aiohttp.ClientTimeout(total=None)


class NodeUnreachable(ConnectionError):
    """A node's API cannot be reached (not listening yet, gone, or it refused the connection)."""


class _HttpAnswer(Response):
    """An answer read from aiohttp, its body still streaming."""

    __slots__ = ("_raw",)

    def __init__(self, raw: aiohttp.ClientResponse) -> None:
        super().__init__(
            raw.status,
            headers=raw.headers,  # case-insensitive already: no copy
            content_length=raw.content_length,
        )
        self._raw = raw

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._raw.content
        while True:
            try:
                chunk = await content.readany()
            except aiohttp.ClientError as exc:
                raise NodeUnreachable(f"the answer was cut off: {exc}") from exc
            if not chunk:
                return
            yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        if limit is not None:
            return await super().read(limit)
        try:
            return await self._raw.read()
        except aiohttp.ClientError as exc:
            raise NodeUnreachable(f"the answer was cut off: {exc}") from exc


_CLOCK_RESOLUTION: Final = 0.05
"""Seconds between two looks of the :class:`RequestClock` at the requests it bounds."""


class _Bounded:
    """One in-memory request the :class:`RequestClock` bounds in time."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False


class RequestClock:
    """Bounds in-memory requests in time with one coarse clock instead of a timer each.

    A timer per request (``asyncio.timeout``) costs a heap push and a cancel in the event
    loop's timer heap, which holds thousands of entries when thousands of simulated nodes
    wait; almost every in-memory request is answered without waiting at all. The clock keeps
    the requests under way in a set and looks at them every :data:`_CLOCK_RESOLUTION`
    seconds while there are any, cancelling the task of each that is past its deadline (the
    request then ends with :class:`~flame_async.errors.RequestTimeout`, up to one resolution
    late).
    """

    def __init__(self, core: PlatformCore) -> None:
        self._core = core
        self._bounded: set[_Bounded] = set()
        self._news = asyncio.Event()
        self._running = False

    def watch(self, task: asyncio.Task[Any], deadline: float) -> _Bounded:
        """Bound ``task``'s request by ``deadline`` (``time.monotonic()``) until forgotten.

        Raises:
            RuntimeError: The platform is shutting down (its task group is closed).
        """
        bounded = _Bounded(task, deadline)
        if not self._running:
            self._core.spawn(self._run)
            self._running = True
        self._bounded.add(bounded)
        self._news.set()
        return bounded

    def __len__(self) -> int:
        """How many requests the clock bounds now."""
        return len(self._bounded)

    def forget(self, bounded: _Bounded) -> bool:
        """Stop bounding a request; whether the clock had cancelled it (its deadline passed)."""
        self._bounded.discard(bounded)
        return bounded.expired

    async def _run(self) -> None:
        try:
            while True:
                if not self._bounded:
                    self._news.clear()
                    await self._news.wait()
                # at most one look per resolution, however many requests come and go meanwhile
                await asyncio.sleep(_CLOCK_RESOLUTION)
                now = time.monotonic()
                for bounded in [b for b in self._bounded if b.deadline <= now]:
                    self._bounded.discard(bounded)
                    bounded.expired = True
                    bounded.task.cancel()
        finally:
            self._running = False


class PlatformCore:
    """Shared state of one running platform.

    Args:
        analysis_id: The analysis every node takes part in.
        project_id: The analysis' project.
        host: The address the gateways listen on (and node APIs are reached at).
        nodes: The nodes, aggregator included, in participant order.
        issuer: Mints and verifies the nodes' tokens.
        session: The platform's one HTTP client session (deliveries, PO calls, proxying).
        task_group: Where background work runs; cancelled when the platform exits.
        faults: Chaos mode's dice, when faults are injected.
    """

    def __init__(
        self,
        *,
        analysis_id: str,
        project_id: str,
        host: str,
        nodes: Sequence[LocalNode],
        issuer: TokenIssuer,
        session: aiohttp.ClientSession,
        task_group: TaskGroup,
        faults: FaultPlan | None = None,
    ) -> None:
        self.analysis_id = analysis_id
        self.project_id = project_id
        self.host = host
        self.nodes: dict[str, LocalNode] = {node.node_id: node for node in nodes}
        self.issuer = issuer
        self.session = session
        self._task_group = task_group
        self.faults = faults
        """Chaos mode's dice and counts (None: no faults are injected)."""
        self.blocked: dict[str, BlockReport] = {}
        """The last blocked-loop report of each node (nodes in other processes send them)."""
        self.closed = False
        """Set when the platform exits: in-memory requests then fail like refused connections."""
        self.request_clock = RequestClock(self)
        """Bounds the in-memory transport's requests in time."""
        self.gateways: dict[str, Handler] = {}
        """Each node's gateway (filled by the platform once the services exist)."""
        self._api_ports: dict[str, int] = {}
        self._targets: dict[tuple[int, str], URL] = {}
        self._url_host = f"[{host}]" if ":" in host else host
        self._api_handlers: dict[str, Handler] = {}
        self._webhooks: dict[str, DirectWebhook] = {}
        self._by_gateway: dict[tuple[str, int], LocalNode] = {}
        self._by_nginx_host: dict[str, LocalNode] = {}
        for node in nodes:
            if node.gateway_port:
                for name in (host.lower(), *_LOOPBACK_ALIASES.get(host, ())):
                    self._by_gateway[(name, node.gateway_port)] = node
            self._by_nginx_host[node.nginx_host] = node

    def spawn(self, func: Callable[[*_Ts], Coroutine[Any, Any, object]], *args: *_Ts) -> None:
        """Run ``func(*args)`` as a new task in the platform's task group.

        The task is cancelled when the platform exits. It must handle its own errors: an
        exception escaping it would cancel the whole platform.

        Raises:
            RuntimeError: The task group is no longer active (the platform is shutting down).
        """
        self._task_group.start_soon(func, *args)

    # -- where node APIs are -----------------------------------------------------------------

    def register_api_port(self, node_id: str, port: int) -> None:
        """``node_id``'s API listens on ``port`` at the platform's host (over HTTP)."""
        self._api_handlers.pop(node_id, None)
        self._webhooks.pop(node_id, None)
        self._api_ports[node_id] = port

    def register_api_handler(self, node_id: str, handler: Handler) -> None:
        """``node_id``'s API is ``handler``, called in this event loop (in-memory transport).

        A handler that is a :class:`~flame_async._transport.DirectWebhook` gets webhook
        deliveries as bodies (:meth:`deliver_webhook`), without a request around them.
        """
        self._api_ports.pop(node_id, None)
        self._api_handlers[node_id] = handler
        api: object = handler  # a callable object may also be a DirectWebhook
        if isinstance(api, DirectWebhook):
            self._webhooks[node_id] = api
        else:
            self._webhooks.pop(node_id, None)

    def unregister_api(self, node_id: str) -> None:
        """``node_id``'s API is gone."""
        self._api_ports.pop(node_id, None)
        self._api_handlers.pop(node_id, None)
        self._webhooks.pop(node_id, None)

    def _api_target(self, node_id: str, request: Request) -> URL:
        port = self._api_ports.get(node_id)
        if port is None:
            raise NodeUnreachable(f"the API of {node_id} is not listening (yet)")
        key = (port, request.path)
        target = self._targets.get(key)
        if target is None:
            target = URL(f"http://{self._url_host}:{port}{request.path}", encoded=True)
            if len(self._targets) < 4096:  # the few node API paths, per port
                self._targets[key] = target
        if request.query_string:
            return URL(f"{target}?{request.query_string}", encoded=True)
        return target

    def api_port(self, node_id: str) -> int | None:
        """The port ``node_id``'s API listens on, if it is reached over HTTP and known."""
        return self._api_ports.get(node_id)

    def api_url(self, node_id: str) -> str | None:
        """The base URL of ``node_id``'s API, if it is reached over HTTP and known."""
        port = self._api_ports.get(node_id)
        return None if port is None else str(URL.build(scheme="http", host=self.host, port=port))

    def takes_webhooks(self, node_id: str) -> bool:
        """Whether ``node_id``'s API takes webhook bodies in this event loop
        (:meth:`deliver_webhook`) without waiting: its node runs."""
        api = self._webhooks.get(node_id)
        return api is not None and api.takes_webhooks_at_once()

    async def deliver_webhook(self, node_id: str, body: bytes) -> int | None:
        """Hand ``body`` to ``node_id``'s webhook in this event loop; the status it answers,
        or None when its API is not in this event loop (then POST it with :meth:`call_node`).

        Raises:
            NodeUnreachable: Chaos mode has taken the API off the network for now.
        """
        api = self._webhooks.get(node_id)
        if api is None:
            return None
        if self.faults is not None and self.faults.api_down(node_id, time.monotonic()):
            raise NodeUnreachable(f"the API of {node_id} is off the network (chaos mode)")
        try:
            return await api.deliver_webhook(body)
        except Exception:  # a server answers 500 for its own bugs; so does this one
            logger.exception("the API of %s failed on /webhook", node_id)
            return 500

    @asynccontextmanager
    async def call_node(
        self, node_id: str, request: Request, *, timeout: float | None = None
    ) -> AsyncIterator[Response]:
        """Send ``request`` to ``node_id``'s API; the answer is open inside the block.

        Raises:
            NodeUnreachable: The API is not known yet, or the connection failed (or chaos mode
                has taken it off the network for now).
            TimeoutError: No answer within ``timeout`` seconds.
        """
        if self.faults is not None and self.faults.api_down(node_id, time.monotonic()):
            raise NodeUnreachable(f"the API of {node_id} is off the network (chaos mode)")
        handler = self._api_handlers.get(node_id)
        if handler is not None:
            async with asyncio.timeout(timeout):  # cheaper than a cancel scope, per delivery
                try:
                    response = await handler(request)
                except Exception:  # a server answers 500 for its own bugs; so does this one
                    logger.exception("the API of %s failed on %s", node_id, request.path)
                    response = Response(500, b'{"detail":"Internal Server Error"}')
            try:
                yield response
            finally:
                await response.aclose()
            return
        target = self._api_target(node_id, request)
        try:
            raw = await self.session.request(
                request.method,
                target,
                data=aiohttp_data(request.body),
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout else _NO_TIMEOUT,
                allow_redirects=False,
                auto_decompress=False,
            )
        except aiohttp.ClientError as exc:
            raise NodeUnreachable(f"the API of {node_id} is not reachable: {exc}") from exc
        try:
            yield _HttpAnswer(raw)
        finally:
            raw.release()

    # -- whose gateway is a URL --------------------------------------------------------------

    def node_behind(self, url: URL) -> LocalNode | None:
        """The node whose gateway ``url`` points at, if any.

        A URL points at a gateway when its host and port are a node gateway's (``localhost`` is
        accepted for a loopback host) or its host is ``nginx-{DEPLOYMENT_NAME}`` of a node on
        the default port 80.
        """
        host = url.host
        if host is None:
            return None
        port = url.port
        if port is not None and (node := self._by_gateway.get((host.lower(), port))) is not None:
            return node
        if port in (None, 80):
            return self._by_nginx_host.get(host.lower())
        return None
