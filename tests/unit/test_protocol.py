"""The sans-I/O node protocol, driven synchronously: events in, actions out, no I/O or loop.

Nodes ``a``, ``b`` and ``c`` of one analysis exchange bodies the way the broker would: a
``Post`` body, serialised, is delivered verbatim to each recipient's :meth:`receive`.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import pytest

from flame_async._protocol import (
    AcksPending,
    Action,
    AnalysisFinished,
    Fetch,
    Instant,
    NodeProtocol,
    PeerEnded,
    Post,
    PostFailure,
    PostKind,
    ProtocolSettings,
    Rejection,
    RunHandler,
    Settled,
    Wake,
    format_wire_time,
    new_epoch,
)
from flame_async.errors import InvalidArgument
from flame_async.models import Message, SendReport

BASE = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NODES = ("a", "b", "c")
FLAMESDK_META = [
    "type",
    "category",
    "id",
    "akn_id",
    "status",
    "sender",
    "created_at",
    "arrived_at",
    "number",
]

A = TypeVar("A")


def at(mono: float) -> Instant:
    """The clock at ``mono`` seconds (the wall clock moves with it)."""
    return Instant(mono, BASE + timedelta(seconds=mono))


def node(
    name: str,
    *,
    epoch: str | None = None,
    gap_timeout: float = 5.0,
    resend_initial: float = 1.0,
    retry_initial: float = 0.05,
) -> NodeProtocol:
    settings = ProtocolSettings(
        resend_initial=resend_initial,
        retry_initial=retry_initial,
        gap_timeout=gap_timeout,
        epoch=epoch or f"e-{name}",
    )
    return NodeProtocol(name, NODES, settings)


def of_type(actions: Sequence[Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def posts(protocol: NodeProtocol, kind: PostKind) -> list[Post]:
    """The POSTs of ``kind`` among the actions taken now (the others are dropped)."""
    return [p for p in of_type(protocol.take_actions(), Post) if p.kind is kind]


def send(
    sender: NodeProtocol,
    receivers: Sequence[str] = ("b",),
    *,
    now: float = 0.0,
    category: str = "data",
    timeout: float = 30.0,
    **data: Any,
) -> tuple[str, Post]:
    """Send a message; returns its id and its first POST."""
    message_id = sender.send(list(receivers), category, data, now=at(now), timeout=timeout)
    [post] = posts(sender, PostKind.MESSAGE)
    return message_id, post


def wire(post: Post) -> bytes:
    return orjson.dumps(post.body)


def deliver(post: Post, to: NodeProtocol, now: float = 0.0) -> Rejection | None:
    """The broker delivers a POSTed body verbatim to one of its recipients."""
    assert to.node_id in post.recipients
    return to.receive(wire(post), at(now))


def acks(receiver: NodeProtocol) -> list[Post]:
    """Flush the receiver's queued acknowledgements; returns their POSTs."""
    receiver.flush_acks()
    return posts(receiver, PostKind.ACK)


def settled(protocol: NodeProtocol) -> dict[str, Settled]:
    return {s.report.message_id: s for s in of_type(protocol.take_actions(), Settled)}


def report_of(protocol: NodeProtocol, message_id: str) -> SendReport:
    return settled(protocol)[message_id].report


def take_all(protocol: NodeProtocol) -> list[Message]:
    """What the analysis gets when it takes everything queued, oldest first."""
    taken = []
    while (message := protocol.take(None)) is not None:
        taken.append(message)
    return taken


def numbers(messages: Sequence[Message]) -> list[Any]:
    return [m.data["n"] for m in messages]


def flamesdk_body(sender: str, message_id: str, category: str = "data", **data: Any) -> bytes:
    """An original message as flamesdk 0.6 posts it: no ``stream``."""
    meta = {
        "type": "outgoing",
        "category": category,
        "id": message_id,
        "akn_id": None,
        "status": "unread",
        "sender": sender,
        "created_at": "2025-01-01 11:59:59.500000",
        "arrived_at": None,
        "number": 7,
    }
    return orjson.dumps({**data, "meta": meta})


def flamesdk_ack(original: Post, receiver: str) -> bytes:
    """flamesdk acknowledges by echoing the whole message with ``akn_id`` set."""
    meta = {**original.body["meta"], "akn_id": receiver, "type": "incoming", "status": "read"}
    return orjson.dumps({**original.body, "meta": meta})


# -- the wire shape ----------------------------------------------------------------------------


def test_original_meta_has_the_flamesdk_fields_and_the_stream() -> None:
    a = node("a")
    first, post = send(a, ["b", "c"], x=1)
    assert post.recipients == ("b", "c")
    assert post.message_id == first
    assert post.body["x"] == 1
    meta = post.body["meta"]
    assert {k: meta[k] for k in FLAMESDK_META} == {
        "type": "outgoing",
        "category": "data",
        "id": first,
        "akn_id": None,
        "status": "unread",
        "sender": "a",
        "created_at": format_wire_time(BASE),
        "arrived_at": None,
        "number": 0,
    }
    assert first.startswith("a-0-")
    # receivers whose numbers agree share one "*" entry: a copy's size does not grow with N
    assert meta["stream"] == {"epoch": "e-a", "seq": {"*": 1}, "floor": {"*": 1}}
    _, second = send(a, ["b"])
    assert second.body["meta"]["number"] == 1
    assert second.body["meta"]["stream"]["seq"] == {"b": 2}


