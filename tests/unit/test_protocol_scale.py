"""What keeps a node's cost per message flat as N grows: resend timeouts from measured round
trips, compact stream maps, acks riding on answers, one shared roster, waits that look only at
senders with news."""

from __future__ import annotations

import orjson
import pytest

from flame_async._protocol import NodeProtocol, Post, PostKind, ProtocolSettings, Settled
from flame_async._protocol._outbox import RoundTrips
from flame_async._roster import Peers, Roster, cached_roster, remember_roster
from flame_async._wire import StreamInfo, compact_numbers
from flame_async.models import NodeRole, Participant

from .test_protocol import (
    acks,
    at,
    deliver,
    flamesdk_body,
    node,
    of_type,
    posts,
    send,
    settled,
    take_all,
)

# -- resend timeouts -------------------------------------------------------------------------


def test_the_timeout_is_the_initial_one_until_a_round_trip_is_measured() -> None:
    rtt = RoundTrips(initial=3.0, minimum=0.5, maximum=10.0)
    assert rtt.timeout == 3.0
    rtt.sample(0.2)  # smoothed 0.2, deviation 0.1: 0.2 + 4 x 0.1 = 0.6
    assert rtt.timeout == pytest.approx(0.6)


def test_the_timeout_follows_slower_round_trips_and_never_drops_below_the_minimum() -> None:
    rtt = RoundTrips(initial=3.0, minimum=0.5, maximum=10.0)
    for _ in range(50):
        rtt.sample(0.001)
    assert rtt.timeout == 0.5
    for _ in range(50):
        rtt.sample(2.0)
    assert 2.0 < rtt.timeout <= 10.0


def test_a_timeout_doubles_the_next_one_until_a_new_sample() -> None:
    rtt = RoundTrips(initial=1.0, minimum=0.5, maximum=10.0)
    rtt.timed_out()
    assert rtt.timeout == 2.0
    rtt.timed_out()
    rtt.timed_out()
    assert rtt.timeout == 8.0
    rtt.timed_out()
    assert rtt.timeout == 10.0  # capped
    rtt.sample(0.2)
    assert rtt.timeout == pytest.approx(0.6)


def test_resends_wait_for_the_measured_round_trip_not_a_fixed_second() -> None:
    """b acknowledges after 2 s each time: once measured, a's next message is not resent at
    1 s (the fixed timer used to resend every copy of a round that took more than 1 s)."""
    a, b = node("a", resend_initial=3.0), node("b")
    for i in range(5):  # each acked after 2 s: the timeout grows past 2 s
        start = 10.0 * i
        message_id, post = send(a, now=start, n=i)
        a.post_done(post.post_id, at(start))
        deliver(post, b, now=start)
        [ack] = acks(b)
        a.receive(orjson.dumps(ack.body), at(start + 2.0))
        assert settled(a)[message_id].report.ok
    assert a.outbox.rtt.timeout > 2.0
    _, post = send(a, now=100.0, n=5)
    a.post_done(post.post_id, at(100.0))
    a.tick(at(102.0))
    assert not posts(a, PostKind.MESSAGE), "resent before the measured round trip"


def test_acks_of_resent_messages_are_no_samples() -> None:
    a, b = node("a", resend_initial=1.0), node("b")
    _, post = send(a, now=0.0)
    a.post_done(post.post_id, at(0.0))
    a.tick(at(1.0))  # no ack in time: resent, the timeout backs off
    [again] = posts(a, PostKind.MESSAGE)
    assert a.outbox.rtt.timeout == 2.0
    deliver(again, b, now=1.0)
    [ack] = acks(b)
    a.receive(orjson.dumps(ack.body), at(1.01))
    assert a.outbox.rtt.samples == 0  # ambiguous (Karn): the back-off stays


# -- compact stream maps ---------------------------------------------------------------------


