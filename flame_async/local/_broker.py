"""The message broker (PROTOCOL.md §2.1-2.5), one instance shared by every node gateway.

Each node's gateway serves the broker under ``/message-broker`` with that node as "self". A sent
message is delivered by POSTing the compact JSON of ``message`` to every webhook subscription of
each recipient, each copy in its own task. 5xx answers, connection failures and timeouts are
retried with exponential backoff (the real broker's schedule), anything else that is not 2xx drops
the copy. Every copy's fate is recorded as a :class:`~flame_async.local.DeliveryEvent`.

The real broker drops a copy on a connection error, but it reaches the analysis through nginx,
which turns a not-yet-listening API into a 502 and so into retries (PROTOCOL.md §2.4, Q15).
Deliveries here usually skip that hop, so connection failures are retried to behave the same.

The send path is kept lean on purpose (a benchmark holds it to a small multiple of a raw HTTP
round trip): no pydantic models, no logging per message, one shared keep-alive session, and the
delivery task is started before the 202 goes out.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import orjson
from aiohttp import web
from yarl import URL

from ..errors import InvalidArgument
from ._core import PlatformCore
from ._node import LocalNode
from ._records import DeliveryEvent, DeliveryOutcome
from ._service import CLAIMS, Handler, bearer_auth, detail_response, json_response

__all__ = ["BrokerService"]

logger = logging.getLogger("flame_async.local.broker")

_DELIVERY_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_ATTEMPT_TIMEOUT = aiohttp.ClientTimeout(total=30.0)


@dataclass(frozen=True, slots=True)
class _Subscription:
    subscription_id: str
    webhook_url: str
    target: URL  # where copies are POSTed: the webhook URL, or the node API behind a gateway

    def to_json(self, analysis_id: str) -> dict[str, str]:
        return {
            "subscriptionId": self.subscription_id,
            "analysisId": analysis_id,
            "webhookUrl": self.webhook_url,
        }


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """What every copy of one sent message shares."""

    sender: str | None
    category: str | None
    message_id: str | None
    payload: bytes
    sent: float


class BrokerError(InvalidArgument):
    """A send or subscribe request is invalid; the text is the 400 ``detail``."""


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
    ) -> None:
        self._core = core
        self._retry_initial = retry_initial
        self._retries = retries
        self._multiplier = multiplier
        self._jitter = jitter
        self.events: deque[DeliveryEvent] = deque(maxlen=max_events)
        self._subscriptions: dict[str, dict[str, _Subscription]] = {n: {} for n in core.nodes}
        self._participants = orjson.dumps(
            [{"nodeId": n.node_id, "nodeType": n.role} for n in core.nodes.values()]
        )

    # -- gateway -------------------------------------------------------------------------------

    def mount(self, app: web.Application, node: LocalNode) -> None:
        """Serve the broker under ``/message-broker`` with ``node`` as self."""
        app.router.add_get("/message-broker/healthz", _healthz)
        api = _NodeBroker(self, node)
        broker = web.Application(
            middlewares=[bearer_auth(self._core.issuer, self._core.analysis_id), api.known_analysis]
        )
        base = "/analyses/{analysis_id}"
        broker.router.add_get(f"{base}/participants", api.participants)
        broker.router.add_get(f"{base}/participants/self", api.participant_self)
        broker.router.add_post(f"{base}/messages", api.send)
        broker.router.add_post(f"{base}/messages/broadcast", api.broadcast)
        broker.router.add_post(f"{base}/messages/subscriptions", api.subscribe)
        broker.router.add_get(f"{base}/messages/subscriptions", api.subscriptions)
        broker.router.add_get(
            f"{base}/messages/subscriptions/{{subscription_id}}", api.subscription
        )
        broker.router.add_delete(
            f"{base}/messages/subscriptions/{{subscription_id}}", api.unsubscribe
        )
        app.add_subapp("/message-broker", broker)

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
            BrokerError: ``webhook_url`` is not an absolute http(s) URL.
        """
        try:
            url = URL(webhook_url)
        except (TypeError, ValueError) as exc:
            raise BrokerError(f"webhookUrl is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise BrokerError("webhookUrl must be an absolute http(s) URL")
        subscription = _Subscription(str(uuid.uuid4()), webhook_url, self._delivery_target(url))
        self._subscriptions[node_id][subscription.subscription_id] = subscription
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

    def _delivery_target(self, url: URL) -> URL:
        # A webhook at one of our own gateways would only be forwarded by that gateway to the
        # node API (nginx: /analysis/* -> analysis:8000/*); skip the extra hop.
        path = url.raw_path
        if path.startswith("/analysis/") and (node := self._core.node_behind(url)) is not None:
            return URL.build(
                scheme="http",
                host=node.env["FLAME_API_HOST"],
                port=node.api_port,
                path=path[len("/analysis") :],
                query_string=url.raw_query_string,
                encoded=True,
            )
        return url

    # -- sending -------------------------------------------------------------------------------

    def publish(self, sender: str | None, recipients: list[str], message: Any) -> None:
        """Start delivering ``message`` to every subscription of each recipient.

        Returns as soon as the delivery tasks are started. Recipients without a subscription
        get a ``dropped`` event right away.

        Args:
            sender: The ``sub`` claim of the sender's token, recorded in the events.
            recipients: Node ids, validated by the caller.
            message: The JSON value to deliver.
        """
        meta = message.get("meta") if isinstance(message, dict) else None
        category = message_id = None
        if isinstance(meta, dict):
            if isinstance(value := meta.get("category"), str):
                category = value
            if isinstance(value := meta.get("id"), str):
                message_id = value
        outgoing = _Outgoing(sender, category, message_id, orjson.dumps(message), time.monotonic())
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
                self._core.spawn(self._deliver, outgoing, recipient, subscription)

    async def _deliver(
        self, outgoing: _Outgoing, recipient: str, subscription: _Subscription
    ) -> None:
        """Deliver one copy, retrying 5xx answers, connection failures and timeouts.

        Cancellation: stops the delivery where it is; no event is recorded.
        """
        session = self._core.session
        attempts = 0
        while True:
            attempts += 1
            status: int | None = None
            try:
                async with session.post(
                    subscription.target,
                    data=outgoing.payload,
                    headers=_DELIVERY_HEADERS,
                    timeout=_ATTEMPT_TIMEOUT,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    await response.read()  # so the keep-alive connection can be reused
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception:  # task supervisor: a bug here must not stop the platform
                logger.warning("delivery to %s crashed", subscription.target, exc_info=True)
                self._record(
                    outgoing,
                    recipient,
                    subscription,
                    outcome="dropped",
                    attempts=attempts,
                    status=None,
                    reason="internal error",
                )
                return
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
                    return
                failure = f"HTTP {status}"
                if status < 500:
                    self._drop(outgoing, recipient, subscription, attempts, status, failure)
                    return
            if attempts > self._retries:
                reason = f"gave up after {attempts} attempts ({failure})"
                self._drop(outgoing, recipient, subscription, attempts, status, reason)
                return
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
        self.events.append(
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


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


class _NodeBroker:
    """The broker endpoints as one node sees them."""

    __slots__ = ("_analysis_id", "_broker", "_node", "_nodes", "_others", "_self_json")

    def __init__(self, broker: BrokerService, node: LocalNode) -> None:
        self._broker = broker
        self._node = node
        self._nodes = broker.core.nodes
        self._analysis_id = broker.core.analysis_id
        self._others = [n for n in self._nodes if n != node.node_id]
        self._self_json = orjson.dumps({"nodeId": node.node_id, "nodeType": node.role})

    @web.middleware
    async def known_analysis(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """404 for any analysis id but the platform's (the real broker serves any)."""
        analysis_id = request.match_info.get("analysis_id", self._analysis_id)
        if analysis_id != self._analysis_id:
            return detail_response(404, f"unknown analysis {analysis_id}")
        return await handler(request)

    async def participants(self, request: web.Request) -> web.Response:
        return web.Response(body=self._broker.participants_json, content_type="application/json")

    async def participant_self(self, request: web.Request) -> web.Response:
        return web.Response(body=self._self_json, content_type="application/json")

    async def send(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        recipients = body.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            return detail_response(400, "recipients must be a non-empty list of node ids")
        unique: list[str] = []
        for recipient in recipients:
            if not isinstance(recipient, str):
                return detail_response(400, "recipients must be a non-empty list of node ids")
            if recipient == self._node.node_id:
                return detail_response(400, f"a node cannot message itself ({recipient})")
            if recipient not in self._nodes:
                return detail_response(400, f"{recipient} is not a participant of this analysis")
            if recipient not in unique:
                unique.append(recipient)
        return self._publish(request, body, unique)

    async def broadcast(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        return self._publish(request, body, self._others)

    def _publish(
        self, request: web.Request, body: dict[str, Any], recipients: list[str]
    ) -> web.Response:
        message = body.get("message")
        if message is None:
            return detail_response(400, "message is missing")
        sender = request[CLAIMS].get("sub")
        self._broker.publish(sender if isinstance(sender, str) else None, recipients, message)
        return web.Response(status=202)

    async def subscribe(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        webhook_url = body.get("webhookUrl")
        if not isinstance(webhook_url, str):
            return detail_response(400, "webhookUrl is missing")
        try:
            subscription = self._broker.subscribe(self._node.node_id, webhook_url)
        except BrokerError as exc:
            return detail_response(400, str(exc))
        location = (
            f"/analyses/{self._analysis_id}/messages/subscriptions/{subscription.subscription_id}"
        )
        return json_response(
            subscription.to_json(self._analysis_id), status=201, headers={"Location": location}
        )

    async def subscriptions(self, request: web.Request) -> web.Response:
        return json_response(
            [s.to_json(self._analysis_id) for s in self._broker.subscriptions(self._node.node_id)]
        )

    async def subscription(self, request: web.Request) -> web.Response:
        subscription_id = request.match_info["subscription_id"]
        try:
            uuid.UUID(subscription_id)
        except ValueError:
            return detail_response(400, f"{subscription_id!r} is not a subscription id (UUID)")
        found = self._broker.subscription(self._node.node_id, subscription_id)
        if found is None:
            return detail_response(404, f"subscription {subscription_id} not found")
        return json_response(found.to_json(self._analysis_id))

    async def unsubscribe(self, request: web.Request) -> web.Response:
        self._broker.unsubscribe(self._node.node_id, request.match_info["subscription_id"])
        return web.Response(status=204)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request body as a JSON object, or the 400 response to send instead."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return detail_response(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return detail_response(400, "the body must be a JSON object")
    return body