def test_ack_is_slim_flamesdk_shaped_and_says_ordered() -> None:
    a, b = node("a"), node("b")
    message_id, post = send(a, x=1, big="payload")
    assert deliver(post, b, now=2.0) is None
    assert of_type(b.take_actions(), AcksPending) == [AcksPending()]
    [ack] = acks(b)
    assert ack.recipients == ("a",)
    assert set(ack.body) == {"meta"}, "no payload in an ack"
    meta = ack.body["meta"]
    assert meta["id"] == message_id
    assert meta["sender"] == "a"
    assert meta["akn_id"] == "b"
    assert meta["ordered"] is True
    assert meta["type"] == "incoming"
    assert meta["arrived_at"] == format_wire_time(at(2.0).wall)
    assert "acks" not in meta
    assert "refused" not in meta
    assert deliver(ack, a) is None
    report = report_of(a, message_id)
    assert report.acked == ("b",)
    assert report.ok
    assert "b" in a.ordered_peers


def test_flamesdk_full_echo_ack_is_recognised() -> None:
    a = node("a")
    message_id, post = send(a, ["b", "c"], x=1)
    assert a.receive(flamesdk_ack(post, "c"), at(0.5)) is None
    assert not settled(a)
    assert a.receive(flamesdk_ack(post, "b"), at(0.6)) is None
    assert report_of(a, message_id).acked == ("b", "c")
    assert not a.ordered_peers, "a flamesdk ack does not claim order"


def test_ack_of_another_nodes_message_changes_nothing() -> None:
    a, b, c = node("a"), node("b"), node("c")
    _, post = send(c)
    deliver(post, b)
    [ack] = acks(b)
    assert a.receive(wire(ack), at(0)) is None
    assert a.stats["foreign_acks"] == 1
    assert not a.take_actions()


# -- receiving ---------------------------------------------------------------------------------


def test_flamesdk_original_is_handed_over_on_arrival_and_its_duplicate_only_reacked() -> None:
    b = node("b")
    body = flamesdk_body("c", "c-0-aaaa", x=1)
    assert b.receive(body, at(1.0)) is None
    [message] = take_all(b)
    assert (message.id, message.sender, message.data, message.message_number) == (
        "c-0-aaaa",
        "c",
        {"x": 1},
        7,
    )
    assert message.arrived_at == at(1.0).wall
    assert b.receive(body, at(2.0)) is None
    assert take_all(b) == []
    assert b.stats["duplicates"] == 1
    first, second = acks(b)  # one per delivery, never coalesced for flamesdk
    assert first.body["meta"]["id"] == second.body["meta"]["id"] == "c-0-aaaa"
    assert "acks" not in second.body["meta"]
    assert "c" in b.legacy_senders


def test_flamesdk_acks_are_one_per_message() -> None:
    b = node("b")
    b.receive(flamesdk_body("c", "c-0-aaaa"), at(0))
    b.receive(flamesdk_body("c", "c-1-bbbb"), at(0))
    assert [p.body["meta"]["id"] for p in acks(b)] == ["c-0-aaaa", "c-1-bbbb"]


def test_duplicate_of_an_ordered_message_is_reacked_not_redelivered() -> None:
    a, b = node("a"), node("b")
    _, post = send(a, n=1)
    deliver(post, b)
    [first] = acks(b)
    deliver(post, b, now=1.0)
    [again] = acks(b)
    assert numbers(take_all(b)) == [1]
    assert first.body["meta"]["id"] == again.body["meta"]["id"]
    assert b.stats["duplicates"] == 1
    assert b.stats["handed_over"] == 1


def test_out_of_order_arrival_is_held_then_released_in_order() -> None:
    a, b = node("a"), node("b")
    sent = [send(a, n=n)[1] for n in (1, 2, 3)]
    deliver(sent[2], b)
    deliver(sent[1], b)
    assert b.take(None) is None
    assert b.held_count() == 2
    assert len(acks(b)[0].body["meta"]["acks"]) == 1, "held messages are acknowledged"
    deliver(sent[0], b)
    assert b.held_count() == 0
    assert numbers(take_all(b)) == [1, 2, 3]


def test_floor_passing_a_gap_releases_held_messages() -> None:
    a, b = node("a"), node("b")
    first, _lost = send(a, n=1)
    _, second = send(a, n=2)
    deliver(second, b)
    assert b.held_count() == 1
    a.abandon(first, at(1.0))  # the sender settles #1 without b: the floor passes it
    _, third = send(a, now=1.0, n=3)
    assert third.body["meta"]["stream"]["floor"] == {"b": 2}
    deliver(third, b, now=1.0)
    assert numbers(take_all(b)) == [2, 3]
    assert b.held_count() == 0


