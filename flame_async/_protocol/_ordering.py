"""Per-sender order on the receiving side: what to hand over now, what to hold, what to refuse.

A flame-async sender numbers its messages to each receiver (``seq``, from 1) and tells, with
every message, the lowest number it has not settled yet (``floor``): everything below was either
acknowledged or given up. The receiver hands messages over in ``seq`` order and holds a message
while an earlier number is missing. A gap closes when

* the missing message arrives,
* the sender's floor passes it (the sender settled it: with the next message, or a settle
  notice), or
* it has been open for ``gap_timeout`` seconds (the sender went quiet): the held messages are
  handed over and the missing numbers are *skipped*.

A skipped message that still arrives later is refused (never handed over out of order, never
acknowledged): its sender reports the receiver as missing, with the reason. Everything a
receiver acknowledges is therefore handed over, at the latest ``gap_timeout`` seconds after it
arrived, without any further message.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Final, Generic, TypeVar

__all__ = ["Arrival", "SenderStream"]

T = TypeVar("T")

_MAX_SKIPPED_RANGES: Final = 1024
"""Skipped ranges remembered per sender (gaps are rare; the oldest are forgotten first)."""


class Arrival:
    """What :meth:`SenderStream.arrive` decided about one message."""

    NEW = "new"
    """Taken: handed over now or held until its turn (acknowledge it)."""
    DUPLICATE = "duplicate"
    """Seen before (acknowledge it again, do not hand it over again)."""
    SKIPPED = "skipped"
    """Its number was skipped when a gap closed without it: refuse it."""


@dataclasses.dataclass(slots=True)
class SenderStream(Generic[T]):
    """The order state of one sender's messages to this node (one sender epoch).

    Args:
        epoch: The sender's epoch (changes when the sender restarts).
        expected: The next number to hand over.
    """

    epoch: str
    expected: int
    held: dict[int, tuple[T, float]] = dataclasses.field(default_factory=dict)
    """Messages waiting for an earlier one: ``{seq: (message, arrival time)}``."""
    skipped: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    """Sorted, disjoint ``[low, high)`` ranges of numbers given up on."""

    def _was_skipped(self, seq: int) -> bool:
        index = bisect.bisect_right(self.skipped, (seq, float("inf"))) - 1
        return index >= 0 and self.skipped[index][0] <= seq < self.skipped[index][1]

    def _skip(self, low: int, high: int) -> None:
        """Record ``[low, high)`` minus the numbers already handed over (none are: all >=
        ``expected``) as skipped, merging with the last range when adjacent."""
        if low >= high:
            return
        if self.skipped and self.skipped[-1][1] == low:
            self.skipped[-1] = (self.skipped[-1][0], high)
        else:
            self.skipped.append((low, high))
            if len(self.skipped) > _MAX_SKIPPED_RANGES:
                del self.skipped[0]

    def arrive(self, seq: int, floor: int, item: T, now: float) -> tuple[str, list[T]]:
        """Take one message numbered ``seq``; the sender's floor came with it.

        Returns:
            The decision (:class:`Arrival`) and the messages to hand over now, in order.
        """
        released = self.advance(min(floor, seq))
        if seq < self.expected:
            decision = Arrival.SKIPPED if self._was_skipped(seq) else Arrival.DUPLICATE
            return decision, released
        if seq in self.held:
            return Arrival.DUPLICATE, released
        self.held[seq] = (item, now)
        released.extend(self._release_run())
        return Arrival.NEW, released

    def would_accept(self, seq: int) -> str:
        """What :meth:`arrive` would decide for ``seq`` (no change)."""
        if seq < self.expected:
            return Arrival.SKIPPED if self._was_skipped(seq) else Arrival.DUPLICATE
        return Arrival.DUPLICATE if seq in self.held else Arrival.NEW

    def advance(self, floor: int) -> list[T]:
        """The sender settled every number below ``floor``: stop waiting for them.

        Returns:
            Messages that can be handed over now, in order.
        """
        if floor <= self.expected:
            return []
        released: list[T] = []
        start = self.expected
        for seq in sorted(s for s in self.held if s < floor):
            self._skip(start, seq)
            released.append(self.held.pop(seq)[0])
            start = seq + 1
        self._skip(start, floor)
        self.expected = floor
        released.extend(self._release_run())
        return released

    def _release_run(self) -> list[T]:
        released: list[T] = []
        while (entry := self.held.pop(self.expected, None)) is not None:
            released.append(entry[0])
            self.expected += 1
        return released

    def gap_deadline(self, gap_timeout: float) -> float | None:
        """When the oldest held message has waited ``gap_timeout`` seconds (None if none)."""
        if not self.held:
            return None
        return min(at for _, at in self.held.values()) + gap_timeout

    def expire(self, now: float, gap_timeout: float) -> list[T]:
        """Hand over every held message that has waited ``gap_timeout`` seconds, skipping
        the missing numbers before it (and anything after it that can go now)."""
        overdue = [seq for seq, (_, at) in self.held.items() if at + gap_timeout <= now]
        if not overdue:
            return []
        return self.advance(max(overdue) + 1)

    def release_all(self) -> list[T]:
        """Everything held, in order (the sender restarted: its old numbers mean nothing)."""
        released = [self.held[seq][0] for seq in sorted(self.held)]
        self.held.clear()
        return released
