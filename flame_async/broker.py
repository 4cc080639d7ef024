"""Messaging service: sends with acknowledgements, waits, handlers and status pings.

A thin asyncio shell around :class:`~flame_async._router.Router`: the router decides, this module
does the HTTP and the waiting. Waits are event-driven: a waiter sleeps on an event that the
webhook sets, then takes its message from the router's queue itself, so a waiter that is
cancelled or times out never takes a message with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup

from ._router import Ack, Delivered, Outgoing, Router
from ._transport import Transport, is_retryable
from .errors import (
    FlameError,
    InvalidArgument,
    MessageTimeout,
    PeerFailed,
    RemoteError,
    SDKStateError,
    TransportError,
    UnknownNodeError,
)
from .models import Category, Message, NodeRole, NodeStatus, Participant, SendReport, WireMeta

__all__ = ["BrokerService", "Handler", "Receivers"]

log = logging.getLogger("flame_async.broker")

Handler = Callable[[Message], Awaitable[Mapping[str, Any] | None]]
"""A message handler: gets the request, returns the reply payload (or None for no reply)."""

Receivers = str | Participant | Iterable[str | Participant]
"""One node or several, by id or as :class:`Participant`."""

_RESERVED_SILENT = frozenset({Category.READY_CHECK.value})


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(eq=False, slots=True)
class _Waiter:
    senders: frozenset[str] | None
    category: str | None = None
    event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def describe(self) -> str:
        who = ", ".join(sorted(self.senders)) if self.senders is not None else "any node"
        what = f"a {self.category!r} message" if self.category else "a message"
        return f"{what} from {who}"


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it was set.

    asyncio's own timeout is used on the message hot path: it costs a third of a cancel scope.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class BrokerService:
    """Messaging for one node over the node's message broker.

    Args:
        transport: The borrowed transport.
        analysis_id: The analysis the broker paths are scoped to.
        task_group: The SDK's task group; acks and handlers run there.
        resend_initial: Seconds before the first resend of an unacknowledged message.
        resend_max: Longest pause between resends.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        analysis_id: str,
        task_group: TaskGroup,
        resend_initial: float = 1.0,
        resend_max: float = 10.0,
    ) -> None:
        self._transport = transport
        self._tg = task_group
        self._prefix = f"/message-broker/analyses/{analysis_id}"
        self._resend_initial = resend_initial
        self._resend_max = resend_max
        self._router: Router | None = None
        self._ready = anyio.Event()
        self._participants: dict[str, Participant] = {}
        self._waiters: set[_Waiter] = set()
        self._ack_events: dict[str, asyncio.Event] = {}
        self._ack_queues: dict[str, list[dict[str, Any]]] = {}
        self._sending: dict[str, Outgoing] = {}
        self._handlers: dict[str, Handler] = {}
        self._closed: dict[str, PeerFailed] = {}
        self._closed_all: PeerFailed | None = None
        self.subscription_id: str | None = None
        self.finished = anyio.Event()
        self.ended = anyio.Event()
        """Set when the analysis finished or a peer failed: waiting for the end is over."""
        self._finish_waiters = 0
        """Set when a peer announced ``analysis_finished``."""
        self.node_id = ""
        self.role = NodeRole.UNKNOWN

    # ------------------------------------------------------------ start-up

    async def subscribe(self, webhook_url: str) -> str:
        """Register the node's webhook with the broker; returns the subscription id.

        Raises:
            TransportError: The broker refused or could not be reached.
        """
        body = await self._transport.request_json(
            "POST",
            f"{self._prefix}/messages/subscriptions",
            service="broker",
            json={"webhookUrl": webhook_url},
            expect=(200, 201),
        )
        if not isinstance(body, dict) or not isinstance(body.get("subscriptionId"), str):
            raise InvalidArgument(
                f"the broker's subscription answer has no subscriptionId: {body!r}"
            )
        self.subscription_id = body["subscriptionId"]
        return self.subscription_id

    async def unsubscribe(self) -> None:
        """Delete this node's webhook subscription (best effort, one try).

        Raises:
            TransportError: The broker could not be reached.
        """
        if self.subscription_id is None:
            return
        sid, self.subscription_id = self.subscription_id, None
        await self._transport.request(
            "DELETE",
            f"{self._prefix}/messages/subscriptions/{sid}",
            service="broker",
            expect=(200, 204, 404),
            retry=False,
            timeout=5,
        )

    async def discover(self) -> None:
        """Look up this node and the other participants, then start routing.

        Raises:
            TransportError: The broker could not be reached or refused.
            InvalidArgument: The broker's answer is malformed.
        """
        me = await self._transport.request_json(
            "GET", f"{self._prefix}/participants/self", service="broker"
        )
        everyone = await self._transport.request_json(
            "GET", f"{self._prefix}/participants", service="broker"
        )
        if not isinstance(me, dict) or not isinstance(me.get("nodeId"), str):
            raise InvalidArgument(f"the broker's participants/self answer is malformed: {me!r}")
        if not isinstance(everyone, list):
            raise InvalidArgument(f"the broker's participants answer is not a list: {everyone!r}")
        self.node_id = me["nodeId"]
        self.role = NodeRole.parse(me.get("nodeType"))
        for item in everyone:
            if isinstance(item, dict) and isinstance(item.get("nodeId"), str):
                node = item["nodeId"]
                if node != self.node_id:
                    self._participants[node] = Participant(
                        node_id=node, role=NodeRole.parse(item.get("nodeType"))
                    )
        self._router = Router(self.node_id)
        self._ready.set()

    @property
    def router(self) -> Router:
        """The routing state (available once :meth:`discover` ran).

        Raises:
            SDKStateError: Before discovery.
        """
        if self._router is None:
            raise SDKStateError(
                "the node has not joined the analysis yet (use async with FlameSDK())"
            )
        return self._router

    @property
    def participants(self) -> list[Participant]:
        """The other nodes of the analysis, sorted by id."""
        return [self._participants[k] for k in sorted(self._participants)]

    # -------------------------------------------------------------- webhook

    async def on_webhook(self, meta: WireMeta, data: dict[str, Any]) -> str | None:
        """Take one validated webhook message; returns a rejection reason or None.

        Waits (bounded) until discovery finished, so messages that arrive during start-up are
        kept, not dropped.
        """
        if self._router is None:  # start-up: hold the request briefly instead of dropping it
            with anyio.move_on_after(30):
                await self._ready.wait()
            if self._router is None:
                return "node is still starting"
        router = self._router
        if meta.akn_id is None:
            if meta.sender == self.node_id:
                return f"meta.sender is this node ({meta.sender}); a node cannot message itself"
            if meta.sender not in self._participants:
                return f"meta.sender {meta.sender!r} is not a participant of this analysis"
        result = router.receive(meta, data, now=_now())
        if isinstance(result, Delivered):
            # wake waiters first: the ack's HTTP work would otherwise run ahead of them
            for message in result.released:
                self._dispatch(message)
            self._queue_ack(result.sender, result.ack, legacy=meta.stream is None)
        elif isinstance(result, Ack):
            for message_id in result.settled_ids:
                if event := self._ack_events.get(message_id):
                    event.set()
        else:
            log.debug("ignored webhook message: %s", result.reason)
        return None

    def _dispatch(self, message: Message) -> None:
        category = message.category
        if category in _RESERVED_SILENT:
            return
        if category == Category.ANALYSIS_FINISHED:
            self.finished.set()
            self.ended.set()
            self.close_peer(message.sender, "executed", "it called analysis_finished()")
            return
        if category == Category.NODE_STATUS:
            status = str(message.data.get("status", "failed"))
            self.close_peer(message.sender, status, str(message.data.get("reason", "")))
            return
        handler = self._handlers.get(category)
        if handler is not None and message.reply_to is None:
            self._tg.start_soon(self._run_handler, handler, message)
            return
        self.router.enqueue(message)
        self._wake(message.sender)

    def _wake(self, sender: str | None) -> None:
        for waiter in self._waiters:
            if sender is None or waiter.senders is None or sender in waiter.senders:
                waiter.event.set()

    def _queue_ack(self, sender: str, ack: dict[str, Any], *, legacy: bool) -> None:
        """Acknowledge; acks to a flame-async peer that pile up meanwhile share one POST."""
        if legacy:  # flamesdk recognises one ack per message only
            self._tg.start_soon(self._post_acks, sender, [ack])
            return
        queue = self._ack_queues.setdefault(sender, [])
        queue.append(ack)
        if len(queue) == 1:
            self._tg.start_soon(self._flush_acks, sender)

    async def _flush_acks(self, sender: str) -> None:
        await self._post_acks(sender, self._ack_queues.pop(sender, []))

    async def _post_acks(self, sender: str, acks: list[dict[str, Any]]) -> None:
        if not acks:
            return
        try:
            await self._post([sender], Router.merge_acks(acks))
        except TransportError as exc:
            log.warning("could not acknowledge %d message(s) of %s: %s", len(acks), sender, exc)

    async def _post(self, recipients: list[str], message: dict[str, Any]) -> None:
        await self._transport.request(
            "POST",
            f"{self._prefix}/messages",
            service="broker",
            json={"recipients": recipients, "message": message},
            expect=(200, 201, 202),
        )

    async def wait_until_finished(self, timeout: float) -> None:
        """Wait until a peer announces ``analysis_finished``.

        Raises:
            PeerFailed: A peer failed or stopped first: the analysis will not finish.
            MessageTimeout: No announcement within ``timeout``.

        Cancellation:
            Safe; nothing is consumed.
        """
        self._finish_waiters += 1
        try:
            with anyio.move_on_after(timeout):
                await self.ended.wait()
        finally:
            self._finish_waiters -= 1
        if self.finished.is_set():
            return
        if (failure := self.failure()) is not None:
            raise failure
        raise MessageTimeout([], category=Category.ANALYSIS_FINISHED, timeout=timeout)

    def failure(self) -> PeerFailed | None:
        """The first peer failure seen (or the adopted partner failure), if any."""
        if self._closed_all is not None:
            return self._closed_all
        return next((c for c in self._closed.values() if c.status != "executed"), None)

    def waiting_for(self) -> list[str]:
        """What this node is waiting for right now, one line per wait (for diagnostics)."""
        waits = [w.describe() for w in self._waiters]
        waits.extend(
            f"acknowledgement of its {out.category!r} message from {', '.join(sorted(out.pending))}"
            for out in self._sending.values()
            if out.pending
        )
        if not self.finished.is_set() and self._finish_waiters:
            waits.append("the end of the analysis (wait_until_finished)")
        return sorted(waits)

    # ---------------------------------------------------------- peer status

    def close_peer(self, node_id: str, status: str, reason: str = "") -> None:
        """Record that ``node_id`` ended; waits on it end once its queue is empty."""
        if node_id in self._participants and node_id not in self._closed:
            self._closed[node_id] = PeerFailed(node_id, status, reason)
            if status != "executed":
                self.ended.set()
            log.info("node %s reported %s%s", node_id, status, f": {reason}" if reason else "")
            self._wake(node_id)

    def close_all(self, status: str, reason: str) -> None:
        """End every wait: this node adopted a terminal status from its partners."""
        if self._closed_all is None:
            self._closed_all = PeerFailed(None, status, reason)
            self.ended.set()
            self._wake(None)

    def _check_closed(self, senders: frozenset[str] | None) -> None:
        if self._closed_all is not None:
            raise self._closed_all
        names = self._participants.keys() if senders is None else senders
        closed = [self._closed[s] for s in names if s in self._closed]
        if closed and len(closed) == len(names):
            failed = [c for c in closed if c.status != "executed"]
            raise (failed or closed)[0]

    # ------------------------------------------------------------ arguments

    def _receivers(self, receivers: Receivers) -> list[str]:
        items: Iterable[str | Participant]
        items = [receivers] if isinstance(receivers, str | Participant) else receivers
        ids = [r.node_id if isinstance(r, Participant) else r for r in items]
        if not ids:
            raise InvalidArgument("no receivers given")
        bad_type = [repr(r) for r in ids if not isinstance(r, str)]
        if bad_type:
            raise InvalidArgument(f"receivers must be node ids (str), got {', '.join(bad_type)}")
        if self.node_id in ids:
            raise UnknownNodeError([self.node_id], "a node cannot send to itself")
        unknown = [r for r in ids if r not in self._participants]
        if unknown:
            known = ", ".join(sorted(self._participants)) or "none"
            raise UnknownNodeError(unknown, f"not participants of this analysis (known: {known})")
        return list(dict.fromkeys(ids))

    def _senders(self, senders: Receivers | None) -> frozenset[str] | None:
        return None if senders is None else frozenset(self._receivers(senders))

    @staticmethod
    def _payload(data: Mapping[str, Any] | None) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise InvalidArgument(
                f"message data must be a dict (a JSON object), got {type(data).__name__}; "
                "wrap other values, e.g. {'value': x}"
            )
        if "meta" in data:
            raise InvalidArgument("message data must not contain the reserved key 'meta'")
        try:
            orjson.dumps(data)
        except TypeError as exc:
            raise InvalidArgument(
                f"message data is not JSON-serialisable ({exc}); send large or typed values with "
                "send_intermediate_result()"
            ) from exc
        return dict(data)

    # -------------------------------------------------------------- sending

    async def send_message(
        self,
        receivers: Receivers,
        data: Mapping[str, Any] | None,
        *,
        category: str,
        timeout: float = 60.0,
        reply_to: str | None = None,
        error: str | None = None,
    ) -> SendReport:
        """Send ``data`` to ``receivers`` and wait until each acknowledges or ``timeout`` passes.

        Unacknowledged receivers get the same message (same id) again with growing pauses; they
        de-duplicate, so each hands it to its analysis once.

        Raises:
            InvalidArgument: Bad receivers or data (before any I/O).
            UnknownNodeError: A receiver is this node or not a participant (before any I/O).
            TransportError: The broker refused the message, or could not be reached at all before
                the deadline.

        Cancellation:
            Stops resending; receivers that already got the message keep it.
        """
        targets = self._receivers(receivers)
        payload = self._payload(data)
        if not isinstance(category, str) or not category:
            raise InvalidArgument(f"category must be a non-empty str, got {category!r}")
        router = self.router
        out = router.new_message(
            targets, category, payload, now=_now(), reply_to=reply_to, error=error
        )
        event = self._ack_events[out.id] = asyncio.Event()
        self._sending[out.id] = out
        posted = False
        last_error: TransportError | None = None
        try:
            async with asyncio.timeout(timeout) as scope:
                pause = self._resend_initial
                while out.pending:
                    try:
                        await self._post(sorted(out.pending), router.body_for(out, out.pending))
                        posted = True
                    except TransportError as exc:
                        if not is_retryable(exc):
                            raise
                        last_error = exc
                    await _wait_event(event, pause)
                    pause = min(pause * 2, self._resend_max)
        except TimeoutError:
            if not scope.expired():
                raise
        finally:
            self._ack_events.pop(out.id, None)
            self._sending.pop(out.id, None)
            router.settle(out)
        if not posted and last_error is not None:
            raise last_error
        return self._report(out, targets)

    @staticmethod
    def _report(out: Outgoing, targets: list[str]) -> SendReport:
        return SendReport(
            message_id=out.id,
            acked=tuple(t for t in targets if t not in out.pending),
            missing=tuple(t for t in targets if t in out.pending),
        )

    # -------------------------------------------------------------- waiting

    def _matcher(
        self, category: str | None, predicate: Callable[[Message], bool] | None
    ) -> Callable[[Message], bool] | None:
        if category is None:
            return predicate
        if predicate is None:
            return lambda m: m.category == category
        return lambda m: m.category == category and predicate(m)

    async def _wait_one(
        self,
        senders: frozenset[str] | None,
        match: Callable[[Message], bool] | None,
        category: str | None = None,
    ) -> Message:
        router = self.router
        while True:
            message = router.take(senders, match)
            if message is not None:
                return message
            self._check_closed(senders)
            await self._sleep_until_news(senders, category)

    async def _sleep_until_news(
        self, senders: frozenset[str] | None, category: str | None = None
    ) -> None:
        waiter = _Waiter(senders, category)
        self._waiters.add(waiter)
        try:
            await waiter.event.wait()
        finally:
            self._waiters.discard(waiter)

    def _take_each(
        self,
        remaining: set[str],
        result: dict[str, Message | None],
        category: str | None,
        per_sender: Mapping[str, Callable[[Message], bool]] | None,
    ) -> None:
        for name in sorted(remaining):
            extra = per_sender.get(name) if per_sender else None
            message = self.router.take([name], self._matcher(category, extra))
            if message is not None:
                result[name] = message
                remaining.discard(name)

    def _drop_ended(self, remaining: set[str]) -> None:
        """Raise for a failed or stopped sender; stop waiting for finished ones."""
        if self._closed_all is not None:
            raise self._closed_all
        for name in sorted(remaining):
            closed = self._closed.get(name)
            if closed is not None and closed.status != "executed":
                raise closed
            if closed is not None:
                remaining.discard(name)

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
        names = sorted(self._senders(senders) or self._participants)
        result: dict[str, Message | None] = dict.fromkeys(names)
        remaining = set(names)
        handed_over = False
        try:
            with anyio.move_on_after(timeout):
                while True:
                    self._take_each(remaining, result, category, per_sender)
                    if remaining:
                        self._drop_ended(remaining)
                    if not remaining:
                        break
                    await self._sleep_until_news(frozenset(remaining), category)
            handed_over = True
        finally:
            if not handed_over:
                for message in result.values():
                    if message is not None:
                        self.router.requeue(message)
        return result

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
                with anyio.fail_after(idle_timeout if idle_timeout is not None else float("inf")):
                    message = await self._wait_one(names, match, category)
            except (TimeoutError, PeerFailed):
                return
            yield message

    def queued(
        self, senders: Receivers | None = None, *, category: str | None = None
    ) -> list[Message]:
        """Messages received but not yet handed over, oldest first (nothing is removed)."""
        return self.router.peek(self._senders(senders), self._matcher(category, None))

    # ----------------------------------------------------- request/response

    def _reply_match(self, request_id: str) -> Callable[[Message], bool]:
        legacy = self.router.legacy_senders
        return lambda m: m.reply_to == request_id or (m.reply_to is None and m.sender in legacy)

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
            predicate=self._reply_match(report.message_id),
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
        targets = receivers if receivers is not None else [p.node_id for p in self.participants]
        report = await self.send_message(targets, data, category=category, timeout=timeout)
        match = self._reply_match(report.message_id)
        replies = (
            await self.await_messages(
                report.acked or None,
                category=category,
                per_sender=dict.fromkeys(report.acked, match),
                timeout=max(0.0, deadline - time.monotonic()),
            )
            if report.acked
            else {}
        )
        return {node: replies.get(node) for node in (*report.acked, *report.missing)}

    # ------------------------------------------------------------- handlers

    def add_handler(self, category: str, handler: Handler) -> None:
        """Register ``handler`` for requests of ``category`` (queued ones are dispatched now).

        Raises:
            InvalidArgument: The category is reserved or already has a handler.
        """
        if category in {c.value for c in Category}:
            raise InvalidArgument(f"category {category!r} is reserved by the runtime")
        if category in self._handlers:
            raise InvalidArgument(f"category {category!r} already has a handler")
        self._handlers[category] = handler
        if self._router is not None:
            while m := self._router.take(
                None, lambda m: m.category == category and m.reply_to is None
            ):
                self._tg.start_soon(self._run_handler, handler, m)

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

    # ------------------------------------------------------- status pings

    async def ask_status_nodes(self, timeout: float = 5.0) -> dict[str, NodeStatus]:
        """Ping every peer once and report who answered.

        Raises:
            TransportError: The broker could not be reached at all.
        """
        heard_before = set(self.router.heard_from)
        report = await self.send_message(
            [p.node_id for p in self.participants],
            {},
            category=Category.READY_CHECK,
            timeout=timeout,
        )
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
        targets = (
            self._receivers(nodes) if nodes is not None else [p.node_id for p in self.participants]
        )
        report = await self.send_message(
            targets, {}, category=Category.READY_CHECK, timeout=timeout
        )
        return {node: node in report.acked for node in targets}

    async def broadcast_status(self, status: str, reason: str, *, timeout: float) -> None:
        """Tell every peer this node ended with ``status`` (best effort, bounded)."""
        peers = [p.node_id for p in self.participants if p.node_id not in self._closed]
        if peers and self._router is not None:
            try:
                await self.send_message(
                    peers,
                    {"status": status, "reason": reason[:2000]},
                    category=Category.NODE_STATUS,
                    timeout=timeout,
                )
            except FlameError as exc:
                log.debug("could not tell peers this node %s: %s", status, exc)
