"""``FlameSDK``: the one object an analysis enters.

It owns the transport (the HTTP session, or the in-memory link to a local platform), the node
API and one task group; the services (messaging, status, results, data) borrow them. Start-up
builds everything on one :class:`~contextlib.AsyncExitStack` into a frozen running state, and
shutdown unwinds that stack: the order reads top to bottom in :meth:`FlameSDK._start`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Literal, Self

import anyio
import orjson
from anyio.abc import TaskGroup

from ._jwt import TokenStore
from ._protocol import ProtocolSettings, Rejection
from ._transport import AiohttpTransport, GatewayClient, Transport, retry_call
from ._watchdog import Block, LoopWatchdog
from ._wire import ANNOUNCE_PATH, BLOCKED_PATH, ApiAnnouncement, BlockReport
from .api import NodeApi
from .broker import (
    INLINE_LIMIT,
    BrokerService,
    Handler,
    LargeMessages,
    Receivers,
    discover,
    subscribe,
    unsubscribe,
)
from .config import FlameConfig, node_environ, node_transport
from .data import DataService, DataSource, FhirClient, S3Client
from .errors import InvalidArgument, SDKStateError, StartupError, TransportError
from .models import (
    LocalDP,
    Message,
    NodeRole,
    NodeStatus,
    Participant,
    ResultInfo,
    RunStatus,
    SendReport,
)
from .results import ResultsService
from .status import PoLogHandler, Progress, StatusService

__all__ = ["FlameSDK"]

log = logging.getLogger("flame_async.sdk")

_STARTING_HOLD: Final = 30.0
"""Seconds a webhook that arrives during start-up waits for discovery before it gets 503."""


def _block_reporter(config: FlameConfig, tokens: TokenStore) -> Callable[[Block], None]:
    """Tells the local platform's gateway, from the watchdog's thread, that the loop is stuck
    (the loop itself cannot: it is the thing that is stuck). Best effort, bounded."""
    url = config.base_url + BLOCKED_PATH
    use_proxy = config.uses_platform_gateway

    def report(block: Block) -> None:
        body = BlockReport(
            seconds=round(block.seconds, 1), location=block.location, ongoing=block.ongoing
        ).wire()
        request = urllib.request.Request(  # noqa: S310 - the node's own gateway, http(s) only
            url,
            data=orjson.dumps(body),
            method="PUT",
            headers={"Content-Type": "application/json", "Authorization": tokens.authorization()},
        )
        handlers = [] if use_proxy else [urllib.request.ProxyHandler({})]
        try:
            with urllib.request.build_opener(*handlers).open(request, timeout=0.5):
                pass
        except (OSError, ValueError):  # the gateway is gone or slow: the report is a bonus
            pass

    return report


@dataclasses.dataclass(frozen=True, slots=True)
class _Running:
    """Everything a started node has; built once by :meth:`FlameSDK._start`."""

    config: FlameConfig
    gateway: GatewayClient
    task_group: TaskGroup
    api: NodeApi
    api_port: int | None
    broker: BrokerService
    results: ResultsService
    data: DataService


class FlameSDK:
    """The analysis runtime of one FLAME node.

    Use it as ``async with FlameSDK() as flame:``. Entering waits for the node gateway, starts the
    node API, subscribes the webhook, looks up the participants and sets the run status to
    ``executing``. Leaving normally sets ``executed``; leaving by an exception sets ``failed``,
    ships the traceback to the PO log and tells the peers; leaving by cancellation sets
    ``stopped``. Nothing started by the SDK outlives the block.

    Args:
        config: The node configuration; read from ``os.environ`` when omitted.
        transport: How the node reaches its gateway and is reached: an
            :class:`~flame_async.AiohttpTransport` built from ``config`` when omitted (or what
            the local runner set up for this node), or e.g. a
            :class:`~flame_async.local.MemoryTransport`. The SDK enters and closes it.
        status_sync: Partner statuses this node adopts from ``/partner_status`` (see "Partner
            status" in the documentation's status page).
        ship_logs: Ship :attr:`logger` records (and status/progress) to the PO.
        log_level: Lowest level shipped to the PO.
        resend_initial: Seconds before an unacknowledged message is first sent again while no
            acknowledgement has been measured yet (default 1, as TCP); afterwards the pause
            follows the measured acknowledgement round trips (see docs/concepts/delivery.md).
        gap_timeout: Longest time a received message is held back for an earlier one of the
            same sender that does not arrive (see docs/concepts/delivery.md).
        shutdown_timeout: Longest time the shutdown steps (status, log flush, unsubscribe) take.
        block_warning: Seconds the event loop may be blocked (by code that does not await)
            before the node logs where, once per place; None turns the watchdog off.
        aggregator_requires_data: Load data sources on the aggregator too (analyzer nodes
            always load them).
        inline_message_limit: Largest message payload (JSON bytes, default 1 MiB) the broker
            carries inside a message; larger ones go as ``large_messages`` says.
        large_messages: ``"storage"`` (default): a larger payload is stored once per receiver
            in the storage service and read back by the receiver before it hands the message
            over, so the receiver gets the same message; ``"refuse"``: ``send_message`` raises
            :class:`~flame_async.errors.MessageTooLarge` before any I/O. flamesdk receivers
            cannot read stored payloads: sending them a larger message raises
            :class:`~flame_async.errors.MessageTooLarge` either way.
        unreachable_grace: Seconds the node's gateway may stay unreachable while something
            waits on it (a wait, a send) before the waits end with
            :class:`~flame_async.errors.ServiceUnavailable` (the platform is gone); the first
            answer after that ends the outage.

    Raises:
        SDKStateError: (on enter) Entered twice, or on an event loop that is not asyncio's
            (trio: aiohttp needs asyncio).
        ConfigError: (on enter) The environment is missing variables or has malformed ones.
        StartupError: (on enter) The gateway never answered, or the API port cannot be bound.
        TransportError: (on enter) The broker refused the subscription or participant lookup.
    """

    def __init__(
        self,
        config: FlameConfig | None = None,
        *,
        transport: Transport | None = None,
        status_sync: tuple[str, ...] = ("executed", "stopped", "failed"),
        ship_logs: bool = True,
        log_level: int = logging.INFO,
        resend_initial: float = 1.0,
        gap_timeout: float = 5.0,
        shutdown_timeout: float = 10.0,
        block_warning: float | None = 1.0,
        aggregator_requires_data: bool = False,
        inline_message_limit: int = INLINE_LIMIT,
        large_messages: LargeMessages = "storage",
        unreachable_grace: float = 10.0,
    ) -> None:
        if inline_message_limit < 1:
            raise InvalidArgument(
                f"inline_message_limit must be a positive number of bytes, got "
                f"{inline_message_limit!r}"
            )
        if large_messages not in ("storage", "refuse"):
            raise InvalidArgument(
                f"large_messages must be 'storage' or 'refuse', got {large_messages!r}"
            )
        if not unreachable_grace > 0:
            raise InvalidArgument(
                f"unreachable_grace must be a positive number of seconds, got {unreachable_grace!r}"
            )
        self._inline_limit = inline_message_limit
        self._large_messages: LargeMessages = large_messages
        self._unreachable_grace = unreachable_grace
        self._config_arg = config
        self._transport_arg = transport
        self._ship_logs = ship_logs
        self._log_level = log_level
        self._settings = ProtocolSettings(resend_initial=resend_initial, gap_timeout=gap_timeout)
        self._shutdown_timeout = shutdown_timeout
        self._block_warning = block_warning
        self._blocked_at: set[str] = set()
        self.blocks: list[Block] = []
        """Times this node's event loop was blocked for longer than ``block_warning``."""
        self._aggregator_requires_data = aggregator_requires_data
        self._state: Literal["new", "starting", "open", "closed"] = "new"
        self._running: _Running | None = None
        self._stack = AsyncExitStack()
        self._broker_ready: asyncio.Future[BrokerService] | None = None
        self._exit_reason: tuple[str, str] | None = None
        self._closing_by = 0.0
        self.status = StatusService(status_sync=status_sync)
        self.log_handler = PoLogHandler(self.status, level=log_level)
        self.logger = logging.getLogger("flame_async.analysis")
        """Logger whose records are shipped to the PO (its name gains the node id on enter)."""

    def __repr__(self) -> str:
        node = self._running.broker.node_id if self._running else "?"
        return f"<FlameSDK node={node!r} state={self._state} status={self.status.status.value}>"

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise SDKStateError("a FlameSDK can be entered once; create a new one")
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # trio, or no event loop at all
            raise SDKStateError(
                "flame-async runs on asyncio (its HTTP library, aiohttp, needs it), and no "
                "asyncio event loop is running (trio?); start the analysis with "
                "asyncio.run(main()) or anyio.run(main)"
            ) from None
        self._state = "starting"
        try:
            config = self._config_arg or FlameConfig.from_env(node_environ())
            self._running = await self._start(self._stack, config)
        except BaseException as exc:
            self._state = "closed"
            # the same exit as a failing analysis: status, traceback to the PO, peers told
            self._final_status(exc)
            await self._stack.aclose()  # each step shields itself (the task group cannot be)
            raise
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        self._final_status(exc)
        await self._stack.aclose()  # each step shields itself (the task group cannot be)

    async def _start(self, stack: AsyncExitStack, config: FlameConfig) -> _Running:
        """Start-up in flamesdk's order, except that the API listens before subscribing.

        Each step registers its own undoing on ``stack``; unwinding it (LIFO) tells the peers,
        deletes the subscription, ships the last logs, stops the background tasks and closes
        the transport, in that order.
        """
        self.status.analysis_id = config.analysis_id
        self.status.grace = config.partner_status_grace
        factory = node_transport()
        transport = self._transport_arg or (
            factory(config) if factory is not None else AiohttpTransport.from_config(config)
        )
        await stack.enter_async_context(transport)
        gateway = GatewayClient(
            transport,
            TokenStore(config.keycloak_token),
            retry=config.retry,
            timeout=config.request_timeout,
        )
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # runs after the steps below, before tg exits
        if self._ship_logs:
            await tg.start(self.status.run_shipper, gateway)
            stack.push_async_callback(self._ship_last_logs, gateway)
        await self._wait_for_gateway(gateway, config)

        self._broker_ready = asyncio.get_running_loop().create_future()
        api = NodeApi(
            gateway=gateway,
            analysis_id=config.analysis_id,
            status=self.status,
            on_webhook=self._on_webhook,
            on_partner_status=self._on_partner_status,
            max_body=config.max_api_body_bytes,
            waiting_for=self.waiting_for,
            webhook_ready=self._webhooks_taken_at_once,
        )
        api_port = await tg.start(transport.serve, api)
        if config.announce_api and api_port:
            await gateway.request(
                "PUT",
                ANNOUNCE_PATH,
                service="gateway",
                json=ApiAnnouncement(port=api_port).wire(),
                expect=(200, 204),
            )
        self.status.started(time.monotonic())

        subscription = await subscribe(gateway, config.analysis_id, config.webhook_url)
        stack.push_async_callback(self._unsubscribe, gateway, config.analysis_id, subscription)
        discovery = await discover(gateway, config.analysis_id)
        broker = BrokerService(
            gateway,
            analysis_id=config.analysis_id,
            discovery=discovery,
            task_group=tg,
            settings=self._settings,
            inline_limit=self._inline_limit,
            large_messages=self._large_messages,
        )
        tg.start_soon(broker.watch_gateway, self._unreachable_grace)
        stack.callback(broker.stop)  # after the steps below: no resend once the end began
        self._broker_ready.set_result(broker)
        stack.push_async_callback(self._drain, broker)  # after telling the peers: acks out
        stack.push_async_callback(self._tell_peers, broker)

        results = ResultsService(gateway, broker, analysis_id=config.analysis_id)
        data = DataService(
            gateway,
            project_id=config.project_id,
            apikey=config.data_source_token,
        )
        if broker.role is NodeRole.DEFAULT or self._aggregator_requires_data:
            await data.load_sources()
        self.logger = logging.getLogger(f"flame_async.analysis.{broker.node_id}")
        if self._ship_logs:
            self.logger.addHandler(self.log_handler)
            stack.callback(self.logger.removeHandler, self.log_handler)
            if self.logger.level == logging.NOTSET:  # else INFO is dropped under root's WARNING
                self.logger.setLevel(self._log_level)
        if self._block_warning is not None:
            watchdog = LoopWatchdog.for_loop(self._block_warning)
            reporter = _block_reporter(config, gateway.tokens) if config.announce_api else None
            token = watchdog.subscribe(self._on_block, reporter)
            stack.callback(watchdog.unsubscribe, token)
        self.status.set_status(RunStatus.EXECUTING)
        log.debug(
            "node %s joined analysis %s as %s", broker.node_id, config.analysis_id, broker.role
        )
        return _Running(config, gateway, tg, api, api_port, broker, results, data)

    def _on_block(self, block: Block) -> None:
        """The event loop ran nothing for a while: say where (once per place)."""
        running = self._running
        if running is None or (block.node and block.node != running.broker.node_id):
            return  # another node's code, on the loop this node shares
        self.blocks.append(block)
        if running.config.announce_api:  # the local platform: tell it the block is over
            running.task_group.start_soon(self._report_block, running.gateway, block)
        if block.location in self._blocked_at:
            return
        self._blocked_at.add(block.location)
        where = f" at {block.location}" if block.location else ""
        self.logger.warning(
            "the event loop was blocked for %.1f s%s: nothing else of this node ran meanwhile "
            "(messages, acknowledgements, its API). Run blocking or CPU-heavy work off the "
            "loop, e.g. 'await asyncio.to_thread(work, ...)'",
            block.seconds,
            where,
        )

    @staticmethod
    async def _report_block(gateway: GatewayClient, block: Block) -> None:
        report = BlockReport(
            seconds=round(block.seconds, 1), location=block.location, ongoing=False
        )
        try:
            await gateway.request(
                "PUT",
                BLOCKED_PATH,
                service="gateway",
                json=report.wire(),
                expect=(200, 204),
                retry=False,
                timeout=2,
            )
        except TransportError as exc:
            log.debug("could not report the blocked loop: %s", exc)

    def _final_status(self, exc: BaseException | None) -> None:
        """Set the run status from how the block ended; the exit steps read the reason."""
        self._closing_by = time.monotonic() + self._shutdown_timeout
        if exc is None:
            self.status.progress.update(1.0)  # the analysis is done, whatever it reported
            self.status.set_status(RunStatus.EXECUTED, force=True)
        elif isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt):
            self.status.set_status(RunStatus.STOPPED, cause="cancelled", force=True)
        else:
            text = "".join(traceback.format_exception(exc))
            self.status.enqueue(f"analysis failed:\n{text}", "error")
            reason = f"{type(exc).__name__}: {exc}"
            self.status.set_status(RunStatus.FAILED, cause=reason, force=True)
            self._exit_reason = ("failed", reason)

    def _time_left(self) -> float:
        return max(0.0, self._closing_by - time.monotonic())

    async def _tell_peers(self, broker: BrokerService) -> None:
        if self._exit_reason is None:
            return
        status, reason = self._exit_reason
        with anyio.CancelScope(shield=True), anyio.move_on_after(min(3.0, self._time_left())):
            await broker.broadcast_status(
                status, reason, timeout=max(0.1, min(3.0, self._shutdown_timeout / 3))
            )

    async def _drain(self, broker: BrokerService) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(min(3.0, self._time_left())):
            await broker.drain()

    async def _ship_last_logs(self, gateway: GatewayClient) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._time_left()):
            await self.status.flush(gateway)

    async def _unsubscribe(
        self, gateway: GatewayClient, analysis_id: str, subscription_id: str
    ) -> None:
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(min(5.0, self._time_left())):
                await unsubscribe(gateway, analysis_id, subscription_id)
        except TransportError as exc:
            log.debug("could not delete the webhook subscription: %s", exc)

    def _webhooks_taken_at_once(self) -> bool:
        ready = self._broker_ready
        return ready is not None and ready.done()

    async def _on_webhook(self, body: bytes) -> Rejection | None:
        """Webhook bodies go to the broker; during start-up they wait (bounded) for it."""
        ready = self._broker_ready
        if ready is None:
            return Rejection(503, "starting", "node is still starting")
        if not ready.done():
            try:
                async with asyncio.timeout(_STARTING_HOLD):
                    await asyncio.shield(ready)
            except TimeoutError:
                return Rejection(503, "starting", "node is still starting")
        return ready.result().on_webhook(body)

    async def _wait_for_gateway(self, gateway: GatewayClient, config: FlameConfig) -> None:
        policy = config.retry.model_copy(
            update={"attempts": 10_000, "deadline": config.startup_timeout, "maximum": 1.0}
        )
        try:
            await retry_call(
                policy,
                lambda: gateway.request(
                    "GET",
                    "/healthz",
                    service="gateway",
                    auth=False,
                    retry=False,
                    timeout=min(5.0, config.startup_timeout),
                ),
                retryable=lambda e: isinstance(e, TransportError),
                what="waiting for the gateway",
            )
        except TransportError as exc:
            raise StartupError(
                f"the node gateway at {config.base_url} did not answer /healthz within "
                f"{config.startup_timeout:g} s (last error: {exc}); check FLAME_BASE_URL or "
                "DEPLOYMENT_NAME"
            ) from exc

    def _on_partner_status(self, statuses: Mapping[str, str | None]) -> None:
        ready = self._broker_ready
        if ready is None or not ready.done():
            return
        broker = ready.result()
        for node, status in statuses.items():
            if status in ("executed", "failed", "stopped"):
                broker.close_peer(node, status, "reported by the platform")
        own = self.status.status
        if own in (RunStatus.FAILED, RunStatus.STOPPED):
            broker.close_all(own.value, "a partner node ended and this node adopted its status")

    @property
    def _run(self) -> _Running:
        """The running state.

        Raises:
            SDKStateError: Outside the ``async with`` block.
        """
        if self._state != "open" or self._running is None:
            if self._state in ("new", "starting"):
                raise SDKStateError("use the SDK inside 'async with FlameSDK() as flame:'")
            raise SDKStateError("this FlameSDK is closed; its 'async with' block has ended")
        return self._running

    def _require(self) -> BrokerService:
        return self._run.broker

    # ------------------------------------------------------------ identity

    @property
    def config(self) -> FlameConfig:
        """The node configuration.

        Raises:
            SDKStateError: Before entering when no config was passed.
        """
        if self._running is not None:
            return self._running.config
        if self._config_arg is None:
            raise SDKStateError("the configuration is read on enter; use 'async with FlameSDK()'")
        return self._config_arg

    def _identity(self) -> BrokerService:
        if self._running is None:
            raise SDKStateError("the node id is known once 'async with FlameSDK()' has started")
        return self._running.broker

    @property
    def node_id(self) -> str:
        """This node's id (from the broker); still readable after the block ended.

        Raises:
            SDKStateError: Before the SDK joined the analysis.
        """
        return self._identity().node_id

    @property
    def role(self) -> NodeRole:
        """This node's role: ``default`` or ``aggregator`` (``unknown`` if the Hub says so).

        Raises:
            SDKStateError: Before the SDK joined the analysis.
        """
        return self._identity().role

    def get_role(self) -> NodeRole:
        """This node's role (flamesdk name)."""
        return self.role

    @property
    def is_aggregator(self) -> bool:
        """True on the aggregator node."""
        return self.role is NodeRole.AGGREGATOR

    @property
    def analysis_id(self) -> str:
        """The analysis id."""
        return self.config.analysis_id

    @property
    def project_id(self) -> str:
        """The project id."""
        return self.config.project_id

    @property
    def api_port(self) -> int | None:
        """The port the node API listens on (useful when configured as 0); None before start
        and on a transport without sockets (in memory)."""
        return self._running.api_port if self._running else None

    @property
    def rejected_requests(self) -> Mapping[str, int]:
        """Malformed requests the node API refused, counted by reason."""
        return dict(self._running.api.rejected) if self._running else {}

    def get_participants(self) -> list[Participant]:
        """The other nodes of the analysis (this node excluded), sorted by id."""
        return self._require().participants

    def get_list_of_participants(self) -> list[Participant]:
        """The other nodes of the analysis (the original design's name for
        :meth:`get_participants`)."""
        return self.get_participants()

    def get_participant_ids(self) -> list[str]:
        """Ids of the other nodes."""
        return [p.node_id for p in self.get_participants()]

    def runs_flamesdk(self, node_id: str) -> bool | None:
        """Whether peer ``node_id`` runs the old flamesdk (True) or flame-async (False), as
        its messages and acknowledgements told this node so far; None before it said anything
        (a :meth:`ready_check` finds out)."""
        return self._require().runs_flamesdk(node_id)

    def get_aggregator_id(self) -> str | None:
        """Id of the aggregator node, or this node's id when it is the aggregator."""
        if self.is_aggregator:
            return self.node_id
        return next(
            (p.node_id for p in self.get_participants() if p.role is NodeRole.AGGREGATOR), None
        )

    # ------------------------------------------------------------ messaging

    async def send_message(
        self,
        receivers: Receivers | None,
        data: Mapping[str, Any] | None = None,
        *,
        category: str,
        timeout: float = 60.0,
    ) -> SendReport:
        """Send ``data`` (a JSON object) to ``receivers`` (every other node if None) and wait
        for acknowledgements.

        Returns a :class:`SendReport`: who acknowledged, who is missing and why. See
        :meth:`BrokerService.send_message` for resends, errors and cancellation.
        """
        return await self._require().send_message(
            receivers, data, category=category, timeout=timeout
        )

    async def await_message(
        self,
        sender: Receivers | None = None,
        *,
        category: str | None = None,
        timeout: float = 60.0,
    ) -> Message:
        """Wait for the next message from ``sender`` (any peer if None).

        Raises:
            MessageTimeout: Nothing arrived within ``timeout``.
            PeerFailed: The sender ended without sending more.

        Cancellation:
            Nothing is lost: the message stays queued for the next wait.
        """
        return await self._require().await_message(sender, category=category, timeout=timeout)

    async def await_messages(
        self,
        senders: Receivers | None = None,
        *,
        category: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Message | None]:
        """One message from each of ``senders`` (all peers if None); None where none came.

        Raises:
            PeerFailed: A sender failed or stopped before answering.

        Cancellation:
            Messages taken so far are put back; nothing is lost.
        """
        return await self._require().await_messages(senders, category=category, timeout=timeout)

    async def send_message_and_wait_for_response(
        self,
        receiver: str | Participant,
        data: Mapping[str, Any] | None = None,
        *,
        category: str,
        timeout: float = 60.0,
    ) -> Message:
        """Send to one node and wait for its reply (a handler's return value, or any message of
        ``category`` from a flamesdk node).

        Raises:
            MessageTimeout: No acknowledgement or reply within ``timeout``.
            RemoteError: The peer's handler raised.
            PeerFailed: The peer ended without replying.
        """
        return await self._require().request(receiver, data, category=category, timeout=timeout)

    async def send_message_and_wait_for_responses(
        self,
        receivers: Receivers | None = None,
        data: Mapping[str, Any] | None = None,
        *,
        category: str,
        timeout: float = 60.0,
    ) -> dict[str, Message | None]:
        """Send to several nodes (all peers if None) and collect one reply each (None if none)."""
        return await self._require().request_all(
            receivers, data, category=category, timeout=timeout
        )

    def messages(
        self,
        senders: Receivers | None = None,
        *,
        category: str | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[Message]:
        """Iterate over messages as they arrive; ends after ``idle_timeout`` s without one."""
        return self._require().messages(senders, category=category, idle_timeout=idle_timeout)

    def get_list_of_messages(
        self, senders: Receivers | None = None, *, category: str | None = None
    ) -> list[Message]:
        """Messages received but not yet handed over, oldest first (nothing is removed)."""
        return self._require().queued(senders, category=category)

    def handler(self, category: str) -> Callable[[Handler], Handler]:
        """Decorator: run the function for each request of ``category`` and send its return
        value (a dict) back as the reply; ``None`` sends no reply, an exception sends the error.

        Raises:
            InvalidArgument: The category is reserved or already handled.
        """
        broker = self._require()

        def register(func: Handler) -> Handler:
            broker.add_handler(category, func)
            return func

        return register

    async def ask_status_nodes(self, timeout: float = 5.0) -> dict[str, NodeStatus]:
        """Ping every peer: ``{node_id: online | offline | not_connected}``."""
        return await self._require().ask_status_nodes(timeout)

    async def ready_check(
        self, nodes: Receivers | None = None, *, timeout: float = 60.0
    ) -> dict[str, bool]:
        """Wait until the peers answer, or ``timeout``: ``{node_id: answered}``."""
        return await self._require().ready_check(nodes, timeout=timeout)

    async def analysis_finished(self, *, timeout: float = 30.0) -> bool:
        """Tell every peer the analysis is finished and mark this node ``executed``.

        Returns:
            True when every peer acknowledged.
        """
        broker = self._require()
        report = (
            await broker.send_message(
                [p.node_id for p in broker.participants],
                {},
                category="analysis_finished",
                timeout=timeout,
            )
            if broker.participants
            else None
        )
        self.status.progress.update(1.0)
        self.status.set_status(RunStatus.EXECUTED, cause="analysis_finished()")
        return report is None or report.ok

    async def wait_until_finished(self, *, timeout: float = 600.0) -> None:
        """Wait until a peer announces :meth:`analysis_finished` (typically the aggregator).

        Raises:
            PeerFailed: A peer failed or stopped first: the analysis will not finish.
            MessageTimeout: No announcement within ``timeout``.

        Cancellation:
            Safe; nothing is consumed.
        """
        await self._require().wait_until_finished(timeout)

    def waiting_for(self) -> list[str]:
        """What this node is waiting for right now (also reported on ``/healthz``)."""
        return self._running.broker.waiting_for() if self._running is not None else []

    # -------------------------------------------------------------- results

    async def send_result(
        self,
        result: Any,
        *,
        filename: str | None = None,
        local_dp: LocalDP | Mapping[str, float] | None = None,
        table_format: Literal["parquet", "csv"] = "parquet",
        allow_pickle: bool = False,
    ) -> ResultInfo:
        """Submit the final result (aggregator only); see :meth:`ResultsService.send_result`.

        Raises:
            NotAggregatorError: This node is not the aggregator (before any I/O).
            CodecError: The result cannot be encoded safely.
        """
        return await self._run.results.send_result(
            result,
            filename=filename,
            local_dp=local_dp,
            table_format=table_format,
            allow_pickle=allow_pickle,
        )

    async def save_intermediate_result(
        self,
        result: Any,
        *,
        receivers: Receivers,
        allow_pickle: bool = False,
        for_flamesdk: bool = False,
    ) -> dict[str, ResultInfo]:
        """Store ``result`` once per receiver (each copy readable once); ``for_flamesdk``
        stores raw pickles, for receivers that run flamesdk (see :meth:`runs_flamesdk`)."""
        return await self._run.results.save_intermediate_result(
            result, receivers=receivers, allow_pickle=allow_pickle, for_flamesdk=for_flamesdk
        )

    async def save_intermediate_result_local(
        self,
        result: Any,
        *,
        tag: str | None = None,
        filename: str | None = None,
        allow_pickle: bool = False,
    ) -> ResultInfo:
        """Keep ``result`` in this node's local storage, optionally under a project-wide tag."""
        return await self._run.results.save_intermediate_result_local(
            result, tag=tag, filename=filename, allow_pickle=allow_pickle
        )

    async def get_intermediate_result(
        self, result_id: str | ResultInfo, *, sender: str | None = None, allow_pickle: bool = False
    ) -> Any:
        """Download and decode a global intermediate result stored for this node."""
        return await self._run.results.get_intermediate_result(
            result_id, sender=sender, allow_pickle=allow_pickle
        )

    async def get_intermediate_result_local(
        self,
        result_id: str | ResultInfo | None = None,
        *,
        tag: str | None = None,
        which: Literal["all", "first", "last"] = "all",
        allow_pickle: bool = False,
    ) -> Any:
        """Read local results by id, or by tag (all, first or last)."""
        return await self._run.results.get_intermediate_result_local(
            result_id, tag=tag, which=which, allow_pickle=allow_pickle
        )

    def list_intermediate_results(self) -> list[ResultInfo]:
        """Global intermediate results sent by this node and announced to it in this run."""
        return self._run.results.list_intermediate_results()

    async def list_intermediate_local_results(self) -> list[ResultInfo]:
        """Tagged local results of this project."""
        return await self._run.results.list_intermediate_local_results()

    async def get_local_tags(self) -> list[str]:
        """Tags of this project's local results."""
        return await self._run.results.get_local_tags()

    async def send_intermediate_result(
        self,
        receivers: Receivers | None,
        result: Any,
        *,
        category: str = "intermediate_data",
        timeout: float = 60.0,
        allow_pickle: bool = False,
    ) -> SendReport:
        """Store ``result`` for each receiver and announce it (flamesdk ``intermediate_data``)."""
        return await self._run.results.send_intermediate_result(
            receivers, result, category=category, timeout=timeout, allow_pickle=allow_pickle
        )

    async def await_intermediate_result(
        self,
        sender: str,
        *,
        category: str = "intermediate_data",
        timeout: float = 60.0,
        allow_pickle: bool = False,
    ) -> Any:
        """Wait for ``sender``'s intermediate result and decode it."""
        return await self._run.results.await_intermediate_result(
            sender, category=category, timeout=timeout, allow_pickle=allow_pickle
        )

    async def await_intermediate_results(
        self,
        senders: Receivers | None = None,
        *,
        category: str = "intermediate_data",
        timeout: float = 60.0,
        allow_pickle: bool = False,
    ) -> dict[str, Any]:
        """One intermediate result from each sender (all peers if None); None where none came."""
        return await self._run.results.await_intermediate_results(
            senders, category=category, timeout=timeout, allow_pickle=allow_pickle
        )

    # ----------------------------------------------------------------- data

    def get_data_sources(self) -> list[DataSource]:
        """This node's data sources (empty on an aggregator unless ``aggregator_requires_data``)."""
        return self._run.data.sources

    def get_data_client(self, source: DataSource | str) -> FhirClient | S3Client:
        """A FHIR or S3 client for ``source`` (id or name).

        Raises:
            UnknownDataSource: No such source on this node.
        """
        return self._run.data.client(source)

    async def get_fhir_data(self, queries: list[str] | str) -> dict[str, list[dict[str, Any]]]:
        """Resources per FHIR query (all pages, every FHIR source of this node)."""
        return await self._run.data.get_fhir_data(
            [queries] if isinstance(queries, str) else queries
        )

    async def get_s3_data(self, keys: list[str] | None = None) -> dict[str, bytes]:
        """Objects per key from this node's S3 sources (all objects when ``keys`` is None)."""
        return await self._run.data.get_s3_data(keys)

    # --------------------------------------------------------------- status

    @property
    def progress(self) -> Progress:
        """Overall progress (0-1) with :meth:`Progress.phase` sub-ranges."""
        return self.status.progress

    def set_progress(self, percent: float) -> None:
        """flamesdk-style progress in percent (0-100); never goes backwards."""
        self.status.set_percent(percent)

    def get_progress(self) -> int:
        """Progress in whole percent."""
        return self.status.progress.percent

    def flame_log(self, msg: str, *, level: int = logging.INFO) -> None:
        """Log ``msg`` to :attr:`logger` (shipped to the PO)."""
        self.logger.log(level, msg)