def test_settle_notice_releases_held_messages_and_is_never_handed_over_or_acked() -> None:
    a, b = node("a"), node("b")
    first, _lost = send(a, n=1)
    second, post = send(a, n=2)
    deliver(post, b)
    [ack] = acks(b)
    deliver(ack, a)
    assert report_of(a, second).acked == ("b",)
    a.abandon(first, at(1.0))
    actions = a.take_actions()
    assert of_type(actions, Settled)[0].report.reasons == {"b": "the send was cancelled"}
    [notice] = [p for p in of_type(actions, Post) if p.kind is PostKind.NOTICE]
    assert notice.recipients == ("b",)
    assert notice.body["meta"]["category"] == "flame_async.settle"
    assert notice.body["meta"]["stream"]["floor"] == {"b": 3}
    assert deliver(notice, b, now=1.5) is None
    assert not of_type(b.take_actions(), AcksPending), "a notice is not acknowledged"
    assert numbers(take_all(b)) == [2]
    assert b.stats["notices_received"] == 1
    assert b.stats["handed_over"] == 1


def test_gap_closes_after_gap_timeout_and_the_late_message_is_refused_with_a_reason() -> None:
    a, b = node("a"), node("b", gap_timeout=2.0)
    first, late = send(a, n=1)
    _, second = send(a, n=2)
    deliver(second, b, now=0.5)
    assert b.next_deadline() == 2.5
    b.tick(at(2.4))
    assert b.take(None) is None
    b.tick(at(2.5))  # no further message needed
    assert numbers(take_all(b)) == [2]
    assert b.stats["gaps_expired"] == 1
    acks(b)
    assert deliver(late, b, now=3.0) is None
    assert b.take(None) is None, "never handed over out of order"
    [refusal] = acks(b)
    meta = refusal.body["meta"]
    assert meta["id"] == first
    assert meta["akn_id"] == "b"
    assert "gap was closed after 2 s" in meta["refused"]
    deliver(refusal, a, now=3.1)
    report = report_of(a, first)
    assert report.missing == ("b",)
    assert report.reasons["b"] == f"b refused it: {meta['refused']}"


def test_a_number_below_the_first_floor_seen_is_refused_not_acknowledged() -> None:
    a, b = node("a"), node("b")
    first, late = send(a, n=1)
    a.abandon(first, at(0))
    _, second = send(a, n=2)
    assert second.body["meta"]["stream"]["floor"] == {"b": 2}
    deliver(second, b)
    deliver(late, b)  # the broker still had the cancelled send's POST
    assert numbers(take_all(b)) == [2]
    positive, refusal = acks(b)
    assert "refused" not in positive.body["meta"]
    assert refusal.body["meta"]["id"] == first
    assert "refused" in refusal.body["meta"]


def test_ready_check_is_acknowledged_and_consumed_by_the_runtime() -> None:
    a, b = node("a"), node("b")
    _, post = send(a, category="ready_check")
    deliver(post, b)
    assert len(acks(b)) == 1
    assert b.take(None) is None
    assert b.stats["handed_over"] == 1


# -- sending: deadlines, failures, resends -----------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("posted", "no acknowledgement within 5 s"),
        ("unanswered", "not posted to the broker within 5 s"),
        ("failing", "the broker could not be reached within 5 s: 503 Service Unavailable"),
    ],
)
def test_send_deadline_reports_every_unacknowledged_receiver_missing(
    outcome: str, reason: str
) -> None:
    a = node("a")
    message_id, post = send(a, ["b", "c"], timeout=5.0)
    if outcome == "posted":
        a.post_done(post.post_id, at(0.1))
    elif outcome == "failing":
        a.post_failed(post.post_id, PostFailure(True, "503 Service Unavailable"), at(0.1))
    a.tick(at(4.9))
    assert not settled(a)
    a.tick(at(5.0))
    done = settled(a)[message_id]
    assert done.report.missing == ("b", "c")
    assert done.report.reasons == {"b": reason, "c": reason}
    assert done.never_posted == (outcome != "posted")
    assert not a.outbox.sending


def test_broker_4xx_gives_up_at_once_and_never_posted_says_whether_one_got_through() -> None:
    a = node("a")
    message_id, post = send(a)
    a.post_failed(post.post_id, PostFailure(False, "413 Payload Too Large"), at(0.1))
    done = settled(a)[message_id]
    assert done.report.reasons == {"b": "the broker refused it: 413 Payload Too Large"}
    assert done.never_posted

    message_id, post = send(a, now=1.0)
    a.post_done(post.post_id, at(1.0))
    a.tick(at(2.0))
    [resend] = posts(a, PostKind.MESSAGE)
    a.post_failed(resend.post_id, PostFailure(False, "400 Bad Request"), at(2.1))
    done = settled(a)[message_id]
    assert done.report.missing == ("b",)
    assert not done.never_posted