def test_numbers_that_agree_travel_as_one_entry() -> None:
    assert compact_numbers({f"n{i}": 7 for i in range(1000)}) == {"*": 7}
    assert compact_numbers({"a": 3, "b": 3, "c": 4}) == {"*": 3, "c": 4}
    assert compact_numbers({"a": 1}) == {"a": 1}
    assert compact_numbers({"a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_a_receiver_reads_its_own_entry_before_the_shared_one() -> None:
    stream = StreamInfo(epoch="e", seq={"*": 3, "c": 4}, floor={"*": 2})
    assert (stream.seq_for("b"), stream.seq_for("c")) == (3, 4)
    assert stream.floor_for("c") == 2
    assert StreamInfo(epoch="e", seq={"b": 1}).seq_for("c") is None


def test_a_fan_out_copy_does_not_grow_with_the_receivers() -> None:
    names = [f"n{i:04}" for i in range(1000)]
    sender = NodeProtocol("n0000", names, ProtocolSettings(epoch="e"))
    sender.send(names[1:], "go", {"round": 1}, now=at(0.0), timeout=30.0)
    [post] = [p for p in of_type(sender.take_actions(), Post) if p.kind is PostKind.MESSAGE]
    assert len(orjson.dumps(post.body)) < 600


def test_receivers_with_diverging_numbers_keep_their_order() -> None:
    a, b, c = node("a"), node("b"), node("c")
    _, first = send(a, ("b",), n=0)  # b is one ahead of c from now on
    _, both = send(a, ("b", "c"), n=1)
    assert both.body["meta"]["stream"]["seq"] == {"b": 2, "c": 1}  # no value shared: named
    deliver(both, b)
    deliver(both, c)
    assert [m.data["n"] for m in take_all(c)] == [1]
    assert take_all(b) == []  # held: 1 before 2
    deliver(first, b)
    assert [m.data["n"] for m in take_all(b)] == [0, 1]


# -- acks riding on answers ------------------------------------------------------------------


def test_an_answer_carries_the_ack_of_what_it_answers() -> None:
    a, b = node("a"), node("b")
    go_id, go = send(a, ("b",), category="go", n=1)
    a.post_done(go.post_id, at(0.0))
    deliver(go, b)
    b.take_actions()
    take_all(b)
    _, answer = send(b, ("a",), category="answer", n=2)
    assert answer.body["meta"]["acked"] == [go_id]
    assert acks(b) == [], "no separate ack POST"
    deliver(answer, a, now=0.1)
    report = settled(a)[go_id].report
    assert report.ok and report.acked == ("b",)
    assert [m.data["n"] for m in take_all(a)] == [2]


def test_a_flamesdk_peer_keeps_its_separate_acks() -> None:
    """b never numbered a message to a: it may be flamesdk, which reads no meta.acked."""
    a = node("a")
    a.receive(flamesdk_body("b", "b-1", n=1), at(0.0))
    a.take_actions()
    _, post = send(a, ("b",), n=2)
    assert "acked" not in post.body["meta"]
    assert len(acks(a)) == 1


def test_a_fan_out_carries_no_acks() -> None:
    a, b = node("a"), node("b")
    _, go = send(b, ("a",), n=1)
    deliver(go, a)
    a.take_actions()
    _, post = send(a, ("b", "c"), n=2)
    assert "acked" not in post.body["meta"]
    assert len(acks(a)) == 1


def test_a_lost_answer_is_resent_with_its_acks() -> None:
    a, b = node("a"), node("b", resend_initial=1.0)
    go_id, go = send(a, ("b",), n=1)
    deliver(go, b)
    b.take_actions()
    _, answer = send(b, ("a",), n=2)
    b.post_done(answer.post_id, at(0.0))
    b.tick(at(1.0))  # lost: b resends it
    [again] = posts(b, PostKind.MESSAGE)
    assert again.body["meta"]["acked"] == [go_id]
    deliver(again, a, now=1.0)
    assert any(
        s.report.message_id == go_id and s.report.ok for s in of_type(a.take_actions(), Settled)
    )


# -- one roster per process ------------------------------------------------------------------


def test_nodes_that_get_the_same_participants_share_one_roster() -> None:
    body = b'[{"nodeId":"n1","nodeType":"aggregator"},{"nodeId":"n2","nodeType":"default"}]'
    roster = Roster(
        [
            Participant(node_id="n2", role=NodeRole.DEFAULT),
            Participant(node_id="n1", role=NodeRole.AGGREGATOR),
        ]
    )
    remember_roster(body, roster)
    assert cached_roster(bytes(body)) is roster  # equal bytes, not only the same object
    one, two = roster.without("n1"), roster.without("n2")
    assert (list(one), list(two)) == (["n2"], ["n1"])
    assert "n1" not in one and "n2" in one and len(one) == 1
    assert one.participants() == [Participant(node_id="n2", role=NodeRole.DEFAULT)]
    assert two.roles(NodeRole.AGGREGATOR) == ["n1"]
    assert one - {"n2"} == frozenset()


def test_a_peers_view_is_a_set() -> None:
    peers = Peers(
        Roster(Participant(node_id=f"n{i}", role=NodeRole.DEFAULT) for i in range(4)), "n0"
    )
    assert frozenset(peers) == {"n1", "n2", "n3"}
    assert peers & {"n1", "n0"} == {"n1"}
    assert repr(peers) == "Peers(3 nodes besides 'n0')"


# -- waits look at senders with news ---------------------------------------------------------


def test_a_wait_learns_which_senders_had_news() -> None:
    a, b, c = node("a"), node("b"), node("c")
    waiter = a.add_waiter(None, "x")
    _, post = send(b, ("a",), category="x", n=1)
    deliver(post, a)
    _, other = send(c, ("a",), category="y", n=2)  # another category: no news for this wait
    deliver(other, a)
    assert a.remove_waiter(waiter) == {"b"}
    everyone = a.add_waiter(None, None)
    a.peer_ended("c", "failed", "boom")
    assert a.remove_waiter(everyone) == {"c"}


# -- end notices to ended nodes --------------------------------------------------------------


def test_an_end_notice_to_a_node_that_has_ended_is_settled_not_resent() -> None:
    """a's analysis_finished reached b, whose ack was lost; b has ended and refuses resends.
    Once a learns that b ended, the notice has done its work."""
    a = node("a")
    message_id = a.send(["b", "c"], "analysis_finished", {}, now=at(0.0), timeout=30.0)
    a.take_actions()
    a.peer_ended("b", "executed", "reported by the platform")
    assert message_id not in settled(a)  # c has not acknowledged yet
    a.peer_ended("c", "executed")
    report = settled(a)[message_id].report
    assert report.ok and set(report.acked) == {"b", "c"}


def test_other_messages_to_an_ended_node_keep_waiting_for_their_ack() -> None:
    """An ended node may have taken a message whose ack was lost: no report of it missing."""
    a = node("a")
    message_id = a.send(["b"], "data", {"n": 1}, now=at(0.0), timeout=30.0)
    a.take_actions()
    a.peer_ended("b", "executed")
    assert message_id not in settled(a)
