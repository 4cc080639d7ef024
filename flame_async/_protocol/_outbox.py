"""The sending side: numbering, floors, resends, deadlines and how a send ends.

A send is *settled* when every receiver has acknowledged or been given up on. A receiver is
given up on when the deadline passes, when the broker refuses the message (a 4xx: sending it
again cannot help), when the receiver refuses it, or when the caller cancels; each has a reason
that ends up in :class:`~flame_async.models.SendReport`. Giving up settles the receiver's
sequence number at once: later messages to it carry a floor above it, so the receiver does not
wait for it.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .._wire import compact_numbers
from ._actions import Instant
from ._wiretime import format_wire_time

__all__ = ["Outbox", "Outgoing"]

# Message ids need to be unique, not secret: one generator seeded from os.urandom serves every
# node of the process (its 2.5 KB state is not worth a copy per simulated node), with no
# system call per message. It is the SDK's own, so an analysis that seeds ``random`` cannot
# make a restarted node repeat its ids, and a forked node reseeds it.
_IDS: Final = random.Random()  # noqa: S311
os.register_at_fork(after_in_child=_IDS.seed)


@dataclasses.dataclass(slots=True, eq=False)
class Outgoing:
    """An original message this node is sending, until every receiver is settled."""

    id: str
    category: str
    data: dict[str, Any]
    meta: dict[str, Any]
    seq: dict[str, int]
    targets: tuple[str, ...]
    pending: dict[str, None]
    timeout: float
    deadline: float
    acked: list[str] = dataclasses.field(default_factory=list)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    in_flight: int | None = None
    """The POST of this message now under way, if any."""
    due: float | None = None
    """When to post again (None while a POST is in flight)."""
    resend_pause: float = 0.0
    retry_pause: float = 0.0
    first_post: float | None = None
    """When its first POST started (monotonic): acknowledgements measure round trips from it."""
    retrying: bool = False
    """The last POST failed: the next one is a retry, not a resend after a timeout."""
    resent: bool = False
    """Posted again after a timeout: its acknowledgements are no round-trip samples (Karn)."""
    posted: bool = False
    """A POST of it reached the broker (2xx) at least once."""
    last_failure: str = ""


MIN_RESEND: Final = 0.5
"""Shortest pause before a resend, however fast acknowledgements came so far."""


class RoundTrips:
    """How long acknowledgements take, smoothed as TCP does (RFC 6298), and the resend
    timeout that follows: smoothed round trip + 4 times its mean deviation, within
    ``[minimum, maximum]``; ``initial`` until the first sample. A timeout doubles the value
    until the next sample (exponential backoff); samples come only from messages that were
    posted once (Karn's rule), so an ack of a resent message never shrinks the timeout.

    Args:
        initial: Timeout before anything was measured.
        minimum: Shortest timeout.
        maximum: Longest timeout.
    """

    __slots__ = ("_backoff", "initial", "maximum", "minimum", "samples", "smoothed", "variation")

    def __init__(self, *, initial: float, minimum: float, maximum: float) -> None:
        self.initial = initial
        self.minimum = minimum
        self.maximum = maximum
        self.smoothed: float | None = None
        self.variation = 0.0
        self.samples = 0
        self._backoff = 1.0

    def sample(self, rtt: float) -> None:
        """One measured round trip (seconds from the first POST to an acknowledgement)."""
        rtt = max(rtt, 0.0)
        self.samples += 1
        self._backoff = 1.0
        if self.smoothed is None:
            self.smoothed, self.variation = rtt, rtt / 2
            return
        self.variation += (abs(self.smoothed - rtt) - self.variation) / 4
        self.smoothed += (rtt - self.smoothed) / 8

    def timed_out(self) -> None:
        """A resend was due: back off until the next sample."""
        self._backoff = min(self._backoff * 2, 64.0)

    @property
    def timeout(self) -> float:
        """Seconds to wait for acknowledgements after a POST before resending."""
        if self.smoothed is None:
            base = self.initial
        else:
            base = max(self.minimum, self.smoothed + max(4 * self.variation, 0.01))
        return min(base * self._backoff, self.maximum)


class Outbox:
    """Numbering and the state of this node's unsettled messages.

    Args:
        node_id: This node.
        epoch: Unique to this process start.
        resend_initial: Seconds after a POST before the first resend to unacknowledged
            receivers; doubles up to ``resend_max``.
        resend_max: Longest pause between resends.
        retry_initial: Seconds before posting again after a POST failed (the broker was not
            reached or answered 5xx); doubles up to the resend pause.
    """

    def __init__(
        self,
        node_id: str,
        *,
        epoch: str,
        resend_initial: float,
        resend_max: float,
        retry_initial: float,
    ) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.resend_initial = resend_initial
        self.resend_max = resend_max
        self.rtt = RoundTrips(
            initial=resend_initial, minimum=min(MIN_RESEND, resend_initial), maximum=resend_max
        )
        self.retry_initial = retry_initial
        self.counter = 0
        self.next_seq: dict[str, int] = {}
        self.open_seq: dict[str, set[int]] = {}
        self.sending: dict[str, Outgoing] = {}
        self.by_post: dict[int, Outgoing] = {}
        self._next_post = 0

    # -- numbering ---------------------------------------------------------------------------

    def new_id(self, tag: str = "") -> tuple[str, int]:
        """A fresh message id and its number (flamesdk's ``{node[:4]}-{n}-{random}`` shape)."""
        number = self.counter
        self.counter += 1
        return f"{self.node_id[:4]}-{tag}{number}-{_IDS.getrandbits(48):012x}", number

    def _original_meta(
        self, message_id: str, number: int, category: str, now: Instant
    ) -> dict[str, Any]:
        """flamesdk's ``meta`` of an original message (PROTOCOL §2.7)."""
        return {
            "type": "outgoing",
            "category": category,
            "id": message_id,
            "akn_id": None,
            "status": "unread",
            "sender": self.node_id,
            "created_at": format_wire_time(now.wall),
            "arrived_at": None,
            "number": number,
        }

    def post_id(self) -> int:
        """A fresh id for one broker POST."""
        self._next_post += 1
        return self._next_post

    def create(
        self,
        receivers: Sequence[str],
        category: str,
        data: Mapping[str, Any],
        *,
        now: Instant,
        timeout: float,
        reply_to: str | None,
        error: str | None,
    ) -> Outgoing:
        """Number a new original message to ``receivers`` and start tracking it."""
        message_id, number = self.new_id()
        targets = tuple(dict.fromkeys(receivers))
        seq: dict[str, int] = {}
        for receiver in targets:
            n = self.next_seq.get(receiver, 1)
            self.next_seq[receiver] = n + 1
            self.open_seq.setdefault(receiver, set()).add(n)
            seq[receiver] = n
        meta = self._original_meta(message_id, number, category, now)
        if reply_to is not None:
            meta["reply_to"] = reply_to
        if error is not None:
            meta["error"] = error
        out = Outgoing(
            message_id,
            category,
            dict(data),
            meta,
            seq,
            targets,
            dict.fromkeys(targets),
            timeout,
            now.mono + timeout,
            resend_pause=self.rtt.timeout,
            retry_pause=self.retry_initial,
        )
        self.sending[message_id] = out
        return out

    # -- floors ------------------------------------------------------------------------------

    def floor(self, receiver: str) -> int:
        """The lowest number to ``receiver`` not settled yet (everything below is)."""
        open_seq = self.open_seq.get(receiver)
        if open_seq:
            return min(open_seq)
        return self.next_seq.get(receiver, 1)

    def body(self, out: Outgoing, receivers: Sequence[str]) -> dict[str, Any]:
        """The ``message`` object to post to ``receivers`` now (floors are current)."""
        seq = out.seq
        stream = {
            "epoch": self.epoch,
            "seq": compact_numbers({r: seq[r] for r in receivers}),
            "floor": compact_numbers({r: self.floor(r) for r in receivers}),
        }
        return {**out.data, "meta": {**out.meta, "stream": stream}}

    def notice_body(self, receiver: str, *, now: Instant, category: str) -> dict[str, Any]:
        """A settle notice: tells ``receiver`` the current floor, hands nothing over."""
        message_id, number = self.new_id("s")
        meta = self._original_meta(message_id, number, category, now)
        meta["stream"] = {"epoch": self.epoch, "seq": {}, "floor": {receiver: self.floor(receiver)}}
        return {"meta": meta}

    def later_numbered(self, receiver: str, seq: int) -> bool:
        """True when a message to ``receiver`` was numbered after ``seq``."""
        return self.next_seq.get(receiver, 1) - 1 > seq

    # -- settling ----------------------------------------------------------------------------

    def settle_receiver(self, out: Outgoing, receiver: str, reason: str | None) -> bool:
        """Settle one receiver: acknowledged (``reason`` None) or given up on.

        Returns:
            True when that settled the receiver (False if it already was).
        """
        if receiver not in out.pending:
            return False
        del out.pending[receiver]
        if reason is None:
            out.acked.append(receiver)
        else:
            out.reasons[receiver] = reason
        n = out.seq.get(receiver)
        if n is not None:
            open_seq = self.open_seq.get(receiver)
            if open_seq is not None:
                open_seq.discard(n)
        return True

    def forget(self, out: Outgoing) -> None:
        """Stop tracking a settled message."""
        self.sending.pop(out.id, None)
        if out.in_flight is not None:
            self.by_post.pop(out.in_flight, None)
            out.in_flight = None