def test_retryable_failure_reposts_after_the_retry_backoff() -> None:
    a = node("a", retry_initial=0.5)
    message_id, post = send(a)
    a.post_failed(post.post_id, PostFailure(True, "connection reset"), at(0.1))
    assert not a.take_actions()
    assert a.next_deadline() == pytest.approx(0.6)
    a.tick(at(0.5))
    assert not a.take_actions()
    a.tick(at(0.6))
    [retry] = posts(a, PostKind.MESSAGE)
    assert retry.message_id == message_id
    assert retry.post_id != post.post_id
    assert retry.body["meta"]["id"] == message_id
    a.post_failed(retry.post_id, PostFailure(True, "connection reset"), at(0.7))
    a.tick(at(1.6))
    assert not a.take_actions(), "the pause doubled: 0.7 + 1.0"
    a.tick(at(1.7))
    assert len(posts(a, PostKind.MESSAGE)) == 1


def test_resend_after_resend_initial_goes_only_to_unacknowledged_receivers() -> None:
    a, b = node("a", resend_initial=1.0), node("b")
    message_id, post = send(a, ["b", "c"])
    a.post_done(post.post_id, at(0.1))
    deliver(post, b)
    [ack] = acks(b)
    deliver(ack, a, now=0.2)
    a.tick(at(1.0))
    assert not posts(a, PostKind.MESSAGE)
    a.tick(at(1.1))
    [resend] = posts(a, PostKind.MESSAGE)
    assert resend.message_id == message_id
    assert resend.recipients == ("c",)
    assert resend.body["meta"]["stream"]["seq"] == {"c": 1}
    assert a.stats["resent"] == 1
    a.post_done(resend.post_id, at(1.2))
    a.tick(at(3.1))
    assert not posts(a, PostKind.MESSAGE), "the pause doubled to 2 s"
    a.tick(at(3.2))
    assert len(posts(a, PostKind.MESSAGE)) == 1


def test_coalesced_acks_settle_several_messages() -> None:
    a, b = node("a"), node("b")
    ids = []
    for n in (1, 2, 3):
        message_id, post = send(a, n=n)
        ids.append(message_id)
        deliver(post, b)
    [ack] = acks(b)
    assert ack.body["meta"]["id"] == ids[0]
    assert ack.body["meta"]["acks"] == ids[1:]
    deliver(ack, a)
    done = settled(a)
    assert sorted(done) == sorted(ids)
    assert all(s.report.acked == ("b",) for s in done.values())


def test_abandon_settles_with_the_send_was_cancelled_and_moves_the_floor() -> None:
    a = node("a")
    message_id, _ = send(a, ["b", "c"])
    a.abandon(message_id, at(1.0))
    report = report_of(a, message_id)
    assert report.missing == ("b", "c")
    assert report.reasons == {"b": "the send was cancelled", "c": "the send was cancelled"}
    assert a.outbox.floor("b") == 2
    _, post = send(a, ["b"], now=1.0)
    assert post.body["meta"]["stream"]["floor"] == {"b": 2}
    a.abandon(message_id, at(2.0))  # already settled: nothing happens
    assert not a.take_actions()


def test_giving_up_below_acked_numbers_notifies_only_receivers_known_to_be_ordered() -> None:
    a, b = node("a"), node("b")
    send(a, ["b", "c"], n=1)  # lost
    second, post = send(a, ["b", "c"], n=2)
    deliver(post, b)
    deliver(acks(b)[0], a)  # b says it keeps order
    assert a.receive(flamesdk_ack(post, "c"), at(0)) is None  # c, a flamesdk node, does not
    assert report_of(a, second).acked == ("b", "c")
    a.tick(at(30.0))  # the deadline gives #1 up
    actions = a.take_actions()
    assert of_type(actions, Settled)[0].report.missing == ("b", "c")
    notices = [p for p in of_type(actions, Post) if p.kind is PostKind.NOTICE]
    assert [n.recipients for n in notices] == [("b",)]
    assert a.stats["notices"] == 1


def test_no_notice_when_nothing_was_numbered_after_the_number_given_up() -> None:
    a, b = node("a"), node("b")
    _, post = send(a, n=1)
    deliver(post, b)
    deliver(acks(b)[0], a)
    last, _ = send(a, n=2)
    a.abandon(last, at(1.0))
    assert not [p for p in of_type(a.take_actions(), Post) if p.kind is PostKind.NOTICE]


# -- webhook validation ------------------------------------------------------------------------

VALID = flamesdk_body("c", "c-0-aaaa", x=1)


@pytest.mark.parametrize(
    ("body", "status", "key"),
    [
        (b"", 400, "empty body"),
        (b"{not json", 400, "invalid json"),
        (b"[1, 2]", 400, "not an object"),
        (b'{"x": 1}', 400, "missing meta"),
        (b'{"meta": null}', 400, "missing meta"),
        (b'{"meta": "text"}', 400, "meta not an object"),
        (b'{"meta": {"id": "c-0-aaaa", "sender": "c"}}', 422, "invalid meta"),
        (VALID.replace(b'"number":7', b'"number":"7"'), 422, "invalid meta"),
        (VALID.replace(b'"sender":"c"', b'"sender":"b"'), 422, "from itself"),
        (VALID.replace(b'"sender":"c"', b'"sender":"z"'), 422, "unknown sender"),
    ],
)
def test_webhook_body_is_rejected_with_a_reason_and_nothing_recorded(
    body: bytes, status: int, key: str
) -> None:
    b = node("b")
    rejection = b.receive(body, at(0))
    assert isinstance(rejection, Rejection)
    assert (rejection.status, rejection.key) == (status, key)
    assert rejection.reason
    assert not b.take_actions()
    assert not b.heard_from
    assert not b.legacy_senders
    assert not b.ordered_senders
    assert b.mailbox.queued_count() == 0
    assert b.receive(VALID, at(1)) is None, "the valid delivery is still taken"
    assert [m.id for m in take_all(b)] == ["c-0-aaaa"]
    assert b.stats["duplicates"] == 0


