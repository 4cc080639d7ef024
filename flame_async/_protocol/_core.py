"""The node protocol: every messaging decision of one node, with no I/O, clock or event loop.

Events go in: a webhook body, the outcome of a broker POST, a peer's status, a wait that starts
or ends, a clock tick; each carries the time as an :class:`Instant`. Actions come out
(:meth:`NodeProtocol.take_actions`): POST this, wake those waiters, run that handler, this send
is settled. The shell (:mod:`flame_async.broker`) performs them.

The delivery contract it keeps (docs/concepts/delivery.md):

* **Exactly once**: a message is handed over to the analysis at most once, however often it
  arrives (flame-async senders: by sequence number; flamesdk senders: by message id).
* **Per-sender order**: messages of one flame-async sender are handed over in the order it
  numbered them (see :mod:`._ordering`).
* **An ack is a promise**: a receiver acknowledges a message only when it is handed over, or
  will be within ``gap_timeout`` seconds without any further message. A message that can no
  longer be handed over in order is refused, not acknowledged.
* **Every send ends with a reason**: a send settles when each receiver acknowledged or was given
  up on (deadline, broker 4xx, refusal, cancellation); giving up settles the sequence number at
  once, and a receiver that may hold later messages behind it is told so (a settle notice).
"""

from __future__ import annotations

import dataclasses
import heapq
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final

import orjson
from pydantic import ValidationError

from .._wire import StreamInfo, WireMeta
from ..errors import InvalidArgument, ServiceUnavailable, UnknownNodeError
from ..models import Category, Message, SendReport, _received_message
from ._actions import (
    AcksPending,
    Action,
    AnalysisFinished,
    Fetch,
    Instant,
    PeerEnded,
    Post,
    PostFailure,
    PostKind,
    Rejection,
    RunHandler,
    Settled,
    Wake,
)
from ._mailbox import Mailbox
from ._ordering import Arrival, SenderStream
from ._outbox import Outbox, Outgoing
from ._stored import STORED_KEY, stored_reference
from ._wiretime import format_wire_time, parse_wire_time

__all__ = ["NodeProtocol", "ProtocolSettings", "new_epoch"]

_RESERVED: Final = frozenset(c.value for c in Category)
_SEND: Final = "send"
_GAP: Final = "gap"
_LATE: Final = (
    "it arrived after later messages from this sender had been handed over (its gap was closed"
    " after {gap:g} s), so taking it would break the sender's order"
)


def new_epoch(unix_ns: int) -> str:
    """An epoch for a process that starts at ``unix_ns`` (nanoseconds since 1970).

    Epochs compare as strings in the order the processes started (fixed-width hex of the start
    time, then a random suffix for two starts in the same nanosecond).
    """
    return f"{unix_ns:016x}-{uuid.uuid4().hex[:8]}"


