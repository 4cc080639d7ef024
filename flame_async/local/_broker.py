"""The message broker (PROTOCOL.md §2.1-2.5), one instance shared by every node gateway.

Each node's gateway serves the broker under ``/message-broker`` with that node as "self". A sent
message is delivered by POSTing the compact JSON of ``message`` to every webhook subscription of
each recipient, each copy in its own task. 5xx answers, connection failures and timeouts are
retried with exponential backoff (the real broker's schedule), anything else that is not 2xx drops
the copy. Every copy's fate is recorded as a :class:`~flame_async.local.DeliveryEvent`.

The real broker drops a copy on a connection error, but it reaches the analysis through nginx,
which turns a not-yet-listening API into a 502 and so into retries (PROTOCOL.md §2.4, Q15).
Deliveries to a node of this platform skip that hop (they go straight to the node's API, over
HTTP or in memory), so connection failures are retried to behave the same.

The send path is kept lean on purpose (a benchmark holds it to a small multiple of a raw HTTP
round trip): no logging per message, one shared keep-alive session, and the delivery task is
started before the 202 goes out.

Who may do what (the real broker checks only the token's signature; nginx pins the analysis):

* A token works only on its own node's gateway (403 otherwise): a node reads its own identity,
  sends as itself and manages its own subscriptions. A message whose ``meta`` names a sender
  (an original, ``akn_id`` null) or an acknowledger (``akn_id``) other than the token's node is
  refused with 403, and so is a webhook at another node's gateway.

Limits (each refusal names the limit):

* A message is at most ``max_message_bytes`` as delivered (its compact JSON, the whole webhook
  body), by default the SDK's :attr:`~flame_async.config.FlameConfig.max_api_body_bytes`
  (16 MiB): what the receiving node API accepts. A larger one is refused at send time with 413,
  not dropped at delivery. The send body may be up to 64 KiB larger (the recipients).
* At most 1024 recipients per send, 64 subscriptions per node (409 beyond), 2048 characters
  per webhook URL, 64 KiB per subscription body.
* Messages taken but not yet delivered (or dropped) hold at most ``max_pending_bytes`` of
  memory; a send beyond that answers 503 (the SDK retries it) until deliveries catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import anyio
import orjson
from pydantic import ValidationError
from yarl import URL

from .._transport import Request, Response, aiohttp_data
from .._wire import (
    Subscription,
    SubscriptionRequest,
    WireParticipant,
    WireParticipants,
)
from ..config import FlameConfig
from ..errors import InvalidArgument
from ._core import NodeUnreachable, PlatformCore
from ._faults import WebhookFault
from ._http import (
    Call,
    Route,
    detail_response,
    json_response,
    read_json_object,
    require_bearer,
    shown,
)
from ._node import LocalNode
from ._records import DeliveryEvent, DeliveryLog, DeliveryOutcome

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "BrokerError", "BrokerService"]

logger = logging.getLogger("flame_async.local.broker")

_DELIVERY_HEADERS: Final = {"content-type": "application/json", "accept": "application/json"}
_ATTEMPT_TIMEOUT: Final = 30.0
_HOLD_ANSWER: Final = 10.0
_BATCH: Final = 64  # copies to node APIs in this event loop delivered by one task
"""Longest a send's 202 waits for the first attempts of its copies."""
_ACCEPTED: Final = 202

DEFAULT_MAX_MESSAGE_BYTES: Final[int] = FlameConfig.model_fields["max_api_body_bytes"].default
"""The broker's default message limit: what a node API takes by default (16 MiB)."""
_MAX_RECIPIENTS: Final = 20_000
_ENVELOPE: Final = 64 * 1024 + 128 * _MAX_RECIPIENTS
"""What a send body may hold besides the message: the recipients (ids of up to 128 bytes)."""
_MAX_SUBSCRIPTIONS: Final = 64
_MAX_WEBHOOK_URL: Final = 2048
_SUBSCRIBE_LIMIT: Final = 64 * 1024
_MAX_PENDING_BYTES: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class _NodeApi:
    """A webhook that is a node's own API behind its gateway (``/analysis/...``)."""

    node_id: str
    path: str
    query_string: str

    @property
    def is_webhook(self) -> bool:
        """Whether copies go to the node API's own ``/webhook`` route (no query)."""
        return self.path == "/webhook" and not self.query_string