def test_rejection_keys_are_distinct() -> None:
    b = node("b")
    bodies = [
        b"",
        b"{",
        b"1",
        b"{}",
        b'{"meta": []}',
        b'{"meta": {}}',
        VALID.replace(b'"sender":"c"', b'"sender":"b"'),
        VALID.replace(b'"sender":"c"', b'"sender":"z"'),
    ]
    keys = []
    for body in bodies:
        rejection = b.receive(body, at(0))
        assert rejection is not None
        keys.append(rejection.key)
    assert len(set(keys)) == len(keys)


def test_a_closed_node_refuses_every_body_with_503_and_records_nothing() -> None:
    a, b = node("a"), node("b")
    _, post = send(a)
    b.closed = True  # the analysis ended: a sender must not count on this node any more
    rejection = deliver(post, b)
    assert rejection is not None
    assert (rejection.status, rejection.key) == (503, "closed")
    assert not b.take_actions()
    assert not b.heard_from
    assert b.take(None) is None


@pytest.mark.parametrize("ordered", [False, True], ids=["flamesdk", "flame-async"])
def test_out_of_range_created_at_is_taken_with_the_arrival_time_and_handed_over_once(
    ordered: bool,
) -> None:
    a, b = node("a"), node("b")
    if ordered:
        _, post = send(a, n=1)
        value = dict(post.body)
    else:
        value = orjson.loads(flamesdk_body("a", "a-0-aaaa", n=1))
    value["meta"] = {**value["meta"], "created_at": "0001-01-01T00:00:00+01:00"}
    body = orjson.dumps(value)
    assert b.receive(body, at(1.0)) is None
    assert b.receive(body, at(2.0)) is None  # the broker's retry of the same delivery
    [message] = take_all(b)
    assert message.time == message.arrived_at == at(1.0).wall
    assert numbers([message]) == [1]
    assert len(acks(b)) == (1 if ordered else 2)  # flame-async acks are coalesced
    assert b.stats["handed_over"] == 1


# -- sender epochs -----------------------------------------------------------------------------


def test_new_sender_epoch_releases_what_the_old_one_held_and_an_older_epoch_is_refused() -> None:
    old, b = node("a", epoch="run-1"), node("b")
    _, stale = send(old, n=1)
    _, held = send(old, n=2)
    deliver(held, b)
    assert b.held_count() == 1
    new = node("a", epoch="run-2")  # the sender restarted
    _, fresh = send(new, n=10)
    deliver(fresh, b, now=1.0)
    assert numbers(take_all(b)) == [2, 10]
    acks(b)
    assert deliver(stale, b, now=2.0) is None
    assert b.take(None) is None
    [refusal] = acks(b)
    assert refusal.body["meta"]["refused"] == "it comes from an earlier run of its sender"


def test_a_late_message_from_a_dead_run_does_not_lock_out_the_senders_new_run() -> None:
    old, new, b = node("a", epoch="run-1"), node("a", epoch="run-2"), node("b")
    _, stale = send(old, n=1)
    _, first = send(new, n=2)
    deliver(first, b)
    deliver(stale, b, now=1.0)  # the broker retried the dead process's POST late
    acks(b)
    _, second = send(new, now=2.0, n=3)
    deliver(second, b, now=2.0)
    assert not any("refused" in p.body["meta"] for p in acks(b))
    assert numbers(take_all(b))[-1] == 3


# -- the mailbox: waiters, requeue, handlers, peers -------------------------------------------


def test_waiters_are_woken_only_for_a_matching_sender_and_category() -> None:
    a, b = node("a"), node("b")
    from_a = b.add_waiter(frozenset({"a"}), None)
    anyone_data = b.add_waiter(None, "data")
    anyone = b.add_waiter(None, None)
    b.add_waiter(frozenset({"c"}), None)
    b.add_waiter(None, "other")
    gone = b.add_waiter(None, None)
    b.remove_waiter(gone)
    _, post = send(a, category="data")
    deliver(post, b)
    [wake] = of_type(b.take_actions(), Wake)
    assert sorted(wake.waiter_ids) == sorted([from_a, anyone_data, anyone])


def test_requeue_puts_a_message_back_where_it_was() -> None:
    b = node("b")
    for n, message_id in enumerate(("c-0-aaaa", "c-1-bbbb", "c-2-cccc")):
        b.receive(flamesdk_body("c", message_id, n=n), at(n))
    first = b.take_ranked(["c"])
    third = b.take_ranked(["c"], lambda m: m.data["n"] == 2)
    assert first is not None and third is not None
    b.requeue(third[1], third[0])
    b.requeue(first[1], first[0])
    assert numbers(take_all(b)) == [0, 1, 2]