_END_NOTICES: Final = frozenset({Category.ANALYSIS_FINISHED, Category.NODE_STATUS})
"""What a node sends to say the analysis or the node has ended."""
_READY_RESEND: Final = 0.25
"""First resend pause of a ready check (peers may still be subscribing)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """The timing rules of one node's protocol.

    Attributes:
        resend_initial: Seconds after a POST before unacknowledged receivers get the message
            again, until acknowledgements were measured; from then on the pause follows the
            measured round trips (smoothed round trip + 4 times the deviation, at least 0.5 s,
            as TCP does). Each resend of a message doubles its pause, up to ``resend_max``.
        resend_max: Longest pause between resends.
        retry_initial: Seconds before posting again after a POST failed (5xx, no connection);
            doubles up to the resend pause.
        gap_timeout: Longest time a received message is held back waiting for an earlier one
            of the same sender that never arrives.
        epoch: Unique to this process start, and greater than the epoch of any earlier start
            of the same node (:func:`new_epoch` makes one from the wall clock; the core reads no
            clock, so the shell passes it). A random one when None (tests).
        max_backlog: Most messages of one sender that may wait (queued or held back) for the
            analysis to take them; beyond, new ones are refused with 503 until it takes some
            (the sender resends).
        max_backlog_bytes: Most bytes of one sender's queued messages (as they arrived).
        max_remembered_ids: Message ids remembered per flamesdk sender to drop its duplicates
            (the oldest are forgotten first; flame-async senders need none: they number).
    """

    resend_initial: float = 1.0
    resend_max: float = 10.0
    retry_initial: float = 0.05
    gap_timeout: float = 5.0
    epoch: str | None = None
    max_backlog: int = 100_000
    max_backlog_bytes: int = 1 << 30
    max_remembered_ids: int = 100_000


class NodeProtocol:
    """The messaging state machine of one node.

    Args:
        node_id: This node.
        participants: The other nodes of the analysis.
        settings: Timing rules.
    """

    def __init__(
        self,
        node_id: str,
        participants: Iterable[str],
        settings: ProtocolSettings | None = None,
    ) -> None:
        self.node_id = node_id
        self.settings = settings = settings or ProtocolSettings()
        self.epoch = settings.epoch or uuid.uuid4().hex
        self.participants: AbstractSet[str] = (
            participants  # a shared view (the roster without this node): not copied per node
            if isinstance(participants, AbstractSet) and node_id not in participants
            else frozenset(participants) - {node_id}
        )
        self.outbox = Outbox(
            node_id,
            epoch=self.epoch,
            resend_initial=settings.resend_initial,
            resend_max=settings.resend_max,
            retry_initial=settings.retry_initial,
        )
        self.mailbox = Mailbox(self.participants)
        self.handlers: set[str] = set()
        self.finished = False
        self.closed = False
        """Set when the node's analysis has ended: nothing more is taken (or acknowledged)."""
        self.heard_from: set[str] = set()
        self.legacy_senders: set[str] = set()
        """Senders whose messages carry no ``stream`` (flamesdk nodes)."""
        self.ordered_senders: set[str] = set()
        """Senders known to number their messages (flame-async nodes)."""
        self.ordered_peers: set[str] = set()
        """Receivers known to keep per-sender order (their acks say so)."""
        self.stats: Counter[str] = Counter()
        self._streams: dict[str, SenderStream[Message]] = {}
        self._seen: dict[str, dict[str, None]] = {}
        """Per flamesdk sender: the ids taken, oldest first (a bounded window)."""
        self._arrival_sizes: dict[tuple[str, str], int] = {}
        """Bytes of each taken message until it is handed over (queued or held back)."""
        self._acks: dict[str, list[dict[str, Any]]] = {}
        self._single_acks: list[tuple[str, dict[str, Any]]] = []
        self._acks_pending = False
        self._untold: dict[str, int] = {}
        """Per receiver: the highest number given up on that it has not been told about."""
        self._timers: list[tuple[float, int, str, str]] = []
        self._timer_count = 0
        self._actions: list[Action] = []

    def __repr__(self) -> str:
        return f"<NodeProtocol {self.node_id} sending={len(self.outbox.sending)}>"

    # -- output ------------------------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        """The actions decided since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, when: float, kind: str, key: str) -> None:
        self._timer_count += 1
        heapq.heappush(self._timers, (when, self._timer_count, kind, key))

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (monotonic seconds), if ever.

        Timers of sends that have settled (the usual case: acked long before their resend
        or deadline) are dropped here, so nobody wakes up for them.
        """
        timers = self._timers
        while timers and self._stale(*timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def _stale(self, when: float, _: int, kind: str, key: str) -> bool:
        if kind == _SEND:
            out = self.outbox.sending.get(key)
            return out is None or when not in (out.deadline, out.due)
        stream = self._streams.get(key)
        return stream is None or not stream.held

    def tick(self, now: Instant) -> None:
        """Do what is due: resends, send deadlines, gaps that waited long enough."""
        timers = self._timers
        while timers and timers[0][0] <= now.mono:
            _, _, kind, key = heapq.heappop(timers)
            if kind == _SEND:
                out = self.outbox.sending.get(key)
                if out is not None:
                    self._service(out, now)
            else:
                stream = self._streams.get(key)
                if stream is not None:
                    released = stream.expire(now.mono, self.settings.gap_timeout)
                    if released:
                        self.stats["gaps_expired"] += 1
                    self._hand_over_all(released)
                    if (deadline := stream.gap_deadline(self.settings.gap_timeout)) is not None:
                        self._arm(deadline, _GAP, key)

    # -- sending -----------------------------------------------------------------------------

    def resolve_receivers(self, receivers: str | Iterable[str]) -> list[str]:
        """Check receivers (ids of other participants) and drop repeats.

        Raises:
            InvalidArgument: None given, or one is not a string.
            UnknownNodeError: One is this node or not a participant.
        """
        ids = [receivers] if isinstance(receivers, str) else list(receivers)
        if not ids:
            raise InvalidArgument("no receivers given")
        bad_type = [repr(r) for r in ids if not isinstance(r, str)]
        if bad_type:
            raise InvalidArgument(f"receivers must be node ids (str), got {', '.join(bad_type)}")
        if self.node_id in ids:
            raise UnknownNodeError([self.node_id], "a node cannot send to itself")
        unknown = [r for r in ids if r not in self.participants]
        if unknown:
            names = sorted(self.participants)
            known = ", ".join(names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            known = known or "none"
            raise UnknownNodeError(unknown, f"not participants of this analysis (known: {known})")
        return list(dict.fromkeys(ids))

    @staticmethod
    def check_payload(data: Mapping[str, Any] | None) -> dict[str, Any]:
        """The message data as it will be sent.

        Raises:
            InvalidArgument: As :meth:`encode_payload`.
        """
        return NodeProtocol.encode_payload(data)[0]

    @staticmethod
    def encode_payload(data: Mapping[str, Any] | None) -> tuple[dict[str, Any], bytes]:
        """The message data as it will be sent, and its JSON (whose size decides whether the
        message travels inline or through the storage service).

        Raises:
            InvalidArgument: Not a JSON object, uses a reserved key (``meta``,
                ``_flame_async_stored``), or is not JSON-serialisable.
        """
        if data is None:
            return {}, b"{}"
        if not isinstance(data, Mapping):
            raise InvalidArgument(
                f"message data must be a dict (a JSON object), got {type(data).__name__}; "
                "wrap other values, e.g. {'value': x}"
            )
        for reserved in ("meta", STORED_KEY):
            if reserved in data:
                raise InvalidArgument(
                    f"message data must not contain the reserved key {reserved!r}"
                )
        try:
            raw = orjson.dumps(data)
        except TypeError as exc:
            raise InvalidArgument(
                f"message data is not JSON-serialisable ({exc}); send large or typed values with "
                "send_intermediate_result()"
            ) from exc
        return dict(data), raw

    def send(
        self,
        receivers: Sequence[str],
        category: str,
        data: Mapping[str, Any],
        *,
        now: Instant,
        timeout: float,
        reply_to: str | None = None,
        error: str | None = None,
    ) -> str:
        """Start sending a new message (receivers already resolved); returns its id.

        Emits the first :class:`Post`; the send ends with a :class:`Settled` action.

        Raises:
            InvalidArgument: The category is empty or not a string.
        """
        if not isinstance(category, str) or not category:
            raise InvalidArgument(f"category must be a non-empty str, got {category!r}")
        out = self.outbox.create(
            receivers,
            category,
            data,
            now=now,
            timeout=timeout,
            reply_to=reply_to,
            error=error,
        )
        self.stats["sent"] += 1
        if category == Category.READY_CHECK:
            # a ready check looks for peers still starting (a copy that reached a node before
            # it subscribed is lost), not for a congested path: ask again soon
            out.resend_pause = min(out.resend_pause, _READY_RESEND)
        if len(out.targets) == 1:
            self._piggyback_acks(out)
        self._arm(out.deadline, _SEND, out.id)
        self._post_message(out, now)
        return out.id

    def _piggyback_acks(self, out: Outgoing) -> None:
        """Let a message to one flame-async peer carry the acks queued for that peer: an
        answer acknowledges what it answers, and no separate ack POST is made for it."""
        receiver = out.targets[0]
        acks = self._acks.get(receiver)
        if not acks or receiver not in self.ordered_senders:
            return
        del self._acks[receiver]
        out.meta["acked"] = [ack["meta"]["id"] for ack in acks]
        self.stats["acks_piggybacked"] += len(acks)

    def _post_message(self, out: Outgoing, now: Instant) -> None:
        if out.first_post is None:
            out.first_post = now.mono
        receivers = list(out.pending)
        body = self.outbox.body(out, receivers)
        for receiver in receivers:
            untold = self._untold.get(receiver)
            if untold is not None and self.outbox.floor(receiver) > untold:
                del self._untold[receiver]  # this message's floor tells it
        post_id = self.outbox.post_id()
        out.in_flight = post_id
        out.due = None
        self.outbox.by_post[post_id] = out
        self._emit(Post(post_id, PostKind.MESSAGE, tuple(receivers), body, out.id))

    def _service(self, out: Outgoing, now: Instant) -> None:
        if now.mono >= out.deadline:
            if out.posted:
                reason = f"no acknowledgement within {out.timeout:g} s"
            elif out.last_failure:
                reason = f"the broker could not be reached within {out.timeout:g} s: "
                reason += out.last_failure
            else:
                reason = f"not posted to the broker within {out.timeout:g} s"
            self._give_up(out, list(out.pending), reason, now)
        elif out.in_flight is None and out.due is not None and out.due <= now.mono:
            self.stats["resent"] += 1
            if not out.retrying:  # no acknowledgement in time (not a failed POST): back off
                self.outbox.rtt.timed_out()
            out.resent = True
            self._post_message(out, now)

    def post_done(self, post_id: int, now: Instant) -> None:
        """The broker accepted a message POST (2xx): resend later if acks do not come."""
        out = self.outbox.by_post.pop(post_id, None)
        if out is None or out.in_flight != post_id:
            return
        out.in_flight = None
        out.posted = True
        out.retrying = False
        out.retry_pause = self.outbox.retry_initial
        out.due = now.mono + out.resend_pause
        out.resend_pause = min(out.resend_pause * 2, self.outbox.resend_max)
        self._arm(out.due, _SEND, out.id)

    def post_failed(self, post_id: int, failure: PostFailure, now: Instant) -> None:
        """A message POST did not get a 2xx: retry soon, or give up if the broker refused it."""
        out = self.outbox.by_post.pop(post_id, None)
        if out is None or out.in_flight != post_id:
            return
        out.in_flight = None
        out.retrying = True
        out.last_failure = failure.reason
        if not failure.retryable:
            self._give_up(out, list(out.pending), f"the broker refused it: {failure.reason}", now)
            return
        out.due = now.mono + out.retry_pause
        out.retry_pause = min(out.retry_pause * 2, out.resend_pause)
        self._arm(out.due, _SEND, out.id)

    def abandon(self, message_id: str, now: Instant) -> None:
        """The caller stopped waiting (cancelled): give up on whoever has not acknowledged."""
        out = self.outbox.sending.get(message_id)
        if out is not None:
            self._give_up(out, list(out.pending), "the send was cancelled", now)

    def _give_up(self, out: Outgoing, receivers: Iterable[str], reason: str, now: Instant) -> None:
        for receiver in receivers:
            if self.outbox.settle_receiver(out, receiver, reason):
                self.stats["given_up"] += 1
                seq = out.seq.get(receiver)
                if seq is not None:
                    self._untold[receiver] = max(seq, self._untold.get(receiver, 0))
                    self._tell_floor(receiver, now)
        self._settled_if_done(out)

    def _tell_floor(self, receiver: str, now: Instant) -> None:
        """Send a settle notice if ``receiver`` may hold later messages behind a number this
        node gave up on and nothing else will tell it."""
        untold = self._untold.get(receiver)
        if untold is None or self.outbox.floor(receiver) <= untold:
            return
        del self._untold[receiver]
        if receiver in self.ordered_peers and self.outbox.later_numbered(receiver, untold):
            body = self.outbox.notice_body(receiver, now=now, category=_SETTLE)
            self.stats["notices"] += 1
            self._emit(Post(self.outbox.post_id(), PostKind.NOTICE, (receiver,), body))

    def _settled_if_done(self, out: Outgoing) -> None:
        if out.pending:
            return
        self.outbox.forget(out)
        report = SendReport(
            message_id=out.id,
            acked=tuple(t for t in out.targets if t not in out.reasons),
            missing=tuple(t for t in out.targets if t in out.reasons),
            reasons=dict(out.reasons),
        )
        self._emit(Settled(report, never_posted=not out.posted))

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, body: bytes, now: Instant) -> Rejection | None:
        """Take one webhook body; returns why it is refused, or None when it was taken.

        A refused body changes nothing (the broker may deliver it again). A taken one is an
        original message (acknowledged, and handed over when its turn comes) or an
        acknowledgement of one of this node's messages.
        """
        rejection: Rejection | None
        if self.closed:
            rejection = Rejection(503, "closed", "the node's analysis has ended; nothing is taken")
        else:
            rejection = self._take_body(body, now)
        if rejection is not None:
            self.stats["rejected"] += 1
        return rejection

    def _take_body(self, body: bytes, now: Instant) -> Rejection | None:
        parsed = self._parse(body)
        if isinstance(parsed, Rejection):
            return parsed
        meta, data = parsed
        if meta.akn_id is not None:
            self._on_ack(meta, now)
            return None
        sender = meta.sender
        if (refused := self._check_sender(sender)) is not None:
            return refused
        self.heard_from.add(sender)
        if meta.acked:  # acks riding on an answer (flame-async peers only)
            self.stats["acks"] += 1
            self._acknowledged(sender, meta.acked, None, now)
        stream = meta.stream
        if stream is not None:
            self.ordered_senders.add(sender)
            self.legacy_senders.discard(sender)
        elif sender not in self.ordered_senders and sender not in self.ordered_peers:
            # a node known to run flame-async (it numbered a message or its ack said so) is
            # never taken for flamesdk by a message without numbers: that one is forged
            self.legacy_senders.add(sender)
        if meta.category == _SETTLE:
            if stream is not None:
                self._apply_notice(sender, stream)
            return None
        seq = stream.seq_for(self.node_id) if stream is not None else None
        if stream is None or seq is None:
            return self._receive_unordered(meta, data, len(body), now)
        return self._receive_ordered(meta, data, stream, seq, size=len(body), now=now)

    def _backlog_full(self, meta: WireMeta, size: int) -> Rejection | None:
        """Refuse a new message while its sender's backlog is at its bound (503: the sender
        resends later). Runtime categories are never queued and always pass."""
        if meta.category in _RESERVED:
            return None
        sender = meta.sender
        count, queued = self.mailbox.backlog(sender)
        stream = self._streams.get(sender)
        count += len(stream.held) if stream is not None else 0
        settings = self.settings
        if count < settings.max_backlog and queued + size <= settings.max_backlog_bytes:
            return None
        self.stats["backlog_full"] += 1
        return Rejection(
            503,
            "backlog full",
            f"{count} messages ({queued} bytes) from {sender} wait for this node's analysis to "
            "take them; try again later",
        )

    def _check_sender(self, sender: str) -> Rejection | None:
        if sender == self.node_id:
            return Rejection(
                422,
                "from itself",
                f"meta.sender is this node ({sender}); a node cannot message itself",
            )
        if sender not in self.participants:
            return Rejection(
                422,
                "unknown sender",
                f"meta.sender {sender!r} is not a participant of this analysis",
            )
        return None

    def _parse(self, body: bytes) -> tuple[WireMeta, dict[str, Any]] | Rejection:  # noqa: PLR0911 - one answer per check, in reading order
        if not body:
            return Rejection(400, "empty body", "the body is empty; a JSON object is required")
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return Rejection(400, "invalid json", f"the body is not valid JSON: {exc}")
        if not isinstance(value, dict):
            return Rejection(
                400,
                "not an object",
                f"the body must be a JSON object, got {type(value).__name__}",
            )
        meta = value.pop("meta", None)
        if meta is None:
            return Rejection(400, "missing meta", "the message has no 'meta' object")
        if not isinstance(meta, dict):
            return Rejection(
                400, "meta not an object", f"'meta' must be an object, got {type(meta).__name__}"
            )
        try:
            parsed = WireMeta.model_validate(meta)
        except ValidationError as exc:
            problems = "; ".join(
                f"meta.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return Rejection(422, "invalid meta", f"invalid message meta: {problems}")
        stream = parsed.stream
        if stream is not None and any(
            n < 1 for n in (*stream.seq.values(), *stream.floor.values())
        ):
            return Rejection(422, "invalid meta", "invalid message meta: stream numbers start at 1")
        return parsed, value

    def _message(self, meta: WireMeta, data: dict[str, Any], now: Instant) -> Message:
        return _received_message(  # every field is already validated (WireMeta)
            id=meta.id,
            sender=meta.sender,
            category=meta.category,
            data=data,
            message_number=meta.number,
            time=parse_wire_time(meta.created_at, now.wall),
            arrived_at=now.wall,
            reply_to=meta.reply_to,
            error=meta.error,
        )

    def _receive_unordered(
        self, meta: WireMeta, data: dict[str, Any], size: int, now: Instant
    ) -> Rejection | None:
        message = self._message(meta, data, now)  # built first: nothing is recorded on failure
        seen = self._seen.setdefault(meta.sender, {})
        if meta.id in seen:
            self.stats["duplicates"] += 1
            self._queue_ack(meta, now, ordered=False)
            return None
        if (full := self._backlog_full(meta, size)) is not None:
            return full
        seen[meta.id] = None
        if len(seen) > self.settings.max_remembered_ids:
            del seen[next(iter(seen))]  # the oldest: its duplicates are long past
        self.stats["received"] += 1
        self._queue_ack(meta, now, ordered=False)
        self._arrival_sizes[meta.sender, meta.id] = size
        self._hand_over(message)
        return None

    def _receive_ordered(
        self,
        meta: WireMeta,
        data: dict[str, Any],
        stream: StreamInfo,
        seq: int,
        *,
        size: int,
        now: Instant,
    ) -> Rejection | None:
        message = self._message(meta, data, now)  # built first: nothing is recorded on failure
        sender = meta.sender
        floor = stream.floor_for(self.node_id) or seq
        state = self._streams.get(sender)
        released: list[Message] = []
        fresh = state is None or state.epoch != stream.epoch
        if fresh and state is not None and stream.epoch < state.epoch:  # from a dead run
            self.stats["refused"] += 1
            self._queue_refusal(meta, now, "it comes from an earlier run of its sender")
            return None
        new = fresh or state is None or state.would_accept(seq) == Arrival.NEW
        # the next number a sender's held messages wait for is always taken: refusing it
        # would hold them (and the sender) until the gap times out
        next_up = not fresh and state is not None and bool(state.held) and seq == state.expected
        if new and not next_up and (full := self._backlog_full(meta, size)) is not None:
            return full
        if state is None or fresh:
            if state is not None:  # the sender restarted: what it held back goes as it is
                released.extend(state.release_all())
            # from 1, not from the floor: arrive() records the numbers below the floor (settled
            # before any reached this node) as skipped, so a late one is refused, not acked
            state = self._streams[sender] = SenderStream(stream.epoch, expected=1)
        had_held = bool(state.held)
        decision, now_released = state.arrive(seq, floor, message, now.mono)
        released.extend(now_released)
        if decision == Arrival.SKIPPED:
            self.stats["refused"] += 1
            self._queue_refusal(meta, now, _LATE.format(gap=self.settings.gap_timeout))
        else:
            if decision == Arrival.DUPLICATE:
                self.stats["duplicates"] += 1
            else:
                self.stats["received"] += 1
                self._arrival_sizes[sender, meta.id] = size
            self._queue_ack(meta, now, ordered=True)
        if state.held and not had_held:
            self._arm(now.mono + self.settings.gap_timeout, _GAP, sender)
        self._hand_over_all(released)
        return None

    def _apply_notice(self, sender: str, stream: StreamInfo) -> None:
        state = self._streams.get(sender)
        floor = stream.floor_for(self.node_id)
        if state is None or floor is None or state.epoch != stream.epoch:
            return
        self.stats["notices_received"] += 1
        self._hand_over_all(state.advance(floor))

    def _on_ack(self, meta: WireMeta, now: Instant) -> None:
        if meta.sender != self.node_id:
            self.stats["foreign_acks"] += 1
            return  # an ack of someone else's message: nothing of ours
        node = meta.akn_id or ""
        if node not in self.participants:
            self.stats["foreign_acks"] += 1
            return  # no participant of this analysis: nothing it says counts
        self.heard_from.add(node)
        if meta.ordered:
            self.ordered_peers.add(node)
            self.legacy_senders.discard(node)
        self.stats["acks"] += 1
        refusal = None if meta.refused is None else f"{node} refused it: {meta.refused}"
        self._acknowledged(node, (meta.id, *(meta.acks or ())), refusal, now)

    def _acknowledged(
        self, node: str, message_ids: Iterable[str], refusal: str | None, now: Instant
    ) -> None:
        """``node`` acknowledged (or, with ``refusal``, refused the first of) ``message_ids``
        of this node's messages; ids of other or settled messages are ignored."""
        for message_id in message_ids:
            out = self.outbox.sending.get(message_id)
            if out is None:
                continue
            if self.outbox.settle_receiver(out, node, refusal):
                if not out.resent and out.first_post is not None:
                    self.outbox.rtt.sample(now.mono - out.first_post)
                if refusal is not None:
                    seq = out.seq.get(node)
                    if seq is not None:
                        self._untold[node] = max(seq, self._untold.get(node, 0))
                self._tell_floor(node, now)
                self._settled_if_done(out)
            refusal = None  # a refusal is never coalesced: it covers ``meta.id`` only

    # -- acknowledgements --------------------------------------------------------------------

    def _stamped(self, meta: WireMeta, now: Instant) -> dict[str, Any]:
        stamped: dict[str, Any] = {
            **(meta.model_extra or {}),
            "type": "incoming",
            "category": meta.category,
            "id": meta.id,
            "akn_id": self.node_id,
            "status": meta.status,
            "sender": meta.sender,
            "created_at": meta.created_at,
            "arrived_at": format_wire_time(now.wall),
            "number": meta.number,
            "ordered": True,
        }
        if meta.reply_to is not None:
            stamped["reply_to"] = meta.reply_to
        return stamped

    def _queue_ack(self, meta: WireMeta, now: Instant, *, ordered: bool) -> None:
        ack = {"meta": self._stamped(meta, now)}
        if ordered:  # a flame-async sender: acks that pile up share one POST
            self._acks.setdefault(meta.sender, []).append(ack)
        else:  # flamesdk recognises one ack per message only
            self._single_acks.append((meta.sender, ack))
        self._acks_due()

    def _queue_refusal(self, meta: WireMeta, now: Instant, reason: str) -> None:
        stamped = self._stamped(meta, now)
        stamped["refused"] = reason
        self._single_acks.append((meta.sender, {"meta": stamped}))
        self._acks_due()

    def _acks_due(self) -> None:
        if not self._acks_pending:
            self._acks_pending = True
            self._emit(AcksPending())

    def flush_acks(self) -> None:
        """Emit the POSTs of every queued acknowledgement (coalesced per flame-async sender)."""
        self._acks_pending = False
        for sender, acks in self._acks.items():
            first = acks[0]
            if len(acks) > 1:  # the first stays flamesdk-shaped; the others ride in meta.acks
                first = {"meta": {**first["meta"], "acks": [a["meta"]["id"] for a in acks[1:]]}}
            self._emit(Post(self.outbox.post_id(), PostKind.ACK, (sender,), first))
        for sender, ack in self._single_acks:
            self._emit(Post(self.outbox.post_id(), PostKind.ACK, (sender,), ack))
        self._acks.clear()
        self._single_acks.clear()

    # -- handing over ------------------------------------------------------------------------

    def _hand_over_all(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self._hand_over(message)

    def _hand_over(self, message: Message) -> None:
        self.stats["handed_over"] += 1
        size = self._arrival_sizes.pop((message.sender, message.id), 0)
        category = message.category
        if category == Category.READY_CHECK:
            return
        if category == Category.ANALYSIS_FINISHED:
            self.finished = True
            self._emit(AnalysisFinished(message.sender))
            self._close_peer(message.sender, "executed", "it called analysis_finished()")
            return
        if category == Category.NODE_STATUS:
            status = str(message.data.get("status", "failed"))
            self._close_peer(message.sender, status, str(message.data.get("reason", "")))
            return
        if message.sender in self.ordered_senders and (
            stored := stored_reference(message.data, self.node_id)
        ):
            # a large message: its payload waits in storage; it is seen once that is read
            self.mailbox.enqueue(message, size, pending=True)
            self._emit(Fetch(message, *stored))
            return
        self._dispatch(message, size)

    def _dispatch(self, message: Message, size: int) -> None:
        if message.category in self.handlers and message.reply_to is None:
            self._emit(RunHandler(message))
            return
        if waiters := self.mailbox.enqueue(message, size):
            self._emit(Wake(waiters))

    def fetched(
        self,
        message: Message,
        data: dict[str, Any] | None = None,
        *,
        size: int = 0,
        error: Exception | None = None,
    ) -> None:
        """The payload of a large message (see :class:`Fetch`) was read: ``data`` of ``size``
        bytes, or ``error`` when it cannot be. The message is then handed over with its data,
        or its sender's next take raises ``error``."""
        if error is not None:
            self.stats["fetch_failed"] += 1
            if waiters := self.mailbox.fail(message, error):
                self._emit(Wake(waiters))
            return
        full = message.model_copy(update={"data": data or {}})
        self.stats["fetched"] += 1
        if message.category in self.handlers and message.reply_to is None:
            self.mailbox.discard(message)
            self._emit(RunHandler(full))
        elif waiters := self.mailbox.resolve(full, size):
            self._emit(Wake(waiters))

    # -- peers -------------------------------------------------------------------------------

    def peer_ended(self, node_id: str, status: str, reason: str = "") -> None:
        """A peer ended with ``status`` (waits on it end once its queue is empty)."""
        self._close_peer(node_id, status, reason)

    def _close_peer(self, node_id: str, status: str, reason: str) -> None:
        failure = self.mailbox.close_peer(node_id, status, reason)
        if failure is not None:
            self._emit(PeerEnded(failure))
            if waiters := self.mailbox.waiters_for(node_id, None):
                self._emit(Wake(waiters))
            # an end notice (analysis_finished, a node status) to a node that has ended has
            # done its work: it is settled as acknowledged instead of resent to a node that
            # refuses everything (an analysis_finished whose ack was lost waited its 30 s).
            # Other messages keep waiting: an ended node may have taken them, its ack lost.
            for out in [
                o
                for o in self.outbox.sending.values()
                if node_id in o.pending and o.category in _END_NOTICES
            ]:
                if self.outbox.settle_receiver(out, node_id, None):
                    self._settled_if_done(out)

    def all_ended(self, status: str, reason: str) -> None:
        """This node adopted a terminal status: every wait ends."""
        failure = self.mailbox.close_all(status, reason)
        if failure is not None:
            self._emit(PeerEnded(failure))
            if waiters := self.mailbox.waiters_for(None, None):
                self._emit(Wake(waiters))

    def services_unreachable(self, error: ServiceUnavailable | None, now: Instant) -> None:
        """The node's services (its gateway) cannot be reached (``error``), or can be again
        (None).

        While unreachable, waits with nothing queued for them end with ``error``, and every
        send under way is given up on (each receiver's reason names it); messages already
        queued are still handed over.
        """
        self.mailbox.unreachable = error
        if error is None:
            return
        reason = f"the node's services could not be reached: {error}"
        for out in list(self.outbox.sending.values()):
            self._give_up(out, list(out.pending), reason, now)
        if waiters := self.mailbox.waiters_for(None, None):
            self._emit(Wake(waiters))

    # -- waits -------------------------------------------------------------------------------

    def add_waiter(self, senders: frozenset[str] | None, category: str | None) -> int:
        """Register a wait; :class:`Wake` actions name it when there is news for it."""
        return self.mailbox.add_waiter(senders, category)

    def remove_waiter(self, waiter_id: int) -> set[str] | None:
        """The wait ended (found, timed out or cancelled); returns the senders it had news
        from (None: about every sender)."""
        return self.mailbox.remove_waiter(waiter_id)

    def take(
        self,
        senders: Collection[str] | None,
        predicate: Callable[[Message], bool] | None = None,
    ) -> Message | None:
        """Hand the first matching queued message to a caller (see :class:`Mailbox`)."""
        return self.mailbox.take(senders, predicate)

    def take_ranked(
        self,
        senders: Collection[str] | None,
        predicate: Callable[[Message], bool] | None = None,
    ) -> tuple[int, Message] | None:
        """Like :meth:`take`, with the rank :meth:`requeue` needs to put it back."""
        return self.mailbox.take_ranked(senders, predicate)

    def requeue(self, message: Message, rank: int) -> None:
        """Put a message taken with :meth:`take_ranked` back (its wait was abandoned)."""
        self.mailbox.requeue(message, rank)

    def reply_match(self, request_id: str) -> Callable[[Message], bool]:
        """What counts as a reply to ``request_id``: a reply naming it, or (from a flamesdk
        node, which cannot name it) any message of the category."""
        legacy, ordered = self.legacy_senders, self.ordered_peers
        return lambda m: (
            m.reply_to == request_id
            or (m.reply_to is None and m.sender in legacy and m.sender not in ordered)
        )

    # -- handlers ----------------------------------------------------------------------------

    def add_handler(self, category: str) -> None:
        """Requests of ``category`` go to a handler from now on (queued ones too).

        Raises:
            InvalidArgument: The category is reserved or already handled.
        """
        if category in _RESERVED:
            raise InvalidArgument(f"category {category!r} is reserved by the runtime")
        if category in self.handlers:
            raise InvalidArgument(f"category {category!r} already has a handler")
        self.handlers.add(category)
        while m := self.mailbox.take(None, lambda m: m.category == category and m.reply_to is None):
            self._emit(RunHandler(m))

    # -- diagnostics -------------------------------------------------------------------------

    def waiting_for(self) -> list[str]:
        """What this node waits for right now, one line each."""
        waits = self.mailbox.describe_waits()
        waits.extend(
            f"acknowledgement of its {out.category!r} message from {', '.join(sorted(out.pending))}"
            for out in self.outbox.sending.values()
            if out.pending
        )
        return sorted(waits)

    def held_count(self) -> int:
        """Messages received but held back for an earlier one."""
        return sum(len(s.held) for s in self._streams.values())


_SETTLE: Final = Category.SETTLE.value