@dataclass(frozen=True, slots=True)
class _Subscription:
    subscription_id: str
    webhook_url: str
    target: URL | _NodeApi  # where copies are POSTed

    def wire(self, analysis_id: str) -> dict[str, Any]:
        return Subscription(
            subscription_id=self.subscription_id,
            analysis_id=analysis_id,
            webhook_url=self.webhook_url,
        ).wire()


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """What every copy of one sent message shares."""

    sender: str | None
    category: str | None
    message_id: str | None
    payload: bytes
    sent: float
    identity: tuple[object, ...] = ()
    """What the message is, stable across runs (chaos mode seeds its fate with it)."""


class BrokerError(InvalidArgument):
    """A send or subscribe request is refused; the text is the ``detail`` of the answer.

    Args:
        message: The reason.
        status: The HTTP status of the answer (400 unless the reason is a limit or a right).
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Pending:
    """The copies of one message still being delivered (its payload is held until the last),
    and those whose first webhook attempt has not ended yet (the sender's answer waits for
    them: see :meth:`BrokerService.publish`)."""

    __slots__ = ("copies", "inline", "tried", "untried")

    def __init__(self, copies: int) -> None:
        self.copies = copies
        self.inline: _Copy | None = None
        """The copy whose first attempt the sender's request makes itself (no task)."""
        self.untried = copies
        self.tried = asyncio.Event()
        if not copies:
            self.tried.set()

    def first_attempt_ended(self) -> None:
        """One copy's first webhook attempt ended (answered, failed or the copy was lost)."""
        self.untried -= 1
        if not self.untried:
            self.tried.set()


class _Copy:
    """One copy of a message to one subscription, while the broker delivers it."""

    __slots__ = ("attempts", "outgoing", "pending", "recipient", "reported", "subscription")

    def __init__(
        self, outgoing: _Outgoing, recipient: str, subscription: _Subscription, pending: _Pending
    ) -> None:
        self.outgoing = outgoing
        self.recipient = recipient
        self.subscription = subscription
        self.pending = pending
        self.attempts = 0
        """Webhook POSTs made so far."""
        self.reported = False

    def first_attempt_ended(self) -> None:
        """Tell the message's :class:`_Pending` that this copy's first attempt ended (once;
        later calls do nothing)."""
        if not self.reported:
            self.reported = True
            self.pending.first_attempt_ended()