def test_requeue_keeps_the_senders_order_when_a_held_message_arrived_first() -> None:
    a, b = node("a"), node("b")
    _, first = send(a, n=1)
    _, second = send(a, n=2)
    deliver(second, b, now=1.0)  # held: arrived before #1
    deliver(first, b, now=2.0)
    taken = b.take_ranked(["a"])
    assert taken is not None and numbers([taken[1]]) == [1]
    _, third = send(a, n=3)
    deliver(third, b, now=3.0)
    b.requeue(taken[1], taken[0])  # the wait that took it was cancelled
    assert numbers(take_all(b)) == [1, 2, 3]


def test_take_prefers_the_earliest_arrival_across_senders_and_the_first_match_within_one() -> None:
    a, b = node("a"), node("b")
    b.receive(flamesdk_body("c", "c-0-aaaa", n=0), at(1.0))
    _, post = send(a, category="other", n=1)
    deliver(post, b, now=0.5)
    _, post = send(a, n=2)
    deliver(post, b, now=2.0)
    earliest = b.take(None)
    assert earliest is not None and numbers([earliest]) == [1]
    data = b.take(None, lambda m: m.category == "data")
    assert data is not None and numbers([data]) == [0]
    assert numbers(take_all(b)) == [2]


def test_add_handler_dispatches_already_queued_requests_as_run_handler() -> None:
    a, b = node("a"), node("b")
    _, request = send(a, category="square", n=1)
    reply_id = a.send(["b"], "square", {"n": 2}, now=at(0), timeout=5, reply_to="b-0-xxxx")
    [reply] = posts(a, PostKind.MESSAGE)
    _, other = send(a, category="data", n=3)
    for post in (request, reply, other):
        deliver(post, b)
    b.take_actions()
    b.add_handler("square")
    [run] = of_type(b.take_actions(), RunHandler)
    assert numbers([run.message]) == [1]
    assert [m.id for m in take_all(b)] == [reply_id, other.message_id]
    _, later = send(a, category="square", n=4)
    deliver(later, b)
    assert numbers([r.message for r in of_type(b.take_actions(), RunHandler)]) == [4]
    assert b.take(None) is None


@pytest.mark.parametrize("category", ["ready_check", "analysis_finished", "flame_async.settle"])
def test_add_handler_refuses_a_reserved_category(category: str) -> None:
    with pytest.raises(InvalidArgument, match="reserved"):
        node("b").add_handler(category)


def test_add_handler_refuses_a_second_handler() -> None:
    b = node("b")
    b.add_handler("square")
    with pytest.raises(InvalidArgument, match="already"):
        b.add_handler("square")


def test_analysis_finished_closes_the_peer_and_wakes_waiters() -> None:
    a, b = node("a"), node("b")
    waiter = b.add_waiter(frozenset({"a"}), "data")
    _, post = send(a, category="analysis_finished")
    deliver(post, b)
    actions = b.take_actions()
    assert of_type(actions, AnalysisFinished) == [AnalysisFinished("a")]
    [ended] = of_type(actions, PeerEnded)
    assert (ended.failure.node_id, ended.failure.status) == ("a", "executed")
    assert waiter in of_type(actions, Wake)[0].waiter_ids
    assert b.finished
    assert b.take(None) is None
    assert b.mailbox.failure() is None, "a finish is not a failure"


def test_node_status_closes_the_peer_with_its_status_and_reason() -> None:
    b, c = node("b"), node("c")
    waiter = b.add_waiter(None, None)
    _, post = send(c, category="flame_async.node_status", status="failed", reason="boom")
    deliver(post, b)
    actions = b.take_actions()
    [ended] = of_type(actions, PeerEnded)
    assert (ended.failure.node_id, ended.failure.status, ended.failure.reason) == (
        "c",
        "failed",
        "boom",
    )
    assert waiter in of_type(actions, Wake)[0].waiter_ids
    assert b.mailbox.failure() is ended.failure
    assert not b.finished
    assert b.take(None) is None


def test_reply_match_takes_replies_naming_the_request_and_any_flamesdk_message() -> None:
    a, b = node("a"), node("b")
    request_id = "b-0-request"
    a.send(["b"], "answer", {"n": 1}, now=at(0), timeout=5, reply_to=request_id)
    a.send(["b"], "answer", {"n": 2}, now=at(0), timeout=5, reply_to="b-9-other")
    a.send(["b"], "answer", {"n": 3}, now=at(0), timeout=5)
    for post in posts(a, PostKind.MESSAGE):
        deliver(post, b)
    b.receive(flamesdk_body("c", "c-0-aaaa", category="answer", n=4), at(0))
    match = b.reply_match(request_id)
    assert sorted(numbers([m for m in b.mailbox.peek() if match(m)])) == [1, 4]


def test_epochs_order_the_starts_of_a_node_by_time() -> None:
    earlier, later = new_epoch(1_700_000_000_000_000_000), new_epoch(1_700_000_000_000_000_001)
    assert earlier < later
    assert new_epoch(5) < new_epoch(10**18)  # fixed width: no string-order surprises


