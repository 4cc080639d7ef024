"""Messaging service: the asyncio shell that performs what the node protocol decides.

Every messaging decision lives in :class:`~flame_async._protocol.NodeProtocol` (sans-I/O). This
module feeds it events with the time (webhook bodies, the outcome of broker POSTs, partner
statuses, waits that start and end, timer ticks) and performs its actions: POSTs to the broker,
waking waiters, running handlers, ending sends. One loop timer fires the protocol's timers.

Waits are event-driven: a waiter sleeps on an event the protocol names in a ``Wake`` action,
then takes its message itself, so a waiter that is cancelled or times out never takes a message
with it. Concurrency primitives are asyncio's throughout (aiohttp ties the SDK to asyncio, and
``asyncio.timeout`` costs a third of a cancel scope on the message path); background tasks run
in the SDK's task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

import anyio
import orjson
from anyio.abc import TaskGroup

from ._objects import download_object, result_id_of, upload_object
from ._protocol import (
    AcksPending,
    AnalysisFinished,
    Fetch,
    Instant,
    NodeProtocol,
    PeerEnded,
    Post,
    PostFailure,
    PostKind,
    ProtocolSettings,
    Rejection,
    RunHandler,
    Settled,
    Wake,
    new_epoch,
    stored_data,
)
from ._roster import Peers, Roster, cached_roster, remember_roster
from ._transport import GatewayClient, parse_answer
from ._wire import (
    BroadcastRequest,
    SendRequest,
    Subscription,
    SubscriptionRequest,
    WireParticipant,
    WireParticipants,
)
from .errors import (
    CodecError,
    FlameError,
    InvalidArgument,
    MessageTimeout,
    MessageTooLarge,
    PeerFailed,
    RemoteError,
    ServiceError,
    ServiceUnavailable,
    TransportError,
)
from .models import Category, Message, NodeRole, NodeStatus, Participant, SendReport

__all__ = ["BrokerService", "Discovery", "Handler", "Receivers", "discover", "subscribe"]

log = logging.getLogger("flame_async.broker")

Handler = Callable[[Message], Awaitable[Mapping[str, Any] | None]]
"""A message handler: gets the request, returns the reply payload (or None for no reply)."""

Receivers = str | Participant | Iterable[str | Participant]
"""One node or several, by id or as :class:`Participant`."""

_OK = (200, 201, 202)

LargeMessages = Literal["storage", "refuse"]
"""What happens to a message larger than the inline limit: it travels through the storage
service (``"storage"``), or ``send_message`` raises :class:`~flame_async.errors.MessageTooLarge`
(``"refuse"``)."""

INLINE_LIMIT: Final = 1 << 20
"""Default largest message payload (JSON bytes) the broker carries inline: 1 MiB."""

_META_ALLOWANCE: Final = 4096
"""Bytes a message body has beyond its payload (``meta``, the broker's envelope), at most."""
_POST_LANES: Final = 16
"""Most POSTs (acks, resends, notices) a node has under way at once besides its sends."""

_RUNTIME: Final = frozenset(c.value for c in Category)
"""Categories the runtime sends (small, and read by flamesdk too): never stored."""


def _now() -> Instant:
    return Instant(time.monotonic(), datetime.now(UTC))


def _prefix(analysis_id: str) -> str:
    return f"/message-broker/analyses/{analysis_id}"


# -- start-up -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Discovery:
    """Who this node is and who else takes part, as the broker says.

    Attributes:
        node_id: This node's id.
        role: This node's role.
        participants: The other nodes (a view of the roster shared by the process' nodes).
    """

    node_id: str
    role: NodeRole
    participants: Peers


async def subscribe(gateway: GatewayClient, analysis_id: str, webhook_url: str) -> str:
    """Register the node's webhook with the broker; returns the subscription id.

    Raises:
        TransportError: The broker refused, could not be reached, or answered nonsense.
    """
    answer = await gateway.request_model(
        Subscription,
        "POST",
        f"{_prefix(analysis_id)}/messages/subscriptions",
        service="broker",
        json=SubscriptionRequest(webhook_url=webhook_url).wire(),
        expect=(200, 201),
    )
    return answer.subscription_id


async def unsubscribe(gateway: GatewayClient, analysis_id: str, subscription_id: str) -> None:
    """Delete a webhook subscription (one try).

    Raises:
        TransportError: The broker could not be reached.
    """
    await gateway.request(
        "DELETE",
        f"{_prefix(analysis_id)}/messages/subscriptions/{subscription_id}",
        service="broker",
        expect=(200, 204, 404),
        retry=False,
        timeout=5,
    )


async def discover(gateway: GatewayClient, analysis_id: str) -> Discovery:
    """Look up this node and the other participants.

    Raises:
        TransportError: The broker could not be reached, refused, or answered nonsense.
    """
    me = await gateway.request_model(
        WireParticipant, "GET", f"{_prefix(analysis_id)}/participants/self", service="broker"
    )
    path = f"{_prefix(analysis_id)}/participants"
    body = await gateway.request("GET", path, service="broker")
    roster = cached_roster(body)
    if roster is None:  # parse each distinct list once per process (nodes of one platform share it)
        everyone = parse_answer(WireParticipants, body, service="broker", method="GET", url=path)
        roster = Roster(  # already validated as the wire model: no second validation
            Participant.model_construct(node_id=p.node_id, role=NodeRole.parse(p.node_type))
            for p in everyone.root
        )
        remember_roster(body, roster)
    return Discovery(me.node_id, NodeRole.parse(me.node_type), roster.without(me.node_id))


def _later_if_io(action: object) -> bool:
    """Sort key: actions that start I/O or tasks go after those that only wake or settle."""
    return isinstance(action, Post | AcksPending | RunHandler)


def _post_failure(exc: TransportError) -> PostFailure:
    refused = isinstance(exc, ServiceError) and 400 <= exc.status < 500
    return PostFailure(retryable=not refused, reason=str(exc))


class BrokerService:
    """Messaging for one node over the node's message broker.

    Args:
        gateway: Calls to the node's services.
        analysis_id: The analysis the broker paths are scoped to.
        discovery: Who this node is and who else takes part.
        task_group: The SDK's task group: POSTs and handlers run there.
        settings: The protocol's timing rules.
        inline_limit: Largest payload (JSON bytes) sent inside a message; a larger one is
            handled as ``large_messages`` says.
        large_messages: ``"storage"`` (default): larger payloads travel through the storage
            service, once per receiver, and the receiver reads them back before it hands the
            message over; ``"refuse"``: :meth:`send_message` raises
            :class:`~flame_async.errors.MessageTooLarge` before any I/O.
    """

    def __init__(
        self,
        gateway: GatewayClient,
        *,
        analysis_id: str,
        discovery: Discovery,
        task_group: TaskGroup,
        settings: ProtocolSettings | None = None,
        inline_limit: int = INLINE_LIMIT,
        large_messages: LargeMessages = "storage",
    ) -> None:
        self._gateway = gateway
        self._inline_limit = inline_limit
        self._large_messages = large_messages
        self._tg = task_group
        self._messages_path = f"{_prefix(analysis_id)}/messages"
        self._broadcast_path = f"{self._messages_path}/broadcast"
        self.node_id = discovery.node_id
        self.role = discovery.role
        self._participants = discovery.participants
        settings = settings or ProtocolSettings()
        if settings.epoch is None:  # epochs order the node's process starts by the wall clock
            settings = dataclasses.replace(settings, epoch=new_epoch(time.time_ns()))
        self.protocol = NodeProtocol(self.node_id, self._participants, settings)
        self._waits: dict[int, asyncio.Future[None]] = {}
        """One future per sleeping wait (cheaper than an Event: nothing else waits on it)."""
        self._sends: dict[str, asyncio.Future[Settled]] = {}
        self._errors: dict[str, TransportError] = {}
        self._handlers: dict[str, Handler] = {}
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._posting = 0
        self._queued_posts: deque[Post] = deque()
        self._lanes = 0
        self._no_posts = asyncio.Event()
        self._no_posts.set()
        self._performers: dict[type[Any], Callable[[Any], None]] = {
            Wake: self._wake,
            Settled: self._settled,
            RunHandler: self._handle,
            AcksPending: self._acks_pending,
            AnalysisFinished: self._analysis_finished,
            PeerEnded: self._peer_ended,
            Fetch: self._fetch,
        }
        self.finished = asyncio.Event()
        """Set when a peer announced ``analysis_finished``."""
        self.ended = asyncio.Event()
        """Set when the analysis finished or a peer failed: waiting for the end is over."""
        self._end_news = asyncio.Event()
        """Set on news for ``wait_until_finished``: the end, or the gateway lost."""
        self._finish_waiters = 0
        gateway.health.listen(self._on_reachability)

    def __repr__(self) -> str:
        return f"<BrokerService node={self.node_id!r}>"

    @property
    def participants(self) -> list[Participant]:
        """The other nodes of the analysis, sorted by id."""
        return self._participants.participants()

    # -- timers ---------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Arm one loop timer for the protocol's next deadline (resends, send deadlines, gaps).

        A timer callback, not a task: settling a message costs no wake-up, and a new, earlier
        deadline only moves the timer.
        """
        deadline = self.protocol.next_deadline()
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if self._timer_at <= deadline:
                return  # it fires early enough; _on_timer arms the next one
            timer.cancel()
        # asyncio's loop clock is time.monotonic(), the clock the protocol is given
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self.protocol.tick(_now())
        self._perform()

    def stop(self) -> None:
        """Stop the timers (at shutdown; nothing is resent afterwards)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _perform(self, *, inline: str | None = None) -> Post | None:
        """Perform the protocol's actions; returns one POST unstarted for the caller to await
        itself: the first of message ``inline``. The others are queued for the post lanes."""
        keep: Post | None = None
        actions = self.protocol.take_actions()
        # wake waiters first: a POST started before them would run ahead of the analysis
        actions.sort(key=_later_if_io)
        for action in actions:
            if isinstance(action, Post):
                if keep is None and inline is not None and action.message_id == inline:
                    keep = action
                else:
                    self._posting += 1  # counted from now: drain() must see it
                    self._no_posts.clear()
                    self._queued_posts.append(action)
            else:
                self._performers[type(action)](action)
        queued = len(self._queued_posts)
        while self._lanes < _POST_LANES and self._lanes < queued:
            self._lanes += 1  # a few tasks post what is queued: no task per ack or message
            self._tg.start_soon(self._post_lane)
        self._schedule()
        return keep

    def _wake(self, action: Wake) -> None:
        for waiter_id in action.waiter_ids:
            if (woken := self._waits.get(waiter_id)) is not None and not woken.done():
                woken.set_result(None)

    def _settled(self, action: Settled) -> None:
        future = self._sends.pop(action.report.message_id, None)
        if future is not None and not future.done():
            future.set_result(action)

    def _handle(self, action: RunHandler) -> None:
        handler = self._handlers.get(action.message.category)
        if handler is not None:
            self._tg.start_soon(self._run_handler, handler, action.message)

    def _acks_pending(self, action: AcksPending) -> None:
        # after the analysis tasks just woken: an answer they send at once carries the acks
        self._loop.call_soon(self._flush_acks)

    def _analysis_finished(self, action: AnalysisFinished) -> None:
        self.finished.set()
        self.ended.set()
        self._end_news.set()

    def _peer_ended(self, action: PeerEnded) -> None:
        failure = action.failure
        if failure.status != "executed":
            self.ended.set()
            self._end_news.set()
        who = failure.node_id or "this node (adopted from partners)"
        reason = f": {failure.reason}" if failure.reason else ""
        log.info("node %s reported %s%s", who, failure.status, reason)

    def _fetch(self, action: Fetch) -> None:
        self._tg.start_soon(self._read_stored, action)

    async def _read_stored(self, action: Fetch) -> None:
        """Read a large message's payload from storage and give it (or the error) to the
        protocol: the analysis gets the message with its data, or the error when it takes it."""
        message = action.message
        try:
            data, size = await self._download_stored(action)
        except (TransportError, CodecError) as exc:
            exc.add_note(
                f"while reading the {action.size:,}-byte payload of message {message.id} from "
                f"{message.sender} (large messages travel through the storage service)"
            )
            log.warning("could not read a large message of %s: %s", message.sender, exc)
            self.protocol.fetched(message, error=exc)
        else:
            self.protocol.fetched(message, data, size=size)
        self._perform()

    async def _download_stored(self, action: Fetch) -> tuple[dict[str, Any], int]:
        """The stored payload of ``action``'s message, and its size.

        Raises:
            TransportError: The storage service refused, or could not be reached.
            CodecError: The reference or the payload is malformed.
        """
        message = action.message
        if not action.result_id:
            raise CodecError(
                f"message {message.id} from {message.sender} refers to a stored payload but "
                "names none for this node"
            )
        object_id = action.result_id.partition("?")[0]
        raw = await download_object(
            self._gateway, f"/storage/intermediate/{object_id}", {"remote_node_id": message.sender}
        )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CodecError(f"the stored payload is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CodecError(f"the stored payload is a {type(data).__name__}, not an object")
        return data, len(raw)

    def _on_reachability(self, error: ServiceUnavailable | None) -> None:
        """The gateway was declared lost (``error``), or answers again (None)."""
        if error is not None:
            log.warning("%s", error)
        else:
            log.info("the node's gateway answers again")
        self.protocol.services_unreachable(error, _now())
        self._end_news.set()
        self._perform()

    def busy(self) -> bool:
        """True while something waits on the broker: a wait, a send, or the end."""
        return bool(self._waits or self._sends or self._finish_waiters)

    async def watch_gateway(self, grace: float) -> None:
        """Declare the gateway lost once calls fail to reach it and it has not answered for
        ``grace`` seconds while something waits on it, and back when it answers again (runs
        until cancelled).

        While nothing else reaches the gateway, it is probed (``GET /healthz``, no token)
        every ``grace / 4`` seconds (at most every 2 s), but only while something waits.
        """
        interval = min(2.0, grace / 4)
        health = self._gateway.health
        while True:
            await asyncio.sleep(interval)
            quiet = time.monotonic() - health.last_answer >= interval
            if not quiet or not (self.busy() or health.lost is not None):
                continue
            with contextlib.suppress(TransportError):  # the gateway's health counts it
                await self._gateway.request(
                    "GET",
                    "/healthz",
                    service="gateway",
                    auth=False,
                    expect=range(100, 600),
                    retry=False,
                    timeout=interval,
                )
            silent = time.monotonic() - health.last_answer
            if health.failing_since is not None and health.lost is None and silent >= grace:
                cause = f" (last: {health.last_error})" if health.last_error else ""
                health.lose(
                    ServiceUnavailable(
                        f"the node's gateway has not answered for {grace:g} s: the platform "
                        f"is gone or unreachable{cause}",
                        service="gateway",
                        method="GET",
                        url="/healthz",
                    )
                )

    async def _post_lane(self) -> None:
        """Post queued POSTs one after another until none is left (one of a few lanes)."""
        queue = self._queued_posts
        try:
            while queue:
                try:
                    await self._post(queue.popleft())
                finally:
                    self._posting -= 1
                    if not self._posting:
                        self._no_posts.set()
        finally:
            self._lanes -= 1

    async def _post(self, post: Post) -> None:
        """POST one action's body to the broker and tell the protocol how it went."""
        is_message = post.kind is PostKind.MESSAGE
        path = self._messages_path
        if len(post.recipients) > 1 and len(post.recipients) == len(self._participants):
            # to every other node (distinct participants): the broadcast route, whose body
            # does not list thousands of recipients
            body = BroadcastRequest.encode(post.body)
            path = self._broadcast_path
        else:
            body = SendRequest.encode(post.recipients, post.body)
        try:
            await self._gateway.request(
                "POST",
                path,
                service="broker",
                body=body,
                headers={"content-type": "application/json"},
                expect=_OK,
                retry=not is_message,  # resends of messages are the protocol's decision
            )
        except TransportError as exc:
            if is_message and post.message_id is not None:
                self._errors[post.message_id] = exc
                self.protocol.post_failed(post.post_id, _post_failure(exc), _now())
                self._perform()
            else:
                log.warning(
                    "could not deliver %s to %s: %s", post.kind.value, post.recipients[0], exc
                )
            return
        if is_message:
            self.protocol.post_done(post.post_id, _now())
            self._perform()

    async def drain(self) -> None:
        """Send the acknowledgements still queued and wait for the POSTs under way.

        Used at shutdown: a message this node handed over to its analysis is acknowledged
        even when the analysis ends right after taking it (else its sender would resend to a
        node that is gone and report it missing). From now on nothing more is taken: later
        messages get 503 and are not acknowledged, so their senders report this node missing.

        Cancellation:
            Stops waiting; POSTs still under way are cancelled with the task group.
        """
        self.protocol.closed = True  # what arrives from now on is refused, not acknowledged
        self.protocol.flush_acks()
        self._perform()
        await self._no_posts.wait()

    def _flush_acks(self) -> None:
        self.protocol.flush_acks()
        self._perform()

    # -- webhook -------------------------------------------------------------------------------

    def on_webhook(self, body: bytes) -> Rejection | None:
        """Take one webhook body (see :meth:`NodeProtocol.receive`)."""
        rejection = self.protocol.receive(body, _now())
        self._perform()
        return rejection

    # -- peers ---------------------------------------------------------------------------------

    def close_peer(self, node_id: str, status: str, reason: str = "") -> None:
        """Record that ``node_id`` ended; waits on it end once its queue is empty."""
        self.protocol.peer_ended(node_id, status, reason)
        self._perform()

    def close_all(self, status: str, reason: str) -> None:
        """End every wait: this node adopted a terminal status from its partners."""
        self.protocol.all_ended(status, reason)
        self._perform()

    def failure(self) -> PeerFailed | None:
        """The first peer failure seen (or the adopted partner failure), if any."""
        return self.protocol.mailbox.failure()

    def waiting_for(self) -> list[str]:
        """What this node is waiting for right now, one line per wait (for diagnostics)."""
        waits = self.protocol.waiting_for()
        if not self.finished.is_set() and self._finish_waiters:
            waits.append("the end of the analysis (wait_until_finished)")
        return sorted(waits)

    async def wait_until_finished(self, timeout: float) -> None:
        """Wait until a peer announces ``analysis_finished``.

        Raises:
            PeerFailed: A peer failed or stopped first: the analysis will not finish.
            MessageTimeout: No announcement within ``timeout``.
            ServiceUnavailable: The node's gateway stopped answering (the platform is gone).

        Cancellation:
            Safe; nothing is consumed.
        """
        self._finish_waiters += 1
        try:
            async with asyncio.timeout(timeout):
                while not self.ended.is_set():
                    if (lost := self.protocol.mailbox.unreachable) is not None:
                        raise lost
                    self._end_news.clear()
                    await self._end_news.wait()
        except TimeoutError:
            pass
        finally:
            self._finish_waiters -= 1
        if self.finished.is_set():
            return
        if (failure := self.failure()) is not None:
            raise failure
        raise MessageTimeout([], category=Category.ANALYSIS_FINISHED, timeout=timeout)

    # -- arguments -----------------------------------------------------------------------------

    def resolve(self, receivers: Receivers) -> list[str]:
        """Node ids of ``receivers`` (ids or participants), checked, without repeats.

        Raises:
            InvalidArgument: None given, or one is neither a string nor a participant.
            UnknownNodeError: One is this node or not a participant.
        """
        items: Iterable[str | Participant]
        items = [receivers] if isinstance(receivers, str | Participant) else receivers
        return self.protocol.resolve_receivers(
            r.node_id if isinstance(r, Participant) else r for r in items
        )

    def runs_flamesdk(self, node_id: str) -> bool | None:
        """Whether ``node_id`` runs flamesdk (True) or flame-async (False), as far as its
        messages and acknowledgements told this node so far; None before it said anything."""
        protocol = self.protocol
        if node_id in protocol.ordered_senders or node_id in protocol.ordered_peers:
            return False
        # flame-async numbers its messages and says so in its acknowledgements: a peer heard
        # from (a message or an acknowledgement) that did neither runs flamesdk
        if node_id in protocol.legacy_senders or node_id in protocol.heard_from:
            return True
        return None

    def _senders(self, senders: Receivers | None) -> frozenset[str] | None:
        return None if senders is None else frozenset(self.resolve(senders))

    # -- sending -------------------------------------------------------------------------------

    async def send_message(
        self,
        receivers: Receivers | None,
        data: Mapping[str, Any] | None,
        *,
        category: str,
        timeout: float = 60.0,
        reply_to: str | None = None,
        error: str | None = None,
    ) -> SendReport:
        """Send ``data`` to ``receivers`` (every other node if None) and wait until each
        acknowledges or ``timeout`` passes.

        Unacknowledged receivers get the same message (same id) again with growing pauses; they
        de-duplicate, so each hands it to its analysis once. A receiver that is given up on
        (deadline, refused) is reported in ``missing`` with its reason, and later messages to it
        do not wait for this one.

        A payload larger than the inline limit (1 MiB by default) is first stored once per
        receiver in the storage service; the message then carries only the reference, and the
        receiver reads the payload back before handing it over (resends re-send the reference).

        Raises:
            InvalidArgument: Bad receivers, category or data (before any I/O).
            UnknownNodeError: A receiver is this node or not a participant (before any I/O).
            MessageTooLarge: The payload is over the inline limit and cannot go through the
                storage service (a receiver runs flamesdk, or that path is off); before any I/O.
            ServiceUnavailable: The node's gateway is declared lost (the platform is gone).
            TransportError: The broker refused the message, or could not be reached at all
                before the deadline (no receiver got it); or storing a large payload failed.

        Cancellation:
            Stops resending; receivers that already acknowledged keep the message, the others
            are given up on. Payloads already stored stay stored.
        """
        targets = list(self._participants) if receivers is None else self.resolve(receivers)
        if not targets:
            raise InvalidArgument("there is no other node to send to")
        payload, raw = NodeProtocol.encode_payload(data)
        if len(raw) + _META_ALLOWANCE > self._inline_limit and category not in _RUNTIME:
            self._check_storable(targets, len(raw))
            if (lost := self._gateway.health.lost) is not None:
                raise lost
            payload = stored_data(await self._store(targets, raw), len(raw))
        if (lost := self._gateway.health.lost) is not None:
            raise lost
        protocol = self.protocol
        settled: asyncio.Future[Settled] = asyncio.get_running_loop().create_future()
        message_id = protocol.send(
            targets, category, payload, now=_now(), timeout=timeout, reply_to=reply_to, error=error
        )
        self._sends[message_id] = settled
        try:
            first = self._perform(inline=message_id)
            if first is not None:
                await self._post(first)
            outcome = await settled
        except BaseException:
            self._sends.pop(message_id, None)
            self._errors.pop(message_id, None)
            protocol.abandon(message_id, _now())
            self._perform()
            raise
        error_seen = self._errors.pop(message_id, None)
        if not outcome.report.acked and (lost := self._gateway.health.lost) is not None:
            raise lost  # the platform is gone: that is the answer, not a missing list
        if outcome.never_posted and not outcome.report.acked and error_seen is not None:
            raise error_seen  # nothing reached anyone: the broker's error is the answer
        return outcome.report

    def _check_storable(self, targets: list[str], size: int) -> None:
        """Raise if a payload of ``size`` bytes cannot travel through storage to ``targets``.

        Raises:
            MessageTooLarge: The storage path is off, or a receiver runs flamesdk.
        """
        limit = self._inline_limit - _META_ALLOWANCE
        if self._large_messages == "refuse":
            raise MessageTooLarge(
                size,
                limit,
                "large messages are not sent through the storage service "
                "(FlameSDK(large_messages='refuse')); send the value with "
                "send_intermediate_result(), or split it",
            )
        protocol = self.protocol
        legacy = [
            t for t in targets if t in protocol.legacy_senders and t not in protocol.ordered_peers
        ]
        if legacy:
            raise MessageTooLarge(
                size,
                limit,
                f"{', '.join(legacy)} run{'s' if len(legacy) == 1 else ''} flamesdk, which "
                "cannot read a message from the storage service; send the value with "
                "send_intermediate_result(), which flamesdk reads",
            )

    async def _store(self, targets: list[str], raw: bytes) -> dict[str, str]:
        """Store ``raw`` once per receiver (each copy readable once, by that receiver only);
        returns each receiver's result id.

        Raises:
            TransportError: The storage service refused, or could not be reached.
        """
        ids: dict[str, str] = {}

        async def one(receiver: str) -> None:
            answer = await upload_object(
                self._gateway,
                "/storage/intermediate",
                (raw,),
                filename="message.json",
                media_type="application/json",
                fields={"remote_node_id": receiver},
                expect=(200, 201),
            )
            ids[receiver] = result_id_of(answer)[0]

        async with anyio.create_task_group() as tg:
            for receiver in targets:
                tg.start_soon(one, receiver)
        return ids

    # -- waiting -------------------------------------------------------------------------------

    @staticmethod
    def _matcher(
        category: str | None, predicate: Callable[[Message], bool] | None
    ) -> Callable[[Message], bool] | None:
        if category is None:
            return predicate
        if predicate is None:
            return lambda m: m.category == category
        return lambda m: m.category == category and predicate(m)

    async def _sleep_until_news(
        self, senders: frozenset[str] | None, category: str | None
    ) -> set[str] | None:
        """Wait for news from ``senders`` (any if None); returns the senders with news (None:
        news about every sender)."""
        waiter_id = self.protocol.add_waiter(senders, category)
        woken = self._waits[waiter_id] = self._loop.create_future()
        try:
            await woken
        finally:
            self._waits.pop(waiter_id, None)
            news = self.protocol.remove_waiter(waiter_id)
        return news

    async def _wait_one(
        self,
        senders: frozenset[str] | None,
        match: Callable[[Message], bool] | None,
        category: str | None,
    ) -> Message:
        protocol = self.protocol
        while True:
            message = protocol.take(senders, match)
            if message is not None:
                return message
            protocol.mailbox.check_closed(senders)
            await self._sleep_until_news(senders, category)

    async def await_message(
        self,
        sender: Receivers | None = None,
        *,
        category: str | None = None,
        timeout: float = 60.0,
        predicate: Callable[[Message], bool] | None = None,
    ) -> Message:
        """Wait for the next message from ``sender`` (any peer if None), oldest first.

        Raises:
            MessageTimeout: Nothing matching arrived within ``timeout`` seconds.
            PeerFailed: Every awaited sender has ended (failed, stopped or finished) with nothing
                left queued.
            UnknownNodeError: ``sender`` is not a participant.

        Cancellation:
            Nothing is lost: the message stays queued for the next wait.
        """
        senders = self._senders(sender)
        match = self._matcher(category, predicate)
        try:
            async with asyncio.timeout(timeout) as scope:
                return await self._wait_one(senders, match, category)
        except TimeoutError:
            if not scope.expired():
                raise
        raise MessageTimeout(sorted(senders or ()), category=category, timeout=timeout)

    def _take_each(
        self,
        names: Iterable[str],
        remaining: set[str],
        result: dict[str, tuple[int, Message] | None],
        category: str | None,
        per_sender: Mapping[str, Callable[[Message], bool]] | None,
    ) -> None:
        for name in sorted(n for n in names if n in remaining):
            extra = per_sender.get(name) if per_sender else None
            taken = self.protocol.take_ranked([name], self._matcher(category, extra))
            if taken is not None:
                result[name] = taken
                remaining.discard(name)

    async def await_messages(
        self,
        senders: Receivers | None = None,
        *,
        category: str | None = None,
        timeout: float = 60.0,
        per_sender: Mapping[str, Callable[[Message], bool]] | None = None,
    ) -> dict[str, Message | None]:
        """Wait for one message from each of ``senders`` (all peers if None).

        Returns partial results: a sender that did not answer in time (or finished without
        answering) maps to None.

        Raises:
            PeerFailed: An awaited sender failed or stopped before answering. Messages already
                taken from other senders are put back first.
            UnknownNodeError: A sender is not a participant.

        Cancellation:
            Messages taken so far are put back in their queues; nothing is lost.
        """
        chosen = self._senders(senders)
        names = sorted(chosen) if chosen else list(self._participants)
        chosen_set = chosen or None  # the wait's filter: None is every peer (no copy of them)
        result: dict[str, tuple[int, Message] | None] = dict.fromkeys(names)
        remaining = set(names)
        handed_over = False
        try:
            try:
                async with asyncio.timeout(timeout):
                    news: Iterable[str] | None = None  # first look at every sender, then
                    while True:  # only at those with news: a round stays O(senders)
                        look = list(remaining) if news is None else news
                        self._take_each(look, remaining, result, category, per_sender)
                        if remaining:
                            self.protocol.mailbox.drop_ended(remaining)
                        if not remaining:
                            break
                        news = await self._sleep_until_news(chosen_set, category)
            except TimeoutError:
                pass
            handed_over = True
        finally:
            if not handed_over:
                for taken in result.values():
                    if taken is not None:
                        self.protocol.requeue(taken[1], taken[0])
        return {name: None if taken is None else taken[1] for name, taken in result.items()}

    async def messages(
        self,
        senders: Receivers | None = None,
        *,
        category: str | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[Message]:
        """Yield messages as they arrive, oldest first.

        Ends quietly when ``idle_timeout`` seconds pass without a message, or when every awaited
        sender has ended.

        Cancellation:
            The message being waited for stays queued.
        """
        names = self._senders(senders)
        match = self._matcher(category, None)
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    message = await self._wait_one(names, match, category)
            except (TimeoutError, PeerFailed):
                return
            yield message

    def queued(
        self, senders: Receivers | None = None, *, category: str | None = None
    ) -> list[Message]:
        """Messages received but not yet handed over, oldest first (nothing is removed)."""
        return self.protocol.mailbox.peek(self._senders(senders), self._matcher(category, None))

    # -- request/response ----------------------------------------------------------------------

    async def request(
        self,
        receiver: str | Participant,
        data: Mapping[str, Any] | None,
        *,
        category: str,
        timeout: float = 60.0,
    ) -> Message:
        """Send to one node and wait for its reply in the same category.

        Raises:
            MessageTimeout: No reply (or no acknowledgement) within ``timeout``.
            RemoteError: The peer's handler raised.
            PeerFailed: The peer ended without replying.
            TransportError: The broker refused the message.

        Cancellation:
            A reply that arrives later stays queued.
        """
        deadline = time.monotonic() + timeout
        report = await self.send_message(receiver, data, category=category, timeout=timeout)
        if report.missing:
            raise MessageTimeout(report.missing, category=category, timeout=timeout)
        reply = await self.await_message(
            report.acked,
            category=category,
            predicate=self.protocol.reply_match(report.message_id),
            timeout=max(0.0, deadline - time.monotonic()),
        )
        if reply.error is not None:
            raise RemoteError(reply.sender, reply.error)
        return reply

    async def request_all(
        self,
        receivers: Receivers | None,
        data: Mapping[str, Any] | None,
        *,
        category: str,
        timeout: float = 60.0,
    ) -> dict[str, Message | None]:
        """Send to several nodes (all peers if None) and collect their replies.

        Returns partial results: receivers that did not reply in time map to None. Replies whose
        handler failed are returned as they are (their ``error`` is set).

        Raises:
            PeerFailed: A receiver failed or stopped before replying.
            TransportError: The broker refused the message.

        Cancellation:
            Replies already received stay queued.
        """
        deadline = time.monotonic() + timeout
        report = await self.send_message(receivers, data, category=category, timeout=timeout)
        match = self.protocol.reply_match(report.message_id)
        replies = (
            await self.await_messages(
                report.acked,
                category=category,
                per_sender=dict.fromkeys(report.acked, match),
                timeout=max(0.0, deadline - time.monotonic()),
            )
            if report.acked
            else {}
        )
        return {node: replies.get(node) for node in (*report.acked, *report.missing)}

    # -- handlers ------------------------------------------------------------------------------

    def add_handler(self, category: str, handler: Handler) -> None:
        """Register ``handler`` for requests of ``category`` (queued ones are dispatched now).

        Raises:
            InvalidArgument: The category is reserved or already has a handler.
        """
        self.protocol.add_handler(category)
        self._handlers[category] = handler
        self._perform()

    async def _run_handler(self, handler: Handler, message: Message) -> None:
        reply: Mapping[str, Any] | None
        error: str | None = None
        try:
            result: object = await handler(message)
            reply = result if isinstance(result, Mapping) else None
            if result is not None and reply is None:
                error = f"handler returned {type(result).__name__}, expected a dict or None"
                reply = {}
        except Exception as exc:
            log.exception(
                "handler for %r failed on a message of %s", message.category, message.sender
            )
            error, reply = f"{type(exc).__name__}: {exc}", {}
        if reply is None and error is None:
            return
        try:
            await self.send_message(
                message.sender, reply, category=message.category, reply_to=message.id, error=error
            )
        except FlameError as exc:
            log.warning("could not send the reply to %s: %s", message.sender, exc)

    # -- status pings --------------------------------------------------------------------------

    async def ask_status_nodes(self, timeout: float = 5.0) -> dict[str, NodeStatus]:
        """Ping every peer once and report who answered.

        Raises:
            TransportError: The broker could not be reached at all.
        """
        heard_before = set(self.protocol.heard_from)
        report = await self.send_message(None, {}, category=Category.READY_CHECK, timeout=timeout)
        result = dict.fromkeys(report.acked, NodeStatus.ONLINE)
        for node in report.missing:
            result[node] = NodeStatus.OFFLINE if node in heard_before else NodeStatus.NOT_CONNECTED
        return result

    async def ready_check(
        self, nodes: Receivers | None = None, *, timeout: float = 60.0
    ) -> dict[str, bool]:
        """Wait until each node answers (or ``timeout``): ``{node_id: answered}``.

        Raises:
            TransportError: The broker could not be reached at all.
        """
        targets = self.resolve(nodes) if nodes is not None else list(self._participants)
        report = await self.send_message(
            targets, {}, category=Category.READY_CHECK, timeout=timeout
        )
        return {node: node in report.acked for node in targets}

    async def broadcast_status(self, status: str, reason: str, *, timeout: float) -> None:
        """Tell every peer this node ended with ``status`` (best effort, bounded)."""
        closed = self.protocol.mailbox.closed
        peers = [node_id for node_id in self._participants if node_id not in closed]
        if not peers:
            return
        try:
            await self.send_message(
                peers,
                {"status": status, "reason": reason[:2000]},
                category=Category.NODE_STATUS,
                timeout=timeout,
            )
        except FlameError as exc:
            log.debug("could not tell peers this node %s: %s", status, exc)
