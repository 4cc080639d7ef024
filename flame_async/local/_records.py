"""What the local platform records while an analysis runs: deliveries and streamed logs.

Deliveries are kept in a bounded deque (the last ``max_events``) and counted as they are
recorded (:class:`DeliveryLog`): totals and per-node counts cost O(1) to read, and each event
has a sequence number, so a reader that looks again and again (the live view of
``flame-async run``) takes only what is new, never a copy of everything kept.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from ..errors import InvalidArgument

__all__ = [
    "DeliveryCounts",
    "DeliveryEvent",
    "DeliveryLog",
    "DeliveryOutcome",
    "LogRecord",
    "NodeDeliveryCounts",
]

DeliveryOutcome = Literal["delivered", "dropped"]


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """The fate of one copy of a broker message (one recipient subscription).

    Attributes:
        sender: The sending node (the ``sub`` claim of its token), ``None`` if the token had none.
        recipient: The node the copy was addressed to.
        subscription_id: The webhook subscription it went to; ``None`` when the recipient had no
            subscription (the copy is then dropped without any attempt).
        category: ``message["meta"]["category"]`` when the message carries one.
        message_id: ``message["meta"]["id"]`` when the message carries one.
        size: Size of the delivered JSON body in bytes.
        outcome: ``"delivered"`` (the webhook answered 2xx) or ``"dropped"``.
        attempts: Webhook POSTs made (0 without a subscription).
        status: HTTP status of the last attempt; ``None`` if it never got an answer.
        reason: Why the copy was dropped; empty when delivered.
        sent_monotonic: ``time.monotonic()`` when the broker accepted the message.
        monotonic: ``time.monotonic()`` when the outcome was known.
        time: Wall-clock time (UTC) when the outcome was known.
    """

    sender: str | None
    recipient: str
    subscription_id: str | None
    category: str | None
    message_id: str | None
    size: int
    outcome: DeliveryOutcome
    attempts: int
    status: int | None
    reason: str
    sent_monotonic: float
    monotonic: float
    time: datetime


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log line a node streamed to the pod orchestrator (``POST /po/stream_logs``).

    Attributes:
        node_id: The node whose gateway received it.
        log: The log text (may contain newlines).
        log_type: ``emerg``, ``alert``, ``crit``, ``error``, ``warn``, ``notice``, ``info`` or
            ``debug``.
        status: The run status the node reported with the line.
        progress: The progress (0-100) the node reported with the line.
        monotonic: ``time.monotonic()`` at arrival.
        time: Wall-clock arrival time (UTC).
    """

    node_id: str
    log: str
    log_type: str
    status: str
    progress: int
    monotonic: float
    time: datetime


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """How many message copies the broker delivered and dropped so far.

    The counts cover the whole run, also the events that no longer fit in
    ``LocalPlatform.deliveries`` (it keeps the last 100 000).

    Attributes:
        events: Copies recorded so far, delivered or dropped; also the cursor that
            ``LocalPlatform.deliveries_since`` answers after the last of them.
        delivered: Copies delivered (the webhook answered 2xx).
        dropped: Copies dropped.
        bytes_delivered: Bytes of the delivered copies (their JSON bodies).
    """

    events: int
    delivered: int
    dropped: int
    bytes_delivered: int


@dataclass(frozen=True, slots=True)
class NodeDeliveryCounts:
    """The message copies one node sent and received so far (the whole run).

    A copy is one recipient subscription's: a message to three nodes is three copies, and so
    is its broadcast. Acknowledgements are messages too.

    Attributes:
        sent_delivered: Copies this node sent that were delivered.
        sent_dropped: Copies this node sent that were dropped.
        bytes_sent: Bytes of the copies this node sent, delivered or dropped.
        received: Copies delivered to this node.
        bytes_received: Bytes of the copies delivered to this node.
        dropped: Copies to this node that were dropped.
    """

    sent_delivered: int = 0
    sent_dropped: int = 0
    bytes_sent: int = 0
    received: int = 0
    bytes_received: int = 0
    dropped: int = 0

    @property
    def sent(self) -> int:
        """Copies this node sent, delivered or dropped."""
        return self.sent_delivered + self.sent_dropped