@pytest.mark.parametrize("field", ["seq", "floor"])
def test_stream_numbers_below_one_are_refused_and_nothing_is_recorded(field: str) -> None:
    a, b = node("a"), node("b")
    _, post = send(a, n=1)
    bad = orjson.loads(wire(post))
    bad["meta"]["stream"][field]["b"] = 0
    rejection = b.receive(orjson.dumps(bad), at(0))
    assert rejection is not None and (rejection.status, rejection.key) == (422, "invalid meta")
    assert b.stats["rejected"] == 1
    assert deliver(post, b) is None  # the good one is still taken
    assert numbers(take_all(b)) == [1]


# -- bounds and forged input (a node API is reachable by whatever shares its network) ----------


def bounded(name: str, **limits: int) -> NodeProtocol:
    settings = ProtocolSettings(epoch=f"e-{name}", **limits)
    return NodeProtocol(name, NODES, settings)


def test_a_full_backlog_refuses_new_messages_with_503_until_the_analysis_takes_one() -> None:
    a, b = node("a"), bounded("b", max_backlog=2)
    sent = [send(a, n=n)[1] for n in (1, 2, 3)]
    assert deliver(sent[0], b) is None
    assert deliver(sent[1], b) is None
    full = deliver(sent[2], b)
    assert full is not None and (full.status, full.key) == (503, "backlog full")
    assert "2 messages" in full.reason and "from a" in full.reason
    assert deliver(sent[0], b) is None  # a duplicate is acked again, not refused
    assert b.take(None) is not None  # the analysis takes one: there is room again
    assert deliver(sent[2], b) is None
    assert numbers(take_all(b)) == [2, 3]
    [ack_post] = acks(b)
    assert ack_post.body["meta"]["id"] == sent[0].message_id  # acks cover the taken ones only


def test_held_messages_count_towards_the_backlog_and_runtime_categories_always_pass() -> None:
    a, b = node("a"), bounded("b", max_backlog=2)
    sent = [send(a, n=n)[1] for n in (1, 2, 3)]
    assert deliver(sent[1], b) is None  # held for #1
    assert deliver(sent[2], b) is None  # held for #1
    refused = b.receive(flamesdk_body("a", "a-x-1", n=9), at(0))
    assert refused is not None and refused.key == "backlog full"
    ready = b.receive(flamesdk_body("a", "a-x-2", category="ready_check"), at(0))
    assert ready is None  # never queued, so never refused
    assert deliver(sent[0], b) is None  # the missing one completes the run: no new room needed
    assert numbers(take_all(b)) == [1, 2, 3]


def test_the_backlog_is_bounded_in_bytes_too() -> None:
    a, b = node("a"), bounded("b", max_backlog_bytes=1500)
    first = send(a, blob="x" * 600)[1]
    second = send(a, blob="y" * 600)[1]
    assert deliver(first, b) is None
    full = deliver(second, b)
    assert full is not None and full.key == "backlog full"
    assert b.take(None) is not None
    assert deliver(second, b) is None


def test_flamesdk_ids_are_remembered_in_a_bounded_window() -> None:
    b = bounded("b", max_remembered_ids=2)
    for n in range(3):
        assert b.receive(flamesdk_body("c", f"c-{n}", n=n), at(0)) is None
    assert b.receive(flamesdk_body("c", "c-2", n=2), at(0)) is None
    assert b.stats["duplicates"] == 1  # c-2 is still remembered
    assert b.receive(flamesdk_body("c", "c-0", n=0), at(0)) is None
    assert b.stats["duplicates"] == 1  # c-0 was forgotten: only the newest two are kept
    assert numbers(take_all(b)) == [0, 1, 2, 0]


def test_a_forged_message_without_numbers_does_not_make_a_flame_async_peer_legacy() -> None:
    a, b = node("a"), node("b")
    request_id, request = send(b, ["a"], category="question", n=0)
    deliver(request, a)
    [ack] = acks(a)
    assert b.receive(wire(ack), at(0)) is None  # a's ack says it keeps order
    assert "a" in b.ordered_peers
    b.receive(flamesdk_body("a", "a-forged", category="question", n=666), at(0))
    assert "a" not in b.legacy_senders
    match = b.reply_match(request_id)
    assert [m for m in b.mailbox.peek() if match(m)] == []  # the forgery is no reply


def test_acks_from_non_participants_are_ignored() -> None:
    a = node("a")
    _, post = send(a, n=1)
    forged = {"meta": {**post.body["meta"], "akn_id": "intruder", "type": "incoming"}}
    assert a.receive(orjson.dumps(forged), at(0)) is None
    assert "intruder" not in a.heard_from
    assert a.stats["foreign_acks"] == 1
    assert not settled(a)


