"""The local FLAME platform: N node gateways and their services on 127.0.0.1."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import aiohttp
import anyio
from pydantic import ValidationError
from yarl import URL

from .._transport import AiohttpTransport, Request, Response, Transport
from .._wire import ANNOUNCE_PATH, BLOCKED_PATH, ApiAnnouncement, BlockReport
from ..config import FlameConfig
from ..errors import FlameError, InvalidArgument
from ._broker import DEFAULT_MAX_MESSAGE_BYTES, BrokerService
from ._core import PlatformCore
from ._data import DataService, NodeData, load_data_folder
from ._faults import FaultPlan, Faults
from ._gateway import Gateway, bind_socket, serve, shared_handler
from ._http import (
    Call,
    Route,
    RouteHandler,
    detail_response,
    read_json_object,
    require_bearer,
    validation_response,
)
from ._memory import MemoryTransport
from ._node import LocalNode
from ._po import PodOrchestrator
from ._proxy import AnalysisProxy
from ._records import DeliveryCounts, DeliveryEvent, LogRecord, NodeDeliveryCounts
from ._service import NodeService
from ._storage import StorageService
from ._tasks import HostedTaskGroup
from ._tokens import TokenIssuer

__all__ = ["LocalPlatform", "PlatformStateError", "TransportKind"]

logger = logging.getLogger("flame_async.local.platform")

_NODE_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHORT_ID_LEN = 8
# nginx-analysis-{node}-{short id} must stay a host name label (at most 63 characters).
MAX_NODE_ID_LEN = 63 - len("nginx-analysis--") - _SHORT_ID_LEN
_MAX_CONNECTIONS = 256
_MEMORY_GATEWAY_PORT: Final = 80
_ADMIN_LIMIT: Final = 16 * 1024

TransportKind = Literal["http", "memory"]
"""How nodes reach the platform: real HTTP on 127.0.0.1, or calls in this event loop."""


class PlatformStateError(FlameError, RuntimeError):
    """The platform was used before ``async with`` entered it, or entered twice."""


@dataclass(frozen=True, slots=True)
class _Running:
    nodes: tuple[LocalNode, ...]
    core: PlatformCore
    broker: BrokerService
    po: PodOrchestrator
    storage: StorageService
    shared_url: str | None


class _PlatformAdmin:
    """Local-only routes: a node tells its gateway which port its API got, or that its event
    loop is blocked.

    Only the node itself may (its own token on its own gateway, 403 otherwise): an announcement
    decides where the node's messages and status calls go. Bodies are at most 16 KiB (413).
    """

    prefixes = ("/local-platform",)

    def __init__(self, core: PlatformCore) -> None:
        self._core = core

    def routes(self, node: LocalNode) -> Iterable[Route]:
        async def announce(call: Call) -> Response:
            body = await read_json_object(call, limit=_ADMIN_LIMIT, what="an API announcement")
            if isinstance(body, Response):
                return body
            try:
                port = ApiAnnouncement.model_validate(body).port
            except ValidationError:
                return detail_response(422, 'the body must be {"port": 1-65535}')
            self._core.register_api_port(node.node_id, port)
            logger.debug("the API of %s listens on port %d", node.node_id, port)
            return Response(204)

        async def blocked(call: Call) -> Response:
            body = await read_json_object(call, limit=_ADMIN_LIMIT, what="a block report")
            if isinstance(body, Response):
                return body
            try:
                report = BlockReport.model_validate(body)
            except ValidationError as exc:
                return validation_response(exc)
            if not math.isfinite(report.seconds):
                return detail_response(422, "seconds must be a finite number")
            self._core.blocked[node.node_id] = report
            return Response(204)

        core = self._core

        def own(handler: RouteHandler) -> RouteHandler:
            return require_bearer(handler, core.issuer, core.analysis_id, node_id=node.node_id)

        return [
            Route("PUT", ANNOUNCE_PATH, own(announce)),
            Route("PUT", BLOCKED_PATH, own(blocked)),
        ]


class LocalPlatform:
    """Every node service of a FLAME analysis, served over HTTP on one machine.

    Each node gets a gateway (standing in for its nginx sidecar) on an ephemeral port with the
    message broker, the storage service, the hub-adapter data-store listing, the Kong data
    proxy, the pod orchestrator's log intake and the ``/analysis`` ingress behind it;
    one more port routes to the right gateway by ``Host: nginx-{DEPLOYMENT_NAME}``, so a
    container can use it as ``HTTP_PROXY``. A status loop per node calls the node's API like
    the real pod orchestrator. Run each node's analysis with :attr:`LocalNode.env` as its
    environment (or ``node.config()``): its API binds any free port and announces it to its
    gateway. In this process, :meth:`transport_for` gives a node a transport whose API socket
    the platform has already bound.

    With ``transport="memory"`` nothing listens on a socket: nodes reach their gateways, and
    the platform reaches their APIs, by calls in this event loop (:class:`MemoryTransport`).
    The services are the same code; only HTTP is skipped.

    Example::

        async with LocalPlatform(3) as platform:
            for node in platform.nodes:
                tg.start_soon(run_analysis, node.config(), platform.transport_for(node))

    Args:
        nodes: How many nodes (ids ``node-1`` ... ``node-N``) or their ids. Ids match
            ``[a-z0-9][a-z0-9-]*`` and have at most 39 characters (so that
            ``nginx-{DEPLOYMENT_NAME}`` stays a valid host name).
        aggregator: The aggregator's id; the first node when omitted.
        analysis_id: ``ANALYSIS_ID`` of every node; a random UUID when omitted.
        project_id: ``PROJECT_ID`` of every node; a random UUID when omitted.
        host: Address every gateway and node API uses.
        shared_port: Port of the shared, Host-routed gateway; an ephemeral port when None.
        po_interval: Seconds between two status-loop rounds per node (10 on the real PO).
        token_lifetime: Lifetime of the minted node tokens in seconds.
        webhook_retry_initial: First retry delay of webhook deliveries (1 s on the real
            broker); small values make retry tests fast.
        partner_status_grace: Passed to the nodes as ``FLAME_PARTNER_STATUS_GRACE``.
        out_dir: Where run artefacts belong: final results go to
            ``out_dir/final/{node_id}/{filename}``. When None they go to the platform's
            temporary folder, which is removed on exit (read them inside ``async with``).
        data_dir: The nodes' data: ``DIR/{node_id}/fhir/`` holds FHIR resources or Bundles
            (``.json``, ``.ndjson``), ``DIR/{node_id}/s3/`` any files (sub-folders are key
            prefixes). Read when the platform starts; no node has data sources when None.
        state_dir: Where local objects and tags (``PUT /storage/local``) persist across runs,
            per project and node; ``$XDG_CACHE_HOME/flame-async/state`` (default
            ``~/.cache/flame-async/state``) when None. Nothing is written before the first
            local upload.
        transport: ``"http"`` (real servers on ``host``; the faithful default) or
            ``"memory"`` (no sockets at all; nodes must use :meth:`transport_for`).
        max_message_bytes: The largest broker message accepted, as delivered (its compact
            JSON: the whole webhook body). The default is what a node API takes by default
            (:attr:`FlameConfig.max_api_body_bytes <flame_async.config.FlameConfig>`, 16 MiB),
            so a message too large for the receiver is refused at send time (413), not
            dropped at delivery. The nodes get the same limit
            (``FLAME_MAX_API_BODY_BYTES`` in their environment).
        faults: Chaos mode: the faults to inject (dropped, duplicated, delayed and reordered
            deliveries, 5xx and resets, broker restarts, node APIs off the network, short-lived
            tokens), seeded; see :class:`~flame_async.local.Faults`. None: none.

    Every node service takes a token only on its own node's gateway (on its own port and
    behind the shared port alike): another node's token is answered 403 with the reason, so
    one node never acts as another. Each service bounds what it reads and refuses more with
    413 naming the limit; bad input gets a 4xx, never a 5xx.

    Raises:
        InvalidArgument: An id or option is invalid (raised by the constructor).
    """

    def __init__(
        self,
        nodes: int | Sequence[str] = 3,
        *,
        aggregator: str | None = None,
        analysis_id: str | None = None,
        project_id: str | None = None,
        host: str = "127.0.0.1",
        shared_port: int | None = None,
        po_interval: float = 2.0,
        token_lifetime: float = 3600.0,
        webhook_retry_initial: float = 1.0,
        partner_status_grace: float = 5.0,
        out_dir: Path | None = None,
        data_dir: Path | None = None,
        state_dir: Path | None = None,
        transport: TransportKind = "http",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        faults: Faults | None = None,
    ) -> None:
        if transport not in ("http", "memory"):
            raise InvalidArgument(f"transport must be 'http' or 'memory', got {transport!r}")
        if (
            not isinstance(max_message_bytes, int)
            or isinstance(max_message_bytes, bool)
            or max_message_bytes < 1
        ):
            raise InvalidArgument(
                f"max_message_bytes must be a positive number of bytes, got {max_message_bytes!r}"
            )
        self._max_message_bytes = max_message_bytes
        self._faults = faults
        self.transport: TransportKind = transport
        self._node_ids = _node_ids(nodes)
        if aggregator is None:
            aggregator = self._node_ids[0]
        elif aggregator not in self._node_ids:
            raise InvalidArgument(f"aggregator {aggregator!r} is not one of the nodes")
        self._aggregator_id = aggregator
        self._analysis_id = _checked_id("analysis_id", analysis_id)
        self._project_id = _checked_id("project_id", project_id)
        if shared_port is not None and not 0 <= shared_port <= 65535:
            raise InvalidArgument(f"shared_port={shared_port} is not a port number")
        for name, value in (("po_interval", po_interval), ("token_lifetime", token_lifetime)):
            if not value > 0:
                raise InvalidArgument(f"{name} must be positive, got {value}")
        for name, value in (
            ("webhook_retry_initial", webhook_retry_initial),
            ("partner_status_grace", partner_status_grace),
        ):
            if not value >= 0:
                raise InvalidArgument(f"{name} must not be negative, got {value}")
        if faults is not None:
            faults.check_nodes(self._node_ids)
            if faults.token_lifetime is not None:
                token_lifetime = faults.token_lifetime
        self._host = host
        self._shared_port = shared_port or 0
        self._po_interval = float(po_interval)
        self._token_lifetime = float(token_lifetime)
        self._webhook_retry_initial = float(webhook_retry_initial)
        self._partner_status_grace = float(partner_status_grace)
        self.out_dir = out_dir
        self._data_dir = data_dir
        self._state_dir = state_dir if state_dir is not None else _default_state_dir()
        self._phase: Literal["new", "running", "closed"] = "new"
        self._stack: AsyncExitStack | None = None
        self._running: _Running | None = None

    def __repr__(self) -> str:
        return (
            f"LocalPlatform(nodes={list(self._node_ids)!r}, analysis_id={self._analysis_id!r}, "
            f"{self._phase})"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start every gateway, the shared port and the status loops.

        Raises:
            PlatformStateError: The platform was entered before.
            DataFolderError: ``data_dir`` is missing or holds a file that cannot be served.
            OSError: A port could not be bound (e.g. ``shared_port`` is taken).

        Cancellation: whatever had started is shut down again before the cancellation goes on.
        """
        if self._phase != "new":
            raise PlatformStateError("a LocalPlatform can be entered only once")
        self._phase = "running"
        stack = AsyncExitStack()
        try:
            self._running = await self._start(stack)
        except BaseException:
            self._phase = "closed"
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the gateways, cancel deliveries and status loops, close the HTTP session.

        Recorded deliveries, logs, statuses and the node table stay readable afterwards.

        Cancellation: shutdown still completes (it is bounded by the gateways' 1 s grace
        for requests in flight).
        """
        stack, self._stack = self._stack, None
        self._phase = "closed"
        if self._running is not None:
            self._running.core.closed = True
        if stack is not None:
            await stack.aclose()

    async def _start(self, stack: AsyncExitStack) -> _Running:
        data: dict[str, NodeData] = {}
        if self._data_dir is not None:
            data = await anyio.to_thread.run_sync(load_data_folder, self._data_dir, self._node_ids)
        # intermediate objects, and final results without an out_dir; removed on exit
        work_dir = Path(
            await anyio.to_thread.run_sync(
                functools.partial(tempfile.mkdtemp, prefix="flame-async-")
            )
        )
        stack.push_async_callback(
            anyio.to_thread.run_sync, functools.partial(shutil.rmtree, work_dir, ignore_errors=True)
        )
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        )
        task_group = await stack.enter_async_context(HostedTaskGroup("flame_async.local"))

        # whoever binds a port owns it: the platform binds its gateways here and keeps them
        over_http = self.transport == "http"
        shared_socket: socket.socket | None = None
        gateway_ports = [_MEMORY_GATEWAY_PORT] * len(self._node_ids)
        gateway_sockets: list[socket.socket] = []
        if over_http:
            shared_socket = bind_socket(self._host, self._shared_port)
            stack.callback(shared_socket.close)
            for _ in self._node_ids:
                gateway_sockets.append(sock := bind_socket(self._host))
                stack.callback(sock.close)
            gateway_ports = [sock.getsockname()[1] for sock in gateway_sockets]

        issuer = TokenIssuer(self._analysis_id, lifetime=self._token_lifetime)
        nodes = tuple(
            self._make_node(node_id, issuer, port if over_http else None)
            for node_id, port in zip(self._node_ids, gateway_ports, strict=True)
        )
        plan = None if self._faults is None else FaultPlan(self._faults, time.monotonic())
        core = PlatformCore(
            analysis_id=self._analysis_id,
            project_id=self._project_id,
            host=self._host,
            nodes=nodes,
            issuer=issuer,
            session=session,
            task_group=task_group,
            faults=plan,
        )
        broker = BrokerService(
            core,
            retry_initial=self._webhook_retry_initial,
            max_message_bytes=self._max_message_bytes,
        )
        po = PodOrchestrator(core, interval=self._po_interval)
        storage = StorageService(
            core,
            work_dir=work_dir,
            final_dir=(self.out_dir or work_dir) / "final",
            state_dir=self._state_dir,
        )
        services: list[NodeService] = [
            broker,
            po,
            AnalysisProxy(core),
            storage,
            DataService(core, data),
            _PlatformAdmin(core),
        ]
        gateways = {node.node_id: Gateway(node, services, plan) for node in nodes}
        core.gateways.update((node_id, g.handle) for node_id, g in gateways.items())
        shared_url: str | None = None
        if shared_socket is not None:
            for node, sock in zip(nodes, gateway_sockets, strict=True):
                await serve(gateways[node.node_id].handle, sock, stack)
            await serve(shared_handler(gateways), shared_socket, stack)
            shared_url = _http_url(self._host, shared_socket.getsockname()[1])

        task_group.start_soon(po.run, name="PO status loop")
        if plan is not None and plan.faults.broker_restarts:
            task_group.start_soon(_restart_broker, broker, plan, name="chaos: broker restarts")
            logger.info("chaos mode: %s", plan.faults.spec())
        logger.debug(
            "local platform for analysis %s up (%s): %s, shared %s",
            self._analysis_id,
            self.transport,
            ", ".join(f"{n.node_id}={n.gateway_url}" for n in nodes),
            shared_url,
        )
        return _Running(nodes, core, broker, po, storage, shared_url)

    def _make_node(self, node_id: str, issuer: TokenIssuer, gateway_port: int | None) -> LocalNode:
        short = re.sub(r"[^a-z0-9]", "", self._analysis_id.lower())[:_SHORT_ID_LEN] or "0"
        deployment_name = f"analysis-{node_id}-{short}"
        if gateway_port is None:  # in memory: the real platform's default URL, no socket
            gateway_url = f"http://nginx-{deployment_name}"
            gateway_port = _MEMORY_GATEWAY_PORT
        else:
            gateway_url = _http_url(self._host, gateway_port)
        env = {
            "ANALYSIS_ID": self._analysis_id,
            "PROJECT_ID": self._project_id,
            "DEPLOYMENT_NAME": deployment_name,
            "KEYCLOAK_TOKEN": issuer.mint(node_id),
            "DATA_SOURCE_TOKEN": secrets.token_urlsafe(24),
            "FLAME_BASE_URL": gateway_url,
            "FLAME_API_HOST": self._host,
            "FLAME_API_PORT": "0",
            "FLAME_ANNOUNCE_API": "1",
            "FLAME_MAX_API_BODY_BYTES": str(self._max_message_bytes),
            "FLAME_PARTNER_STATUS_GRACE": repr(self._partner_status_grace),
        }
        return LocalNode(
            node_id=node_id,
            role="aggregator" if node_id == self._aggregator_id else "default",
            deployment_name=deployment_name,
            gateway_url=gateway_url,
            gateway_port=gateway_port,
            env=env,
        )

    # -- always available ----------------------------------------------------------------------

    @property
    def analysis_id(self) -> str:
        """The analysis id (``ANALYSIS_ID``) of every node."""
        return self._analysis_id

    @property
    def project_id(self) -> str:
        """The project id (``PROJECT_ID``) of every node."""
        return self._project_id

    @property
    def node_ids(self) -> tuple[str, ...]:
        """The node ids in participant order."""
        return self._node_ids

    @property
    def aggregator_id(self) -> str:
        """The aggregator's node id."""
        return self._aggregator_id

    @property
    def data_dir(self) -> Path | None:
        """The folder the nodes' data sources come from, if any."""
        return self._data_dir

    @property
    def state_dir(self) -> Path:
        """The folder where local objects and tags persist across runs."""
        return self._state_dir

    @property
    def max_message_bytes(self) -> int:
        """The largest broker message accepted, in bytes, as delivered (its compact JSON).

        Larger sends are refused by the broker with 413; send such data through storage.
        """
        return self._max_message_bytes

    # -- once entered (and still after exit) ---------------------------------------------------

    @property
    def _run(self) -> _Running:
        if self._running is None:
            raise PlatformStateError(
                "the LocalPlatform is not running; use `async with LocalPlatform(...) as "
                "platform:` first"
            )
        return self._running

    @property
    def nodes(self) -> list[LocalNode]:
        """Every node, in participant order.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return list(self._run.nodes)

    def node(self, node_id: str) -> LocalNode:
        """The node with that id.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.core.nodes[node_id]

    @property
    def aggregator(self) -> LocalNode:
        """The aggregator node.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return self._run.core.nodes[self._aggregator_id]

    @property
    def shared_url(self) -> str:
        """URL of the shared port (use as ``HTTP_PROXY``, or send ``Host: nginx-...``).

        Raises:
            PlatformStateError: The platform has not been entered, or runs in memory (it has
                no ports).
        """
        url = self._run.shared_url
        if url is None:
            raise PlatformStateError("the in-memory platform has no shared port (no sockets)")
        return url

    # -- node APIs -----------------------------------------------------------------------------

    def bind_api(self, node_id: str) -> socket.socket:
        """Bind a listening socket for ``node_id``'s API and hand it over (the caller owns it).

        The platform knows the port from now on: deliveries and status calls go there. This
        is how in-process nodes get their API socket without any free-port guessing.

        Raises:
            PlatformStateError: The platform is not running, or runs in memory.
            KeyError: There is no such node.
            OSError: No socket could be bound.
        """
        if self.transport != "http":
            raise PlatformStateError("the in-memory platform reaches node APIs without sockets")
        core = self._run.core
        core.nodes[node_id]
        sock = bind_socket(self._host)
        core.register_api_port(node_id, sock.getsockname()[1])
        return sock

    def transport_for(self, node: LocalNode | str, config: FlameConfig | None = None) -> Transport:
        """A transport for one node of this platform, for ``FlameSDK(config, transport=...)``.

        Over HTTP it is an :class:`~flame_async.AiohttpTransport` whose API socket the
        platform bound (:meth:`bind_api`); in memory a :class:`MemoryTransport`.

        Args:
            node: The node (or its id).
            config: The node's configuration (default ``node.config()``).

        Raises:
            PlatformStateError: The platform is not running.
            KeyError: There is no such node.
        """
        node_id = node if isinstance(node, str) else node.node_id
        core = self._run.core
        if self.transport == "memory":
            core.nodes[node_id]
            return MemoryTransport(core, node_id)
        return AiohttpTransport.from_config(
            config or core.nodes[node_id].config(), api_socket=self.bind_api(node_id)
        )

    def blocked(self, node_id: str) -> BlockReport | None:
        """What ``node_id`` last reported about its event loop being blocked (nodes in their
        own processes report it from a watchdog thread), or None.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return self._run.core.blocked.get(node_id)

    def api_port(self, node_id: str) -> int | None:
        """The port ``node_id``'s API listens on, once known (None in memory, or before).

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return self._run.core.api_port(node_id)

    def call_api(
        self, node_id: str, request: Request, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[Response]:
        """Send ``request`` to ``node_id``'s API (over HTTP or in memory), as the PO does.

        Raises:
            PlatformStateError: The platform has not been entered.
            NodeUnreachable: (entering) The API is not listening.
            TimeoutError: (entering) No answer within ``timeout``.
        """
        return self._run.core.call_node(node_id, request, timeout=timeout)

    @property
    def deliveries(self) -> list[DeliveryEvent]:
        """What happened to each message copy so far, in the order the outcomes were known.

        Holds the last 100 000 events.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return list(self._run.broker.events)

    def delivery_counts(self) -> DeliveryCounts:
        """The broker's running totals: copies recorded, delivered, dropped; O(1), no copy.

        They cover the whole run, also the events :attr:`deliveries` no longer keeps.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return self._run.broker.delivery_log.counts()

    def node_delivery_counts(self, node_id: str) -> NodeDeliveryCounts:
        """The copies ``node_id`` sent and received so far; O(1), no copy of the events.

        All zero before the node's first message, and for a name that is no node.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return self._run.broker.delivery_log.node_counts(node_id)

    def deliveries_since(self, cursor: int = 0) -> tuple[list[DeliveryEvent], int]:
        """The delivery events recorded after ``cursor``, oldest first, and the next cursor.

        Events are numbered 1, 2, ... as their outcome becomes known; pass back the cursor
        this returned to get only what is new, at a cost of O(new events) instead of a copy
        of all of them (:attr:`deliveries`). When more came than are kept (the last 100 000),
        the kept ones are returned.

        Raises:
            PlatformStateError: The platform has not been entered.
            InvalidArgument: ``cursor`` is negative.
        """
        return self._run.broker.delivery_log.since(cursor)

    def logs(self, node_id: str) -> list[LogRecord]:
        """The log lines ``node_id`` streamed to the pod orchestrator, oldest first.

        The PO keeps the last 20 000 entries and 16 Mi characters of log text per node; an
        entry longer than 64 Ki characters or 1000 lines is cut and ends with a marker saying
        how long it was.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.logs(node_id)

    def logs_since(self, node_id: str, cursor: int = 0) -> tuple[list[LogRecord], int]:
        """The log lines ``node_id`` streamed after ``cursor``, oldest first, and the next cursor.

        Lines are numbered 1, 2, ... as they arrive; pass back the cursor this returned to get
        only what is new, at a cost of O(new lines) instead of a copy of all of them
        (:meth:`logs`). When more came than the PO keeps, the kept ones are returned.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
            InvalidArgument: ``cursor`` is negative.
        """
        return self._run.po.logs_since(node_id, cursor)

    def nodes_changed_since(self, cursor: int = 0) -> tuple[list[str], int]:
        """The nodes that streamed a log line or changed status after ``cursor``, and the next
        cursor.

        Changes are numbered 1, 2, ... across all nodes; pass back the cursor this returned to
        learn which nodes to look at again (:meth:`logs_since`, :meth:`status`), at a cost of
        O(nodes changed) instead of a look at every node. Least recently changed first.

        Raises:
            PlatformStateError: The platform has not been entered.
            InvalidArgument: ``cursor`` is negative.
        """
        return self._run.po.changed_since(cursor)

    def status(self, node_id: str) -> str | None:
        """The node's last status (from its logs, or a terminal one from its ``/healthz``).

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.status(node_id)

    def progress(self, node_id: str) -> int:
        """The node's highest reported progress, 0-100.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.progress(node_id)

    def health(self, node_id: str) -> str | None:
        """What the node's ``/healthz`` last reported, ``"unreachable"``, or None before a poll.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.health(node_id)

    def final_results(self, node_id: str | None = None) -> list[Path]:
        """The final results written so far (``PUT /storage/final``), oldest first.

        Args:
            node_id: Only this node's results; every node's when None.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.storage.final_results(node_id)

    @property
    def faults(self) -> FaultPlan | None:
        """Chaos mode's plan (its faults and what it injected so far), or None.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return self._run.core.faults

    def token_refreshes(self, node_id: str) -> int:
        """How often the pod orchestrator refreshed ``node_id``'s token.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.token_refreshes(node_id)

    def token(self, node_id: str) -> str:
        """The node's current token: the one in its env, or the last refresh the PO sent.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.token(node_id)


