"""The broker's record of deliveries: kept in a bounded deque, counted and numbered as recorded."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import pytest

from flame_async.errors import InvalidArgument
from flame_async.local import DeliveryEvent, DeliveryOutcome
from flame_async.local._records import DeliveryLog

WALL = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _event(
    n: int, outcome: DeliveryOutcome = "delivered", sender: str | None = "a"
) -> DeliveryEvent:
    return DeliveryEvent(
        sender=sender,
        recipient="b",
        subscription_id="s",
        category=None,
        message_id=f"m{n}",
        size=10 + n,
        outcome=outcome,
        attempts=1,
        status=200 if outcome == "delivered" else 503,
        reason="" if outcome == "delivered" else "HTTP 503",
        sent_monotonic=float(n),
        monotonic=float(n),
        time=WALL,
    )


def test_events_are_numbered_and_a_cursor_gets_only_the_new_ones() -> None:
    log = DeliveryLog(deque(maxlen=100))
    for n in range(5):
        log.append(_event(n))

    first, cursor = log.since(0)
    assert ([e.message_id for e in first], cursor) == (["m0", "m1", "m2", "m3", "m4"], 5)
    log.append(_event(5))
    new, cursor = log.since(cursor)
    assert ([e.message_id for e in new], cursor) == (["m5"], 6)
    assert log.since(cursor) == ([], 6)
    assert log.since(60) == ([], 6)  # beyond the last: nothing
    with pytest.raises(InvalidArgument):
        log.since(-1)


def test_counts_cover_events_the_deque_no_longer_keeps() -> None:
    kept: deque[DeliveryEvent] = deque(maxlen=3)
    log = DeliveryLog(kept)
    for n in range(10):
        log.append(_event(n, "dropped" if n % 2 else "delivered"))

    assert [e.message_id for e in kept] == ["m7", "m8", "m9"]
    events, cursor = log.since(2)  # more came than are kept: the kept ones
    assert ([e.message_id for e in events], cursor) == (["m7", "m8", "m9"], 10)
    assert [e.message_id for e in log.since(8)[0]] == ["m8", "m9"]
    counts = log.counts()
    assert (counts.events, counts.delivered, counts.dropped) == (10, 5, 5)
    assert counts.bytes_delivered == sum(10 + n for n in range(0, 10, 2))
    sender, recipient = log.node_counts("a"), log.node_counts("b")
    assert (sender.sent, sender.sent_delivered, sender.sent_dropped) == (10, 5, 5)
    assert sender.bytes_sent == sum(10 + n for n in range(10))
    assert (recipient.received, recipient.dropped, recipient.sent) == (5, 5, 0)
    assert recipient.bytes_received == counts.bytes_delivered
    assert log.node_counts("nobody").sent == 0


def test_a_copy_without_a_sender_counts_for_its_recipient_only() -> None:
    log = DeliveryLog(deque(maxlen=10))
    log.append(_event(1, sender=None))

    assert log.node_counts("b").received == 1
    assert log.counts().delivered == 1
    assert log.node_counts("").sent == 0