def test_unreachable_services_end_waits_and_sends_but_queued_messages_still_go() -> None:
    from flame_async.errors import PeerFailed, ServiceUnavailable

    a, b = node("a"), node("b")
    _, post = send(a, n=1)
    deliver(post, b)
    waiter = b.add_waiter(frozenset({"c"}), None)
    pending, _ = send(b, ["a", "c"], n=2)
    b.take_actions()
    lost = ServiceUnavailable("gone", service="gateway", method="GET", url="/healthz")
    b.services_unreachable(lost, at(1))
    actions = b.take_actions()
    assert waiter in of_type(actions, Wake)[0].waiter_ids
    [done] = of_type(actions, Settled)
    assert done.report.message_id == pending and done.report.missing == ("a", "c")
    assert "could not be reached" in done.report.reasons["a"]
    assert numbers(take_all(b)) == [1]  # what was queued is still handed over
    with pytest.raises(ServiceUnavailable):
        b.mailbox.check_closed(frozenset({"c"}))
    with pytest.raises(ServiceUnavailable):
        b.mailbox.drop_ended({"c"})
    b.services_unreachable(None, at(2))  # reachable again: waits work as before
    b.mailbox.check_closed(frozenset({"c"}))
    with pytest.raises(PeerFailed):
        b.peer_ended("c", "failed")
        b.mailbox.check_closed(frozenset({"c"}))


# -- large messages: a reference in the broker, the payload in storage -------------------------


def stored_send(sender: NodeProtocol, n: int, size: int = 5_000_000) -> Post:
    from flame_async._protocol import stored_data

    ids = {"b": f"obj-{n}?remote_node_id={sender.node_id}"}
    sender.send(["b"], "data", stored_data(ids, size), now=at(0), timeout=30)
    [post] = posts(sender, PostKind.MESSAGE)
    return post


def test_a_reference_is_fetched_unseen_and_later_messages_wait_behind_it() -> None:
    a, b = node("a"), node("b")
    waiter = b.add_waiter(frozenset({"a"}), None)
    deliver(stored_send(a, 1), b)
    [fetch] = of_type(b.take_actions(), Fetch)
    assert (fetch.result_id, fetch.size) == ("obj-1?remote_node_id=a", 5_000_000)
    deliver(send(a, n=2)[1], b)
    assert not of_type(b.take_actions(), Wake)  # nothing to see yet: #2 waits behind #1
    assert b.take(None) is None and b.mailbox.peek() == []
    b.fetched(fetch.message, {"n": 1}, size=5_000_000)
    [wake] = of_type(b.take_actions(), Wake)
    assert waiter in wake.waiter_ids
    assert b.mailbox.backlog("a") == (2, 5_000_000 + len(wire(send(node("a"), n=2)[1])))
    assert numbers(take_all(b)) == [1, 2]
    assert b.mailbox.backlog("a") == (0, 0)


def test_an_unreadable_payload_raises_at_the_senders_next_take_then_the_rest_goes() -> None:
    a, b = node("a"), node("b")
    deliver(stored_send(a, 1), b)
    [fetch] = of_type(b.take_actions(), Fetch)
    deliver(send(a, n=2)[1], b)
    b.fetched(fetch.message, error=LookupError("gone"))
    with pytest.raises(LookupError, match="gone"):
        b.take(["a"], lambda m: m.category == "other")  # the error is news for any wait on a
    assert numbers(take_all(b)) == [2]


def test_a_fetched_request_goes_to_its_handler() -> None:
    a, b = node("a"), node("b")
    b.add_handler("data")
    deliver(stored_send(a, 1), b)
    [fetch] = of_type(b.take_actions(), Fetch)
    b.fetched(fetch.message, {"n": 1}, size=10)
    [run] = of_type(b.take_actions(), RunHandler)
    assert run.message.data == {"n": 1}
    assert b.mailbox.backlog("a") == (0, 0)


def test_a_reference_from_a_flamesdk_sender_is_plain_data() -> None:
    b = node("b")
    body = flamesdk_body("c", "c-1", _flame_async_stored={"ids": {"b": "x"}, "size": 1})
    assert b.receive(body, at(0)) is None
    assert [type(x).__name__ for x in b.take_actions()] == ["AcksPending"]
    [message] = take_all(b)
    assert "_flame_async_stored" in message.data


_FORKED_IDS = """
import os
from flame_async._protocol import NodeProtocol, ProtocolSettings

def new_id():
    return NodeProtocol("a", frozenset("ab"), ProtocolSettings(epoch="e")).outbox.new_id()[0]

read, write = os.pipe()
child = os.fork()
if child == 0:
    os.write(write, new_id().encode())
    os._exit(0)
os.close(write)
os.waitpid(child, 0)
print(os.read(read, 100).decode(), new_id())
"""


def test_message_ids_ignore_a_seeded_random_and_differ_after_a_fork() -> None:
    """Ids come from the SDK's own generator: an analysis that seeds ``random`` for its own
    reproducibility cannot make a restarted node repeat its ids, and a node forked from a
    parent (the fork server) draws other ids than the parent does (in a fresh interpreter:
    forking this test process, threads and all, could hang the child)."""
    random.seed(0)
    first = node("a").outbox.new_id()[0]
    random.seed(0)
    assert node("a").outbox.new_id()[0] != first

    done = subprocess.run(
        [sys.executable, "-c", _FORKED_IDS], capture_output=True, text=True, check=True
    )
    in_child, in_parent = done.stdout.split()
    assert in_child.rsplit("-", 1)[1] != in_parent.rsplit("-", 1)[1]