async def _restart_broker(broker: BrokerService, plan: FaultPlan) -> None:
    """Restart the broker at each time chaos mode scheduled (in-flight deliveries are lost)."""
    for at in plan.faults.broker_restarts:
        await anyio.sleep(max(0.0, plan.started + at - time.monotonic()))
        plan.injected["broker-restart"] += 1
        logger.info("chaos mode: the message broker restarts")
        broker.restart()


def _node_ids(nodes: int | Sequence[str]) -> tuple[str, ...]:
    if isinstance(nodes, int):
        if nodes < 1:
            raise InvalidArgument(f"a platform needs at least one node, got {nodes}")
        return tuple(f"node-{i}" for i in range(1, nodes + 1))
    if isinstance(nodes, str):
        raise InvalidArgument("nodes must be a number or a sequence of node ids, not a string")
    ids = tuple(nodes)
    if not ids:
        raise InvalidArgument("a platform needs at least one node")
    for node_id in ids:
        if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
            raise InvalidArgument(
                f"node id {node_id!r} must consist of lowercase letters, digits and '-' and "
                "start with a letter or digit"
            )
        if len(node_id) > MAX_NODE_ID_LEN:
            raise InvalidArgument(
                f"node id {node_id!r} is longer than {MAX_NODE_ID_LEN} characters"
            )
    duplicates = sorted({n for n in ids if ids.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"duplicate node ids: {', '.join(duplicates)}")
    return ids


def _checked_id(name: str, value: str | None) -> str:
    if value is None:
        return str(uuid.uuid4())
    if not _ID.fullmatch(value):
        raise InvalidArgument(f"{name}={value!r} may contain only letters, digits, '.', '_', '-'")
    return value


def _default_state_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return base / "flame-async" / "state"


def _http_url(host: str, port: int) -> str:
    return str(URL.build(scheme="http", host=host, port=port))
