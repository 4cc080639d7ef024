"""The local FLAME platform: N node gateways and their services on 127.0.0.1."""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import aiohttp
import anyio
from yarl import URL

from ..errors import FlameError, InvalidArgument
from ._broker import BrokerService
from ._core import PlatformCore
from ._data import DataService, NodeData, load_data_folder
from ._gateway import bind_socket, node_app, serve, shared_app
from ._node import LocalNode
from ._po import PodOrchestrator
from ._proxy import AnalysisProxy
from ._records import DeliveryEvent, LogRecord
from ._service import NodeService
from ._storage import StorageService
from ._tasks import HostedTaskGroup
from ._tokens import TokenIssuer

__all__ = ["LocalPlatform", "PlatformStateError"]

logger = logging.getLogger("flame_async.local.platform")

_NODE_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHORT_ID_LEN = 8
# nginx-analysis-{node}-{short id} must stay a host name label (at most 63 characters).
MAX_NODE_ID_LEN = 63 - len("nginx-analysis--") - _SHORT_ID_LEN
_MAX_CONNECTIONS = 256


class PlatformStateError(FlameError, RuntimeError):
    """The platform was used before ``async with`` entered it, or entered twice."""


@dataclass(frozen=True, slots=True)
class _Running:
    nodes: tuple[LocalNode, ...]
    core: PlatformCore
    broker: BrokerService
    po: PodOrchestrator
    storage: StorageService
    shared_url: str


class LocalPlatform:
    """Every node service of a FLAME analysis, served over HTTP on one machine.

    Each node gets a gateway (standing in for its nginx sidecar) on an ephemeral port with the
    message broker, the storage service, the hub-adapter data-store listing, the Kong data
    proxy, the pod orchestrator's log intake and the ``/analysis`` ingress behind it;
    one more port routes to the right gateway by ``Host: nginx-{DEPLOYMENT_NAME}``, so a
    container can use it as ``HTTP_PROXY``. A status loop per node calls the node's API like
    the real pod orchestrator. Run each node's analysis with :attr:`LocalNode.env` as its
    environment (or ``node.config()``); its API must listen on ``node.api_port``.

    Example::

        async with LocalPlatform(3) as platform:
            for node in platform.nodes:
                tg.start_soon(run_analysis, node.config())

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
    ) -> None:
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

        shared_socket = bind_socket(self._host, self._shared_port)
        stack.callback(shared_socket.close)
        gateway_sockets = []
        for _ in self._node_ids:
            gateway_sockets.append(sock := bind_socket(self._host))
            stack.callback(sock.close)
        # Allocated while the gateway sockets are held, so no API port equals a gateway port.
        api_ports = _free_ports(self._host, len(self._node_ids))

        issuer = TokenIssuer(self._analysis_id, lifetime=self._token_lifetime)
        nodes = tuple(
            self._make_node(node_id, issuer, sock.getsockname()[1], api_port)
            for node_id, sock, api_port in zip(
                self._node_ids, gateway_sockets, api_ports, strict=True
            )
        )
        core = PlatformCore(
            analysis_id=self._analysis_id,
            project_id=self._project_id,
            host=self._host,
            nodes=nodes,
            issuer=issuer,
            session=session,
            task_group=task_group,
        )
        broker = BrokerService(core, retry_initial=self._webhook_retry_initial)
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
        ]
        for node, sock in zip(nodes, gateway_sockets, strict=True):
            await serve(node_app(node, services), sock, stack)
        await serve(shared_app(nodes, services), shared_socket, stack)
        shared_url = _http_url(self._host, shared_socket.getsockname()[1])

        for node in nodes:
            task_group.start_soon(po.watch, node, name=f"PO status loop of {node.node_id}")
        logger.debug(
            "local platform for analysis %s up: %s, shared %s",
            self._analysis_id,
            ", ".join(f"{n.node_id}={n.gateway_url}" for n in nodes),
            shared_url,
        )
        return _Running(nodes, core, broker, po, storage, shared_url)

    def _make_node(
        self, node_id: str, issuer: TokenIssuer, gateway_port: int, api_port: int
    ) -> LocalNode:
        short = re.sub(r"[^a-z0-9]", "", self._analysis_id.lower())[:_SHORT_ID_LEN] or "0"
        deployment_name = f"analysis-{node_id}-{short}"
        gateway_url = _http_url(self._host, gateway_port)
        env = {
            "ANALYSIS_ID": self._analysis_id,
            "PROJECT_ID": self._project_id,
            "DEPLOYMENT_NAME": deployment_name,
            "KEYCLOAK_TOKEN": issuer.mint(node_id),
            "DATA_SOURCE_TOKEN": secrets.token_urlsafe(24),
            "FLAME_BASE_URL": gateway_url,
            "FLAME_API_HOST": self._host,
            "FLAME_API_PORT": str(api_port),
            "FLAME_PARTNER_STATUS_GRACE": repr(self._partner_status_grace),
        }
        return LocalNode(
            node_id=node_id,
            role="aggregator" if node_id == self._aggregator_id else "default",
            deployment_name=deployment_name,
            gateway_url=gateway_url,
            gateway_port=gateway_port,
            api_port=api_port,
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
            PlatformStateError: The platform has not been entered.
        """
        return self._run.shared_url

    @property
    def deliveries(self) -> list[DeliveryEvent]:
        """What happened to each message copy so far, in the order the outcomes were known.

        Holds the last 100 000 events.

        Raises:
            PlatformStateError: The platform has not been entered.
        """
        return list(self._run.broker.events)

    def logs(self, node_id: str) -> list[LogRecord]:
        """The log lines ``node_id`` streamed to the pod orchestrator, oldest first.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.logs(node_id)

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

    def token(self, node_id: str) -> str:
        """The node's current token: the one in its env, or the last refresh the PO sent.

        Raises:
            PlatformStateError: The platform has not been entered.
            KeyError: There is no such node.
        """
        return self._run.po.token(node_id)


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


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (bound at once, released)."""
    sockets: list[socket.socket] = []
    try:
        sockets.extend(bind_socket(host) for _ in range(count))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _http_url(host: str, port: int) -> str:
    return str(URL.build(scheme="http", host=host, port=port))
