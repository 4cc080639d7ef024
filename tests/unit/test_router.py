"""Delivery rules of the sans-I/O router: dedup, ordering, acks, queues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flame_async._router import Ack, Delivered, Ignored, Router
from flame_async.models import WireMeta

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(n: int) -> datetime:
    return T0 + timedelta(milliseconds=n)


def wire(body: dict[str, Any]) -> tuple[WireMeta, dict[str, Any]]:
    data = dict(body)
    return WireMeta.model_validate(data.pop("meta")), data


def deliver(receiver: Router, body: dict[str, Any], n: int = 0) -> Delivered:
    meta, data = wire(body)
    result = receiver.receive(meta, data, now=at(n))
    assert isinstance(result, Delivered)
    for message in result.released:
        receiver.enqueue(message)
    return result


def test_original_meta_has_flamesdk_fields() -> None:
    a = Router("alpha-node")
    out = a.new_message(["b"], "weights", {"x": 1}, now=T0)
    body = a.body_for(out, ["b"])
    meta = body["meta"]
    assert body["x"] == 1
    assert meta["type"] == "outgoing"
    assert meta["akn_id"] is None
    assert meta["status"] == "unread"
    assert meta["sender"] == "alpha-node"
    assert meta["arrived_at"] is None
    assert meta["number"] == 0
    assert meta["category"] == "weights"
    assert meta["id"].startswith("alph-0-")
    datetime.fromisoformat(meta["created_at"])  # str(datetime.now()) format


def test_counter_increments_per_message() -> None:
    a = Router("a")
    first = a.new_message(["b"], "c", {}, now=T0)
    second = a.new_message(["b"], "c", {}, now=T0)
    assert (first.meta["number"], second.meta["number"]) == (0, 1)
    assert first.id != second.id


def test_duplicate_is_acked_again_but_handed_over_once() -> None:
    a, b = Router("a"), Router("b")
    body = a.body_for(a.new_message(["b"], "c", {"v": 1}, now=T0), ["b"])
    first = deliver(b, body)
    second = deliver(b, body)
    assert not first.duplicate and second.duplicate
    assert second.ack["meta"]["id"] == first.ack["meta"]["id"]
    assert b.take(["a"]) is not None
    assert b.take(["a"]) is None


def test_ack_is_slim_and_flamesdk_shaped() -> None:
    a, b = Router("a"), Router("b")
    out = a.new_message(["b"], "c", {"big": "x" * 1000}, now=T0)
    ack = deliver(b, a.body_for(out, ["b"])).ack
    assert set(ack) == {"meta"}  # no payload echoed
    meta = ack["meta"]
    assert meta["id"] == out.id
    assert meta["sender"] == "a"
    assert meta["akn_id"] == "b"
    assert meta["type"] == "incoming"
    assert meta["category"] == "c"
    assert meta["arrived_at"] is not None
    for key in ("status", "created_at", "number"):
        assert key in meta


def test_ack_settles_the_sender() -> None:
    a, b, c = Router("a"), Router("b"), Router("c")
    out = a.new_message(["b", "c"], "k", {}, now=T0)
    ack_b = deliver(b, a.body_for(out, ["b", "c"])).ack
    ack_c = deliver(c, a.body_for(out, ["b", "c"])).ack
    first = a.receive(*wire(ack_b), now=T0)
    assert first == Ack(out.id, "b", settled=False)
    second = a.receive(*wire(ack_c), now=T0)
    assert second == Ack(out.id, "c", settled=True, settled_ids=(out.id,))
    assert isinstance(a.receive(*wire(ack_c), now=T0), Ignored)  # repeated ack


def test_flamesdk_full_echo_ack_is_recognised() -> None:
    a = Router("a")
    out = a.new_message(["b"], "k", {"v": 1}, now=T0)
    echoed = a.body_for(out, ["b"])
    echoed["meta"] = {**echoed["meta"], "type": "incoming", "akn_id": "b", "arrived_at": "x"}
    echoed["meta"].pop("stream")
    assert a.receive(*wire(echoed), now=T0) == Ack(out.id, "b", settled=True, settled_ids=(out.id,))


def test_flamesdk_original_without_stream_is_delivered_on_arrival() -> None:
    b = Router("b")
    body = {
        "value": 3,
        "meta": {
            "type": "outgoing",
            "category": "c",
            "id": "abcd-0-1234",
            "akn_id": None,
            "status": "unread",
            "sender": "legacy",
            "created_at": "2026-01-01 10:00:00",
            "arrived_at": None,
            "number": 0,
        },
    }
    result = deliver(b, body)
    assert len(result.released) == 1
    message = b.take(["legacy"])
    assert message is not None
    assert message.data == {"value": 3}
    assert message.time.tzinfo is not None
    assert "legacy" in b.legacy_senders


def test_out_of_order_arrival_is_released_in_send_order() -> None:
    a, b = Router("a"), Router("b")
    bodies = [a.body_for(a.new_message(["b"], "c", {"i": i}, now=T0), ["b"]) for i in range(5)]
    for i in (3, 1, 0, 4, 2):
        deliver(b, bodies[i], n=i)
    got = [b.take(["a"]) for _ in range(5)]
    assert [m.data["i"] for m in got if m] == [0, 1, 2, 3, 4]


def test_gap_declared_settled_by_floor_is_skipped() -> None:
    a, b = Router("a"), Router("b")
    lost = a.new_message(["b"], "c", {"i": 0}, now=T0)
    second = a.new_message(["b"], "c", {"i": 1}, now=T0)
    deliver(b, a.body_for(second, ["b"]))
    assert b.take(["a"]) is None  # held back: message 0 may still come
    a.settle(lost)  # the sender gave up on it
    third = a.new_message(["b"], "c", {"i": 2}, now=T0)
    deliver(b, a.body_for(third, ["b"]))
    assert [b.take(["a"]).data["i"], b.take(["a"]).data["i"]] == [1, 2]  # type: ignore[union-attr]


def test_sequence_numbers_are_per_receiver() -> None:
    a, c = Router("a"), Router("c")
    to_b = a.new_message(["b"], "x", {}, now=T0)
    to_both = a.new_message(["b", "c"], "x", {}, now=T0)
    assert to_b.seq == {"b": 1}
    assert to_both.seq == {"b": 2, "c": 1}
    deliver(c, a.body_for(to_both, ["b", "c"]))
    assert c.take(["a"]) is not None  # c is not held back by b's stream


def test_restarted_sender_is_not_mistaken_for_duplicates() -> None:
    b = Router("b")
    old = Router("a", epoch="one")
    for _ in range(3):
        deliver(b, old.body_for(old.new_message(["b"], "c", {}, now=T0), ["b"]))
    new = Router("a", epoch="two")
    deliver(b, new.body_for(new.new_message(["b"], "c", {"fresh": True}, now=T0), ["b"]))
    taken = [b.take(["a"]) for _ in range(4)]
    assert all(taken)
    assert taken[-1].data == {"fresh": True}  # type: ignore[union-attr]


def test_take_filters_and_keeps_the_rest_in_order() -> None:
    a, b = Router("a"), Router("b")
    for i, cat in enumerate(["x", "y", "x"]):
        deliver(b, a.body_for(a.new_message(["b"], cat, {"i": i}, now=T0), ["b"]), n=i)
    y = b.take(["a"], lambda m: m.category == "y")
    assert y is not None and y.data["i"] == 1
    assert [m.data["i"] for m in b.peek()] == [0, 2]


def test_take_any_sender_prefers_earliest_arrival() -> None:
    a, c, b = Router("a"), Router("c"), Router("b")
    deliver(b, c.body_for(c.new_message(["b"], "k", {}, now=T0), ["b"]), n=1)
    deliver(b, a.body_for(a.new_message(["b"], "k", {}, now=T0), ["b"]), n=2)
    first = b.take(None)
    assert first is not None and first.sender == "c"


def test_requeue_puts_a_message_back_at_the_head() -> None:
    a, b = Router("a"), Router("b")
    for i in range(2):
        deliver(b, a.body_for(a.new_message(["b"], "k", {"i": i}, now=T0), ["b"]))
    first = b.take(["a"])
    assert first is not None
    b.requeue(first)
    again = b.take(["a"])
    assert again is not None and again.data["i"] == 0


@pytest.mark.parametrize("floor_first", [True, False])
def test_late_copy_after_give_up_is_still_handed_over(floor_first: bool) -> None:
    a, b = Router("a"), Router("b")
    lost = a.new_message(["b"], "c", {"i": 0}, now=T0)
    late_body = a.body_for(lost, ["b"])
    a.settle(lost)
    nxt = a.new_message(["b"], "c", {"i": 1}, now=T0)
    order = (
        [a.body_for(nxt, ["b"]), late_body] if floor_first else [late_body, a.body_for(nxt, ["b"])]
    )
    for body in order:
        deliver(b, body)
    got = sorted(m.data["i"] for m in b.peek())
    assert got == [0, 1]


def test_coalesced_ack_settles_every_message_it_names() -> None:
    a, b = Router("a"), Router("b")
    outs = [a.new_message(["b"], "k", {"i": i}, now=T0) for i in range(3)]
    acks = [deliver(b, a.body_for(out, ["b"])).ack for out in outs]
    merged = Router.merge_acks(acks)
    assert merged["meta"]["id"] == outs[0].id  # still a flamesdk-shaped ack of the first
    result = a.receive(*wire(merged), now=T0)
    assert isinstance(result, Ack)
    assert result.settled_ids == tuple(out.id for out in outs)
    assert a.pending_count() == 3  # settled by acks, still tracked until settle()
    for out in outs:
        assert not out.pending