_NO_COUNTS = NodeDeliveryCounts()


class _NodeTally:
    """The mutable counterpart of :class:`NodeDeliveryCounts`."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "dropped",
        "received",
        "sent_delivered",
        "sent_dropped",
    )

    def __init__(self) -> None:
        self.sent_delivered = self.sent_dropped = self.bytes_sent = 0
        self.received = self.bytes_received = self.dropped = 0

    def frozen(self) -> NodeDeliveryCounts:
        return NodeDeliveryCounts(
            self.sent_delivered,
            self.sent_dropped,
            self.bytes_sent,
            self.received,
            self.bytes_received,
            self.dropped,
        )


class DeliveryLog:
    """The broker's delivery events: the last ones kept, every one counted and numbered.

    Event number ``k`` (1, 2, ...) is the ``k``-th recorded. A reader keeps a cursor (the
    number of the last event it took) and asks for what came after it: the answer costs what
    is new, not what is kept.

    Args:
        kept: The bounded deque the events are appended to (the broker's ``events``).
    """

    def __init__(self, kept: deque[DeliveryEvent]) -> None:
        self.kept = kept
        self._recorded = 0
        self._delivered = 0
        self._dropped = 0
        self._bytes_delivered = 0
        self._nodes: dict[str, _NodeTally] = {}

    def append(self, event: DeliveryEvent) -> None:
        """Keep ``event`` (the oldest kept one goes when the deque is full) and count it."""
        self.kept.append(event)
        self._recorded += 1
        size = event.size
        delivered = event.outcome == "delivered"
        nodes = self._nodes
        if (recipient := nodes.get(event.recipient)) is None:
            recipient = nodes[event.recipient] = _NodeTally()
        sender = None
        if event.sender:
            if (sender := nodes.get(event.sender)) is None:
                sender = nodes[event.sender] = _NodeTally()
            sender.bytes_sent += size
        if delivered:
            self._delivered += 1
            self._bytes_delivered += size
            recipient.received += 1
            recipient.bytes_received += size
            if sender is not None:
                sender.sent_delivered += 1
        else:
            self._dropped += 1
            recipient.dropped += 1
            if sender is not None:
                sender.sent_dropped += 1

    @property
    def recorded(self) -> int:
        """Events recorded so far (the number of the last one; 0 before the first)."""
        return self._recorded

    def counts(self) -> DeliveryCounts:
        """The totals so far (O(1))."""
        return DeliveryCounts(self._recorded, self._delivered, self._dropped, self._bytes_delivered)

    def node_counts(self, node_id: str) -> NodeDeliveryCounts:
        """What ``node_id`` sent and received so far (all zero for a node never seen; O(1))."""
        tally = self._nodes.get(node_id)
        return _NO_COUNTS if tally is None else tally.frozen()

    def since(self, cursor: int) -> tuple[list[DeliveryEvent], int]:
        """The events recorded after event number ``cursor``, oldest first, and the new cursor.

        Costs O(new events). When more came than are kept, the kept ones are returned (the
        older ones are gone); a cursor beyond the last event yields nothing.

        Raises:
            InvalidArgument: ``cursor`` is negative.
        """
        if cursor < 0:
            raise InvalidArgument(f"a delivery cursor is 0 or more, got {cursor}")
        return newest(self.kept, self._recorded - cursor), self._recorded


T = TypeVar("T")


def newest(kept: deque[T], count: int) -> list[T]:
    """The last ``count`` items of ``kept``, oldest first (all of them when fewer are kept,
    none for a count of 0 or less); costs O(count), not O(len(kept))."""
    if count <= 0:
        return []
    if count >= len(kept):
        return list(kept)
    tail = list(itertools.islice(reversed(kept), count))
    tail.reverse()
    return tail