class BrokerService:
    """The broker of one local analysis.

    Args:
        core: The running platform.
        retry_initial: Delay before the first webhook retry in seconds (1.0 on the real broker).
        retries: Retries after the first attempt for 5xx answers and connection failures.
        multiplier: Growth factor of the delay per retry.
        jitter: Each delay ``d`` is drawn from ``[max(retry_initial, d - jitter*d), d + jitter*d]``
            (Reactor's ``Retry.backoff``, which the real broker uses).
        max_events: How many :class:`DeliveryEvent` are kept; the oldest go first.
        max_message_bytes: The largest message accepted, as delivered (its compact JSON, the
            whole webhook body); larger sends are refused with 413.
        max_subscriptions: Subscriptions one node may hold at once.
        max_pending_bytes: Bytes of taken but undelivered messages the broker holds at most;
            sends beyond it answer 503 until deliveries end.
    """

    prefixes = ("/message-broker",)

    def __init__(
        self,
        core: PlatformCore,
        *,
        retry_initial: float = 1.0,
        retries: int = 5,
        multiplier: float = 2.0,
        jitter: float = 0.75,
        max_events: int = 100_000,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_subscriptions: int = _MAX_SUBSCRIPTIONS,
        max_pending_bytes: int = _MAX_PENDING_BYTES,
    ) -> None:
        self._core = core
        self.max_message_bytes = max_message_bytes
        self._max_subscriptions = max_subscriptions
        self._max_pending_bytes = max(max_pending_bytes, max_message_bytes)
        self._pending_bytes = 0
        self._retry_initial = retry_initial
        self._retries = retries
        self._multiplier = multiplier
        self._jitter = jitter
        self.events: deque[DeliveryEvent] = deque(maxlen=max_events)
        self.delivery_log = DeliveryLog(self.events)  # counts and numbers them too
        self._in_flight: set[anyio.CancelScope] = set()
        self._subscriptions: dict[str, dict[str, _Subscription]] = {n: {} for n in core.nodes}
        self._participants = (
            WireParticipants(
                [WireParticipant(node_id=n.node_id, node_type=n.role) for n in core.nodes.values()]
            )
            .model_dump_json(by_alias=True)
            .encode()
        )

    # -- gateway -------------------------------------------------------------------------------

    def routes(self, node: LocalNode) -> Iterable[Route]:
        """The broker under ``/message-broker`` with ``node`` as self."""
        api = _NodeBroker(self, node)
        core = self._core

        def authed(handler: Any) -> Any:
            checked = require_bearer(
                api.known_analysis(handler), core.issuer, core.analysis_id, node_id=node.node_id
            )

            async def running(call: Call) -> Response:
                if self.restarting:
                    return detail_response(
                        503, "the message broker is restarting (chaos mode); try again shortly"
                    )
                return await checked(call)

            return running

        base = "/message-broker/analyses/{analysis_id}"
        return [
            Route("GET", "/message-broker/healthz", _healthz),
            Route("GET", f"{base}/participants", authed(api.participants)),
            Route("GET", f"{base}/participants/self", authed(api.participant_self)),
            Route("POST", f"{base}/messages", authed(api.send)),
            Route("POST", f"{base}/messages/broadcast", authed(api.broadcast)),
            Route("POST", f"{base}/messages/subscriptions", authed(api.subscribe)),
            Route("GET", f"{base}/messages/subscriptions", authed(api.subscriptions)),
            Route(
                "GET",
                f"{base}/messages/subscriptions/{{subscription_id}}",
                authed(api.subscription),
            ),
            Route(
                "DELETE",
                f"{base}/messages/subscriptions/{{subscription_id}}",
                authed(api.unsubscribe),
            ),
        ]

    @property
    def core(self) -> PlatformCore:
        """The platform the broker runs in."""
        return self._core

    @property
    def participants_json(self) -> bytes:
        """The participants list as the broker serves it (every node, self included)."""
        return self._participants

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, node_id: str, webhook_url: str) -> _Subscription:
        """Register a webhook for ``node_id``; duplicates are allowed (and deliver twice).

        Raises:
            BrokerError: ``webhook_url`` is not an absolute http(s) URL or longer than 2048
                characters (400), it is another node's API behind its gateway (403), or the
                node has the most subscriptions allowed already (409).
        """
        if len(webhook_url) > _MAX_WEBHOOK_URL:
            raise BrokerError(
                f"webhookUrl is {len(webhook_url)} characters long; at most "
                f"{_MAX_WEBHOOK_URL} are accepted"
            )
        try:
            url = URL(webhook_url)
        except (TypeError, ValueError) as exc:
            raise BrokerError(f"webhookUrl is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise BrokerError("webhookUrl must be an absolute http(s) URL")
        target = self._delivery_target(url)
        if isinstance(target, _NodeApi) and target.node_id != node_id:
            raise BrokerError(
                f"webhookUrl is the API of {target.node_id}; {node_id} may subscribe only its "
                "own API (or a URL outside the platform)",
                status=403,
            )
        subscriptions = self._subscriptions[node_id]
        if len(subscriptions) >= self._max_subscriptions:
            raise BrokerError(
                f"{node_id} has {len(subscriptions)} subscriptions, the most a node may hold; "
                "delete one first (DELETE .../messages/subscriptions/{subscriptionId})",
                status=409,
            )
        subscription = _Subscription(str(uuid.uuid4()), webhook_url, target)
        subscriptions[subscription.subscription_id] = subscription
        return subscription

    def subscriptions(self, node_id: str) -> list[_Subscription]:
        """The subscriptions of ``node_id`` in creation order."""
        return list(self._subscriptions[node_id].values())

    def subscription(self, node_id: str, subscription_id: str) -> _Subscription | None:
        """The subscription of ``node_id`` with that id, if it exists."""
        return self._subscriptions[node_id].get(subscription_id)

    def unsubscribe(self, node_id: str, subscription_id: str) -> None:
        """Remove a subscription of ``node_id``; unknown ids are ignored."""
        self._subscriptions[node_id].pop(subscription_id, None)

    def _delivery_target(self, url: URL) -> URL | _NodeApi:
        # A webhook at one of our own gateways would only be forwarded by that gateway to the
        # node API (nginx: /analysis/* -> analysis:8000/*); skip the extra hop.
        path = url.raw_path
        if path.startswith("/analysis/") and (node := self._core.node_behind(url)) is not None:
            return _NodeApi(node.node_id, path[len("/analysis") :], url.raw_query_string)
        return url

    # -- sending -------------------------------------------------------------------------------

    def publish(  # noqa: PLR0912 - one pass over the recipients, each case recorded
        self, sender: str | None, recipients: list[str], message: Any
    ) -> _Pending:
        """Start delivering ``message`` to every subscription of each recipient.

        Returns as soon as the delivery tasks are started, with what tracks them: the send
        route answers once every copy's first webhook attempt ended (see :meth:`BrokerApi`),
        so a sender that starts its resend clock at that answer never resends a copy this
        broker is still delivering. A message with one copy (and no chaos mode) gets no task:
        the caller must await :meth:`deliver_inline`. Recipients without a subscription get a
        ``dropped`` event right away.

        Args:
            sender: The ``sub`` claim of the sender's token, recorded in the events.
            recipients: Node ids, validated by the caller.
            message: The JSON value to deliver.

        Raises:
            BrokerError: The message is larger than :attr:`max_message_bytes` as JSON (413),
                nested too deeply to be written as JSON (400), or the broker holds too many
                undelivered bytes already (503).
        """
        meta = message.get("meta") if isinstance(message, dict) else None
        category = message_id = None
        identity: tuple[object, ...] = ()
        if isinstance(meta, dict):
            if isinstance(value := meta.get("category"), str):
                category = value
            if isinstance(value := meta.get("id"), str):
                message_id = value
            kind = "ack" if meta.get("akn_id") else "message"
            identity = (sender, category, meta.get("number"), kind)
        try:
            payload = orjson.dumps(message)
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes (254)
            raise BrokerError(f"the message cannot be delivered as JSON: {exc}") from exc
        if len(payload) > self.max_message_bytes:
            raise BrokerError(
                f"the message is {len(payload)} bytes as JSON; the broker delivers at most "
                f"{self.max_message_bytes} bytes (what a node API accepts, the SDK's "
                "max_api_body_bytes): send large data through storage instead",
                status=413,
            )
        copies = sum(len(self._subscriptions[recipient]) for recipient in recipients)
        if copies and self._pending_bytes + len(payload) > self._max_pending_bytes:
            raise BrokerError(
                f"the broker holds {self._pending_bytes} bytes of messages not yet delivered "
                f"(at most {self._max_pending_bytes}); try again once deliveries caught up",
                status=503,
            )
        outgoing = _Outgoing(sender, category, message_id, payload, time.monotonic(), identity)
        plan = self._core.faults
        deliveries: list[tuple[str, _Subscription, float]] = []
        for recipient in recipients:
            subscriptions = self._subscriptions[recipient]
            if not subscriptions:
                self._record(
                    outgoing,
                    recipient,
                    None,
                    outcome="dropped",
                    attempts=0,
                    status=None,
                    reason="no subscription",
                )
                continue
            for subscription in subscriptions.values():
                delays = [0.0] if plan is None else plan.copies(recipient, identity)
                if not delays:
                    self._drop(outgoing, recipient, subscription, 0, None, "lost (chaos mode)")
                deliveries.extend((recipient, subscription, delay) for delay in delays)
        pending = _Pending(len(deliveries))
        if deliveries:
            self._pending_bytes += len(payload)
        if len(deliveries) == 1 and not deliveries[0][2] and plan is None:
            recipient, subscription, _ = deliveries.pop()
            pending.inline = _Copy(outgoing, recipient, subscription, pending)  # deliver_inline
        batch: list[_Copy] = []  # copies to node APIs in this event loop: a task per batch
        for recipient, subscription, delay in deliveries:
            copy = _Copy(outgoing, recipient, subscription, pending)
            if self.takes_at_once(copy):
                batch.append(copy)
                if len(batch) == _BATCH:
                    self._core.spawn(self._deliver_batch, batch)
                    batch = []
            else:
                self._core.spawn(self._deliver_held, copy, delay)
        if batch:
            self._core.spawn(self._deliver_batch, batch)
        return pending

    def takes_at_once(self, copy: _Copy) -> bool:
        """Whether ``copy`` goes to a running node in this event loop: its delivery does not
        wait (no request is made; a retry, if due, goes on in a task)."""
        return self._core.faults is None and self._in_loop(copy.subscription.target)

    def _in_loop(self, target: URL | _NodeApi) -> bool:
        """Whether copies to ``target`` are taken by a node API in this event loop (no request,
        no waiting once the node runs)."""
        return (
            isinstance(target, _NodeApi)
            and target.is_webhook
            and self._core.takes_webhooks(target.node_id)
        )

    async def _deliver_batch(self, copies: list[_Copy]) -> None:
        """Make the first attempt of each copy, one after the other (each is taken at once by a
        node API in this event loop: one task for many copies instead of one each); copies due
        for a retry go on in tasks of their own. Cancelled (the platform exits), the copies not
        delivered yet are lost, as their tasks would be."""
        pending = iter(copies)
        try:
            for copy in pending:
                await self._first_attempt(copy, resend_if_cancelled=False)
        finally:
            for copy in pending:  # only when cancelled
                copy.first_attempt_ended()
                self._copy_done(copy)

    async def _deliver_held(self, copy: _Copy, delay: float = 0.0) -> None:
        """:meth:`_deliver` (after ``delay`` seconds; after a backoff when attempts were made
        already), then release the payload's bytes once its last copy is done. A broker
        restart (chaos mode) cancels it: the copy is lost."""
        # only chaos mode restarts the broker: without it, no cancel scope per copy
        scope = anyio.CancelScope() if self._core.faults is not None else None
        try:
            with scope if scope is not None else nullcontext():
                if scope is not None:
                    self._in_flight.add(scope)
                if copy.attempts:
                    delay = max(delay, self._backoff(copy.attempts))
                if delay:
                    await anyio.sleep(delay)
                await self._deliver(copy)
            if scope is not None and scope.cancelled_caught:
                self._drop(
                    copy.outgoing,
                    copy.recipient,
                    copy.subscription,
                    0,
                    None,
                    "lost in a broker restart",
                )
        finally:
            if scope is not None:
                self._in_flight.discard(scope)
            copy.first_attempt_ended()  # lost before its first attempt ended
            self._copy_done(copy)

    async def deliver_inline(self, pending: _Pending) -> None:
        """Make the first attempt of the one copy :meth:`publish` left to the caller (a
        message to one node, the usual case: no task of its own); retries, if due, go on in a
        task. Cancelled, the copy is handed to a task that delivers it from the start (the
        node may get it twice; receivers de-duplicate)."""
        copy = pending.inline
        if copy is None:
            return
        pending.inline = None
        await self._first_attempt(copy, resend_if_cancelled=True)

    async def _first_attempt(self, copy: _Copy, *, resend_if_cancelled: bool) -> None:
        """Make ``copy``'s first webhook attempt; a retry, if due, goes on in a task of its
        own. The copy is released once delivered or dropped.

        Cancellation: with ``resend_if_cancelled`` the copy is handed to a task that delivers
        it from the start (the node may get it twice; receivers de-duplicate); without, it is
        released (lost, as a cancelled delivery task's copy is).
        """
        handed_off = False
        try:
            if not await self._deliver(copy, give_back=True):
                self._core.spawn(self._deliver_held, copy)  # retries after a backoff
                handed_off = True
        except BaseException:
            if resend_if_cancelled and not handed_off:
                copy.attempts = 0
                self._core.spawn(self._deliver_held, copy)
                handed_off = True
            raise
        finally:
            copy.first_attempt_ended()
            if not handed_off:
                self._copy_done(copy)

    def _copy_done(self, copy: _Copy) -> None:
        """A copy is delivered or dropped: release the payload's bytes after its last copy."""
        pending = copy.pending
        pending.copies -= 1
        if not pending.copies:
            self._pending_bytes -= len(copy.outgoing.payload)

    def restart(self) -> None:
        """Restart (chaos mode): every delivery in flight is lost; subscriptions stay."""
        for scope in list(self._in_flight):
            scope.cancel()

    @property
    def restarting(self) -> bool:
        """True while a broker restart of chaos mode lasts (the broker answers 503)."""
        plan = self._core.faults
        return plan is not None and plan.broker_down(time.monotonic())

    async def _post_copy(self, target: URL | _NodeApi, payload: bytes) -> int:
        """POST one copy; the answer's status.

        Raises:
            NodeUnreachable: A node API is not listening.
            aiohttp.ClientError: An outside webhook could not be reached.
            TimeoutError: No answer in time.
        """
        if isinstance(target, _NodeApi):
            if target.is_webhook:
                status = await self._core.deliver_webhook(target.node_id, payload)
                if status is not None:  # a node in this event loop: no request built
                    return status
            request = Request(
                "POST",
                target.path,
                query_string=target.query_string,
                headers=_DELIVERY_HEADERS,
                body=payload,
            )
            async with self._core.call_node(
                target.node_id, request, timeout=_ATTEMPT_TIMEOUT
            ) as response:
                await response.read()  # so a keep-alive connection can be reused
                return response.status
        async with self._core.session.post(
            target,
            data=aiohttp_data(payload),
            headers=_DELIVERY_HEADERS,
            timeout=aiohttp.ClientTimeout(total=_ATTEMPT_TIMEOUT),
            allow_redirects=False,
        ) as answer:
            await answer.read()
            return answer.status

    async def _attempt(
        self, target: URL | _NodeApi, payload: bytes, fault: WebhookFault | None
    ) -> int:
        """One webhook attempt, with chaos mode's ``fault`` for it; the answer's status.

        Raises:
            NodeUnreachable: As :meth:`_post_copy`; or the copy went out and the connection
                was reset before the answer (``reset-after``: the node has it, the broker
                does not know).
        """
        if fault == "5xx":
            return 503  # as a proxy on the way answers
        status = await self._post_copy(target, payload)
        if fault == "reset-after":
            raise NodeUnreachable("the connection was reset after the copy went out (chaos mode)")
        return status

    async def _deliver(self, copy: _Copy, *, give_back: bool = False) -> bool:
        """Deliver one copy, retrying 5xx answers, connection failures and timeouts, and tell
        the copy when its first attempt ended.

        Args:
            give_back: Return instead of waiting for a retry.

        Returns:
            True when the copy is delivered or dropped; False (only with ``give_back``) when a
            retry is due: the caller delivers it later (``copy.attempts`` counts on).

        Cancellation: stops the delivery where it is; no event is recorded.
        """
        plan = self._core.faults
        outgoing, recipient, subscription = copy.outgoing, copy.recipient, copy.subscription
        while True:
            copy.attempts += 1
            attempts = copy.attempts
            status: int | None = None
            fault = None if plan is None else plan.webhook(recipient, outgoing.identity, attempts)
            try:
                try:
                    status = await self._attempt(subscription.target, outgoing.payload, fault)
                finally:
                    copy.first_attempt_ended()
            except (NodeUnreachable, aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception:  # task supervisor: a bug here must not stop the platform
                logger.warning("delivery to %s crashed", subscription.webhook_url, exc_info=True)
                self._record(
                    outgoing,
                    recipient,
                    subscription,
                    outcome="dropped",
                    attempts=attempts,
                    status=None,
                    reason="internal error",
                )
                return True
            else:
                if 200 <= status < 300:
                    self._record(
                        outgoing,
                        recipient,
                        subscription,
                        outcome="delivered",
                        attempts=attempts,
                        status=status,
                    )
                    return True
                failure = f"HTTP {status}"
                if status < 500:
                    self._drop(outgoing, recipient, subscription, attempts, status, failure)
                    return True
            if attempts > self._retries:
                reason = f"gave up after {attempts} attempts ({failure})"
                self._drop(outgoing, recipient, subscription, attempts, status, reason)
                return True
            if give_back:
                return False
            await anyio.sleep(self._backoff(attempts))

    def _backoff(self, retry: int) -> float:
        nominal = self._retry_initial * self._multiplier ** (retry - 1)
        spread = nominal * self._jitter
        low = max(self._retry_initial - nominal, -spread)
        return nominal + random.uniform(low, spread)  # noqa: S311 - jitter, not cryptography

    def _drop(  # noqa: PLR0917 - private helper, called in three places
        self,
        outgoing: _Outgoing,
        recipient: str,
        subscription: _Subscription,
        attempts: int,
        status: int | None,
        reason: str,
    ) -> None:
        logger.debug(
            "dropped message %s to %s (%s): %s",
            outgoing.message_id,
            recipient,
            subscription.webhook_url,
            reason,
        )
        self._record(
            outgoing,
            recipient,
            subscription,
            outcome="dropped",
            attempts=attempts,
            status=status,
            reason=reason,
        )

    def _record(
        self,
        outgoing: _Outgoing,
        recipient: str,
        subscription: _Subscription | None,
        *,
        outcome: DeliveryOutcome,
        attempts: int,
        status: int | None,
        reason: str = "",
    ) -> None:
        self.delivery_log.append(  # into ``events``, counted
            DeliveryEvent(
                sender=outgoing.sender,
                recipient=recipient,
                subscription_id=subscription.subscription_id if subscription else None,
                category=outgoing.category,
                message_id=outgoing.message_id,
                size=len(outgoing.payload),
                outcome=outcome,
                attempts=attempts,
                status=status,
                reason=reason,
                sent_monotonic=outgoing.sent,
                monotonic=time.monotonic(),
                time=datetime.now(UTC),
            )
        )


async def _healthz(call: Call) -> Response:
    return json_response({"status": "ok"})


class _NodeBroker:
    """The broker endpoints as one node sees them."""

    __slots__ = ("_analysis_id", "_broker", "_node", "_nodes", "_self_json")

    def __init__(self, broker: BrokerService, node: LocalNode) -> None:
        self._broker = broker
        self._node = node
        self._nodes = broker.core.nodes
        self._analysis_id = broker.core.analysis_id
        # a right-sized copy: orjson's buffer (4 KiB) would stay allocated for each node
        self._self_json = bytes(
            memoryview(
                orjson.dumps(WireParticipant(node_id=node.node_id, node_type=node.role).wire())
            )
        )

    def known_analysis(self, handler: Any) -> Any:
        """``handler`` behind a check: 404 for any analysis id but the platform's (the real
        broker serves any)."""

        async def checked(call: Call) -> Response:
            analysis_id = call.params.get("analysis_id", self._analysis_id)
            if analysis_id != self._analysis_id:
                return detail_response(404, f"unknown analysis {shown(analysis_id)}")
            return await handler(call)  # type: ignore[no-any-return]

        return checked

    async def participants(self, call: Call) -> Response:
        return Response(
            200, self._broker.participants_json, headers={"content-type": "application/json"}
        )

    async def participant_self(self, call: Call) -> Response:
        return Response(200, self._self_json, headers={"content-type": "application/json"})

    async def _message_body(self, call: Call) -> dict[str, Any] | Response:
        limit = self._broker.max_message_bytes + _ENVELOPE
        what = (
            f"a broker send (a message of at most {self._broker.max_message_bytes} bytes, "
            f"plus {_ENVELOPE // 1024} KiB for the recipients)"
        )
        return await read_json_object(call, limit=limit, what=what)

    async def send(self, call: Call) -> Response:
        body = await self._message_body(call)
        if isinstance(body, Response):
            return body
        recipients = self._recipients(body.get("recipients"))
        if isinstance(recipients, Response):
            return recipients
        return await self._publish(call, body, recipients)

    def _recipients(self, recipients: Any) -> list[str] | Response:
        """The distinct recipients of a send, or the 400 answer naming what is wrong."""
        if not isinstance(recipients, list) or not recipients:
            return detail_response(400, "recipients must be a non-empty list of node ids")
        if len(recipients) > _MAX_RECIPIENTS:
            return detail_response(
                400, f"{len(recipients)} recipients; a send names at most {_MAX_RECIPIENTS}"
            )
        unique: list[str] = []
        for recipient in recipients:
            if not isinstance(recipient, str):
                return detail_response(400, "recipients must be a non-empty list of node ids")
            if recipient == self._node.node_id:
                return detail_response(400, f"a node cannot message itself ({recipient})")
            if recipient not in self._nodes:
                return detail_response(
                    400, f"{shown(recipient)} is not a participant of this analysis"
                )
            if recipient not in unique:
                unique.append(recipient)
        return unique

    async def broadcast(self, call: Call) -> Response:
        body = await self._message_body(call)
        if isinstance(body, Response):
            return body
        me = self._node.node_id  # the others, listed per broadcast: no N-long list per node
        return await self._publish(call, body, [n for n in self._nodes if n != me])

    async def _publish(self, call: Call, body: dict[str, Any], recipients: list[str]) -> Response:
        message = body.get("message")
        if message is None:
            return detail_response(400, "message is missing")
        if (forged := self._forged(message)) is not None:
            return detail_response(403, forged)
        try:
            pending = self._broker.publish(self._node.node_id, recipients, message)
        except BrokerError as exc:
            return detail_response(exc.status, str(exc))
        # 202 once every copy had its first webhook attempt (or after _HOLD_ANSWER): the sender
        # starts its resend clock at this answer, so copies still in the broker's hands are
        # never resent. (The real broker answers at once; its Hub messenger has no backlog.)
        inline = pending.inline
        if inline is not None and self._broker.takes_at_once(inline):
            await self._broker.deliver_inline(pending)  # no wait: no timer to arm
            if pending.tried.is_set():
                return Response(_ACCEPTED)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_HOLD_ANSWER):
                await self._broker.deliver_inline(pending)
                await pending.tried.wait()
        return Response(_ACCEPTED)

    def _forged(self, message: Any) -> str | None:
        """Why ``message`` claims to come from another node than the sender, if it does.

        An original (``meta.akn_id`` null) names its sender in ``meta.sender``, an
        acknowledgement its acknowledger in ``meta.akn_id`` (PROTOCOL.md §2.7-2.8); both must
        be the node whose token sent it. Messages without ``meta`` carry no identity to check.
        """
        meta = message.get("meta") if isinstance(message, dict) else None
        if not isinstance(meta, dict):
            return None
        me = self._node.node_id
        acknowledger = meta.get("akn_id")
        if acknowledger is None:
            sender = meta.get("sender", me)
            if sender != me:
                return (
                    f"meta.sender is {shown(sender)!r}, but the token belongs to {me}: a node "
                    "sends only as itself"
                )
        elif acknowledger != me:
            return (
                f"meta.akn_id is {shown(acknowledger)!r}, but the token belongs to {me}: a node "
                "acknowledges only as itself"
            )
        return None

    async def subscribe(self, call: Call) -> Response:
        body = await read_json_object(call, limit=_SUBSCRIBE_LIMIT, what="a subscription")
        if isinstance(body, Response):
            return body
        try:
            webhook_url = SubscriptionRequest.model_validate(body).webhook_url
        except ValidationError:
            return detail_response(400, "webhookUrl is missing or not a string")
        try:
            subscription = self._broker.subscribe(self._node.node_id, webhook_url)
        except BrokerError as exc:
            return detail_response(exc.status, str(exc))
        location = (
            f"/analyses/{self._analysis_id}/messages/subscriptions/{subscription.subscription_id}"
        )
        return json_response(
            subscription.wire(self._analysis_id), status=201, headers={"Location": location}
        )

    async def subscriptions(self, call: Call) -> Response:
        return json_response(
            [s.wire(self._analysis_id) for s in self._broker.subscriptions(self._node.node_id)]
        )

    async def subscription(self, call: Call) -> Response:
        subscription_id = call.params["subscription_id"]
        try:
            uuid.UUID(subscription_id)
        except ValueError:
            return detail_response(400, f"{subscription_id!r} is not a subscription id (UUID)")
        found = self._broker.subscription(self._node.node_id, subscription_id)
        if found is None:
            return detail_response(404, f"subscription {subscription_id} not found")
        return json_response(found.wire(self._analysis_id))

    async def unsubscribe(self, call: Call) -> Response:
        self._broker.unsubscribe(self._node.node_id, call.params["subscription_id"])
        return Response(204)
