"""Sans-I/O message routing: numbering, de-duplication, ordering, acknowledgements, queues.

Nothing here does I/O, reads a clock or touches an event loop; the broker service feeds it what
arrives and acts on what it returns. That keeps every delivery rule unit-testable synchronously.

Delivery rules (see DESIGN "Delivery semantics"):

* Every original message carries ``meta.akn_id = null``; the receiver answers with a slim ack (the
  stamped ``meta`` only, no payload) that flamesdk also recognises: same ``meta.id``,
  ``meta.sender`` = original sender, ``meta.akn_id`` = receiver.
* Duplicates (same sender, same id) are acknowledged again but handed over once.
* Per-sender FIFO: flame-async senders number each receiver's messages (``meta.stream``); the
  receiver releases them in that order and skips gaps the sender has declared settled
  (``floor``). Messages without ``stream`` (flamesdk senders) are released on arrival.
* A message leaves its queue only when :meth:`Router.take` hands it to a caller.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from .models import Message, StreamInfo, WireMeta

__all__ = ["Ack", "Delivered", "Ignored", "Outgoing", "Received", "Router", "format_wire_time"]


def format_wire_time(moment: datetime) -> str:
    """Render a time the way flamesdk does (``str(datetime.now())``: local, naive)."""
    return str(moment.astimezone().replace(tzinfo=None))


def parse_wire_time(text: str | None, default: datetime) -> datetime:
    """Parse a flamesdk timestamp (naive local time) into an aware datetime."""
    if not text:
        return default
    try:
        return datetime.fromisoformat(text).astimezone()
    except ValueError:
        return default


@dataclasses.dataclass(slots=True)
class Outgoing:
    """An original message this node is sending, until every receiver is settled."""

    id: str
    category: str
    data: dict[str, Any]
    meta: dict[str, Any]
    seq: dict[str, int]
    pending: set[str]
    acked: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered:
    """An original message arrived (first time or again); acknowledge it with ``ack``.

    ``released`` lists the messages that became available to callers because of it (in order;
    empty for a duplicate or for a message held back until an earlier one arrives).
    """

    sender: str
    ack: dict[str, Any]
    released: tuple[Message, ...]
    duplicate: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement from ``node_id`` for this node's message ``message_id``."""

    message_id: str
    node_id: str
    settled: bool
    """True when this ack settled the last receiver of at least one message."""
    settled_ids: tuple[str, ...] = ()
    """The messages it settled (several for a coalesced ack)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Ignored:
    """Something that needs no action (an ack for an unknown or settled message)."""

    reason: str


Received = Delivered | Ack | Ignored


@dataclasses.dataclass(slots=True)
class _Stream:
    epoch: str
    expected: int
    held: dict[int, Message] = dataclasses.field(default_factory=dict)


class Router:
    """Routing state of one node.

    Args:
        node_id: This node's id.
        epoch: A value unique to this process start (defaults to a random UUID).
    """

    def __init__(self, node_id: str, *, epoch: str | None = None) -> None:
        self.node_id = node_id
        self.epoch = epoch or uuid.uuid4().hex
        self._counter = 0
        self._next_seq: dict[str, int] = {}
        self._open_seq: dict[str, set[int]] = {}
        self._outgoing: dict[str, Outgoing] = {}
        self._seen: dict[str, set[str]] = {}
        self._streams: dict[str, _Stream] = {}
        self._queues: dict[str, deque[Message]] = {}
        self.heard_from: set[str] = set()
        self.legacy_senders: set[str] = set()
        """Senders whose messages carry no ``stream`` extension (flamesdk nodes)."""
        self.stats = {"received": 0, "duplicates": 0, "acks": 0, "sent": 0}

    # ------------------------------------------------------------------ sending

    def new_message(
        self,
        receivers: Iterable[str],
        category: str,
        data: Mapping[str, Any],
        *,
        now: datetime,
        reply_to: str | None = None,
        error: str | None = None,
    ) -> Outgoing:
        """Number a new original message and register it as awaiting acknowledgement."""
        number = self._counter
        self._counter += 1
        message_id = f"{self.node_id[:4]}-{number}-{uuid.uuid4().hex[:12]}"
        targets = list(dict.fromkeys(receivers))
        seq: dict[str, int] = {}
        for receiver in targets:
            n = self._next_seq.get(receiver, 1)
            self._next_seq[receiver] = n + 1
            self._open_seq.setdefault(receiver, set()).add(n)
            seq[receiver] = n
        meta: dict[str, Any] = {
            "type": "outgoing",
            "category": category,
            "id": message_id,
            "akn_id": None,
            "status": "unread",
            "sender": self.node_id,
            "created_at": format_wire_time(now),
            "arrived_at": None,
            "number": number,
        }
        if reply_to is not None:
            meta["reply_to"] = reply_to
        if error is not None:
            meta["error"] = error
        out = Outgoing(message_id, category, dict(data), meta, seq, set(targets))
        self._outgoing[message_id] = out
        self.stats["sent"] += 1
        return out

    def body_for(self, out: Outgoing, receivers: Collection[str]) -> dict[str, Any]:
        """The ``message`` object to post to ``receivers`` now (floors are refreshed each time)."""
        stream = {
            "epoch": self.epoch,
            "seq": {r: out.seq[r] for r in receivers},
            "floor": {r: self._floor(r) for r in receivers},
        }
        return {**out.data, "meta": {**out.meta, "stream": stream}}

    def _floor(self, receiver: str) -> int:
        open_seq = self._open_seq.get(receiver)
        if open_seq:
            return min(open_seq)
        return self._next_seq.get(receiver, 1)

    def settle(self, out: Outgoing) -> None:
        """Stop tracking ``out``: receivers that did not ack are given up on."""
        self._outgoing.pop(out.id, None)
        for receiver, n in out.seq.items():
            self._open_seq.get(receiver, set()).discard(n)

    # ---------------------------------------------------------------- receiving

    def receive(self, meta: WireMeta, data: dict[str, Any], *, now: datetime) -> Received:
        """Process one webhook body that the API layer has already validated."""
        if meta.akn_id is not None:
            return self._on_ack(meta)
        sender = meta.sender
        self.heard_from.add(sender)
        ack = self._ack_for(meta, now)
        seen = self._seen.setdefault(sender, set())
        if meta.id in seen:
            self.stats["duplicates"] += 1
            return Delivered(sender, ack, (), duplicate=True)
        seen.add(meta.id)
        self.stats["received"] += 1
        message = Message.model_construct(  # every field is already validated (WireMeta)
            id=meta.id,
            sender=sender,
            category=meta.category,
            data=data,
            message_number=meta.number,
            time=parse_wire_time(meta.created_at, now),
            arrived_at=now,
            reply_to=meta.reply_to,
            error=meta.error,
        )
        if meta.stream is None:
            self.legacy_senders.add(sender)
        released = self._order(sender, meta.stream, message)
        return Delivered(sender, ack, released, duplicate=False)

    def _ack_for(self, meta: WireMeta, now: datetime) -> dict[str, Any]:
        stamped: dict[str, Any] = {
            **(meta.model_extra or {}),
            "type": "incoming",
            "category": meta.category,
            "id": meta.id,
            "akn_id": self.node_id,
            "status": meta.status,
            "sender": meta.sender,
            "created_at": meta.created_at,
            "arrived_at": format_wire_time(now),
            "number": meta.number,
        }
        if meta.reply_to is not None:
            stamped["reply_to"] = meta.reply_to
        return {"meta": stamped}

    def _order(
        self, sender: str, stream: StreamInfo | None, message: Message
    ) -> tuple[Message, ...]:
        seq = stream.seq.get(self.node_id) if stream else None
        if stream is None or seq is None:
            return (message,)
        floor = stream.floor.get(self.node_id, seq)
        state = self._streams.get(sender)
        released: list[Message] = []
        if state is None or state.epoch != stream.epoch:
            if state is not None:  # the sender restarted: what it held back is released as is
                released.extend(state.held[k] for k in sorted(state.held))
            state = self._streams[sender] = _Stream(stream.epoch, expected=floor)
        if floor > state.expected:
            released.extend(state.held.pop(k) for k in sorted(k for k in state.held if k < floor))
            state.expected = floor
        if seq < state.expected:  # settled by the sender as missing, yet here after all
            released.append(message)
            return tuple(released)
        state.held[seq] = message
        while state.expected in state.held:
            released.append(state.held.pop(state.expected))
            state.expected += 1
        return tuple(released)

    def _on_ack(self, meta: WireMeta) -> Received:
        if meta.sender != self.node_id:
            return Ignored(f"ack from {meta.akn_id} for a message of {meta.sender}")
        node = meta.akn_id or ""
        self.heard_from.add(node)
        outcomes = {m: self._ack_one(m, node) for m in (meta.id, *(meta.acks or ()))}
        if all(outcome is None for outcome in outcomes.values()):
            return Ignored(f"ack from {node} for settled or unknown message {meta.id}")
        settled = tuple(m for m, outcome in outcomes.items() if outcome)
        return Ack(meta.id, node, settled=bool(settled), settled_ids=settled)

    def _ack_one(self, message_id: str, node: str) -> bool | None:
        """Count ``node``'s ack of ``message_id``: True if that settled the message, False if
        others are still pending, None if it was unknown or already counted."""
        self.stats["acks"] += 1
        out = self._outgoing.get(message_id)
        if out is None or node not in out.pending:
            return None
        out.pending.discard(node)
        out.acked.append(node)
        n = out.seq.get(node)
        if n is not None:
            self._open_seq.get(node, set()).discard(n)
        return not out.pending

    @staticmethod
    def merge_acks(acks: list[dict[str, Any]]) -> dict[str, Any]:
        """One ack body for several acks to the same flame-async sender.

        The first ack is kept whole (flamesdk-shaped); the others' ids ride in ``meta.acks``.
        """
        first = acks[0]
        if len(acks) == 1:
            return first
        return {"meta": {**first["meta"], "acks": [a["meta"]["id"] for a in acks[1:]]}}

    # ------------------------------------------------------------------ queues

    def enqueue(self, message: Message) -> None:
        """Make ``message`` available to :meth:`take` (after those already queued)."""
        self._queues.setdefault(message.sender, deque()).append(message)

    def requeue(self, message: Message) -> None:
        """Put a taken message back at the head of its sender's queue (a wait was abandoned)."""
        self._queues.setdefault(message.sender, deque()).appendleft(message)

    def take(
        self,
        senders: Collection[str] | None,
        predicate: Callable[[Message], bool] | None = None,
    ) -> Message | None:
        """Remove and return the oldest queued message of ``senders`` (any sender if None).

        Among several senders the one whose head message arrived first wins; within one sender
        the first message matching ``predicate`` in FIFO order is taken.
        """
        best: tuple[datetime, str, int] | None = None
        names = self._queues.keys() if senders is None else senders
        for sender in names:
            queue = self._queues.get(sender)
            if not queue:
                continue
            for index, message in enumerate(queue):
                if predicate is None or predicate(message):
                    if best is None or message.arrived_at < best[0]:
                        best = (message.arrived_at, sender, index)
                    break
        if best is None:
            return None
        _, sender, index = best
        queue = self._queues[sender]
        message = queue[index]
        del queue[index]
        return message

    def peek(
        self,
        senders: Collection[str] | None = None,
        predicate: Callable[[Message], bool] | None = None,
    ) -> list[Message]:
        """Queued messages (not yet handed over), oldest first, without removing them."""
        names = self._queues.keys() if senders is None else senders
        found = [
            m for s in names for m in self._queues.get(s, ()) if predicate is None or predicate(m)
        ]
        return sorted(found, key=lambda m: m.arrived_at)

    def pending_count(self) -> int:
        """Original messages still awaiting acknowledgements."""
        return len(self._outgoing)
