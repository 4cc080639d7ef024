"""The delivery contract holds in a simulated network of nodes under every fault a broker has.

A hypothesis state machine runs 2-4 :class:`NodeProtocol` s on one simulated clock. Every
``Post`` a node emits becomes a pending broker POST that a rule answers: 2xx (the broker then
puts the body, verbatim, into the network once per recipient), 5xx, 4xx, or a lost answer (the
broker took it, the sender saw a timeout). The network delivers any item, so out of order, or
delivers it twice, or drops it. Nodes send concurrently, cancel sends, are ticked as time
passes and flush their acks late; their analyses take messages, register and drop waiters, and
wait for one message from each peer, then return or give up and put back what they took. One
node may be a flamesdk sender (no ``stream``, no settle notices).

After every step: nothing is handed over twice or without having been sent; a flame-async
sender's messages are handed over in its order and a take returns the sender's earliest queued
match; exactly the waiters a new message concerns are woken; a settled send names every
receiver once, with a reason for each missing one; a message acknowledged ``GAP`` seconds ago
is handed over. At the end (teardown) the faults stop, everything is delivered and time runs
out: every send is settled, nothing is held, and everything acknowledged was handed over.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from flame_async._protocol import (
    AcksPending,
    Instant,
    NodeProtocol,
    Post,
    PostFailure,
    PostKind,
    ProtocolSettings,
    Settled,
    Wake,
)
from flame_async._wire import StreamInfo
from flame_async.models import Message, SendReport

GAP = 3.0
TIMEOUTS = (1.0, 4.0, 8.0, 15.0)
STEPS = (0.05, 0.3, 1.0, 2.0, 3.5)
CATEGORIES = ("alpha", "beta")
BASE = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POST_OUTCOMES = ("ok", "ok", "ok", "ok", "5xx", "4xx", "lost answer")
NETWORK_FAULTS = ("deliver", "deliver", "deliver", "duplicate", "drop")
INDEX = st.integers(min_value=0, max_value=255)
EXAMPLES = 2000

Key = tuple[str, str]
"""(sender, message id)"""


def at(mono: float) -> Instant:
    """The simulated clock at ``mono`` seconds (wall time moves with it)."""
    return Instant(mono, BASE + timedelta(seconds=mono))


def protocol_settings(node: str) -> ProtocolSettings:
    return ProtocolSettings(
        resend_initial=1.0, resend_max=4.0, retry_initial=0.25, gap_timeout=GAP, epoch=f"e-{node}"
    )


def key(message: Message) -> Key:
    return (message.sender, message.id)


def matcher(category: str | None) -> Callable[[Message], bool] | None:
    if category is None:
        return None
    return lambda m: m.category == category


def pick(items: list[str], mask: int) -> list[str]:
    """The items whose bit is set in ``mask``."""
    return [item for i, item in enumerate(items) if mask >> i & 1]


def without_stream(body: bytes) -> bytes:
    """The body as a flamesdk sender would post it: no sequence numbers."""
    value = orjson.loads(body)
    del value["meta"]["stream"]
    return orjson.dumps(value)


@dataclasses.dataclass(frozen=True)
class Sent:
    """What the test knows about one original message."""

    sender: str
    targets: tuple[str, ...]
    seq: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Waiting:
    senders: frozenset[str] | None
    category: str | None

    def wants(self, message: Message) -> bool:
        if self.senders is not None and message.sender not in self.senders:
            return False
        return self.category is None or self.category == message.category


class Network(RuleBasedStateMachine):
    """2-4 nodes, a broker that loses, repeats and reorders, and a clock the test moves."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ticked = 0.0
        """When every node was last ticked."""
        self.names: list[str] = []
        self.nodes: dict[str, NodeProtocol] = {}
        self.flamesdk: str | None = None
        """The node whose messages carry no ``stream``, if any."""
        self.posts: list[tuple[str, Post]] = []
        """POSTs on their way to the broker: (poster, post)."""
        self.wire: list[tuple[str, bytes]] = []
        """Bodies the broker took, one item per recipient: (recipient, body)."""
        self.sent: dict[str, Sent] = {}
        self.posted_ok: set[str] = set()
        self.reports: dict[str, SendReport] = {}
        self.acks_due: set[str] = set()
        # per receiver:
        self.acked: dict[str, dict[Key, float]] = {}
        """Messages it acknowledged (not refused), with when the ack was first posted."""
        self.refused: dict[str, set[Key]] = {}
        self.handed: dict[str, set[Key]] = {}
        self.last_seq: dict[str, dict[str, int]] = {}
        """Per sender: the highest number handed over."""
        self.consumed: dict[str, set[Key]] = {}
        """Taken by the analysis for good."""
        self.outstanding: dict[str, list[tuple[int, Message]]] = {}
        """Taken by a wait that has not ended yet."""
        self.waiters: dict[str, dict[int, Waiting]] = {}
        self.woken: dict[str, set[int]] = {}

    # -- plumbing ----------------------------------------------------------------------------

    def seq(self, receiver: str, message: Message) -> int:
        return self.sent[message.id].seq[receiver]

    def drain(self, name: str) -> None:
        """Take a node's actions and perform them the way the shell would."""
        for action in self.nodes[name].take_actions():
            if isinstance(action, Post):
                self.check_post(name, action)
                if not (action.kind is PostKind.NOTICE and name == self.flamesdk):
                    self.posts.append((name, action))
            elif isinstance(action, Settled):
                self.check_settled(name, action)
            elif isinstance(action, Wake):
                self.woken[name].update(action.waiter_ids)
            elif isinstance(action, AcksPending):
                self.acks_due.add(name)
            else:  # user categories only: no handlers, no peer ends
                raise AssertionError(f"unexpected action {action!r}")

    def check_post(self, name: str, post: Post) -> None:
        meta = post.body["meta"]
        if post.kind is PostKind.MESSAGE:
            assert meta["akn_id"] is None
            assert meta["sender"] == name
            stream = StreamInfo.model_validate(meta["stream"])
            # every recipient is numbered (by name or by the shared "*" entry), nobody else
            assert set(stream.seq) - {"*"} <= set(post.recipients)
            for receiver in post.recipients:
                seq, floor = stream.seq_for(receiver), stream.floor_for(receiver)
                assert seq is not None and floor is not None and floor <= seq
            if meta.get("acked"):  # acks riding on a message to their sender
                (peer,) = post.recipients
                for message_id in meta["acked"]:
                    self.acked[name].setdefault((peer, message_id), self.now)
        elif post.kind is PostKind.ACK:
            assert set(post.body) == {"meta"}, "an ack carries no payload"
            assert meta["akn_id"] == name
            assert post.recipients == (meta["sender"],)
            if "refused" in meta:
                self.refused[name].add((meta["sender"], meta["id"]))
            else:
                for message_id in (meta["id"], *meta.get("acks", ())):
                    self.acked[name].setdefault((meta["sender"], message_id), self.now)
        else:
            assert meta["sender"] == name
            assert meta["category"] == "flame_async.settle"

    def check_settled(self, name: str, action: Settled) -> None:
        report = action.report
        sent = self.sent[report.message_id]
        assert sent.sender == name
        assert report.message_id not in self.reports, "a send settled twice"
        self.reports[report.message_id] = report
        assert sorted([*report.acked, *report.missing]) == sorted(sent.targets)
        assert set(report.reasons) == set(report.missing)
        assert all(report.reasons.values()), "every missing receiver has a reason"
        for receiver in report.acked:
            assert (name, report.message_id) in self.acked[receiver], "acked without an ack"
        assert action.never_posted == (report.message_id not in self.posted_ok)

    def take(self, name: str, senders: list[str] | None, category: str | None) -> Message | None:
        """Take like the shell does, checking it is the sender's earliest queued match."""
        taken = self.take_ranked(name, senders, category)
        return None if taken is None else taken[1]

    def take_ranked(
        self, name: str, senders: list[str] | None, category: str | None
    ) -> tuple[int, Message] | None:
        """Take with the rank a requeue needs, checking it is the sender's earliest match."""
        node = self.nodes[name]
        predicate = matcher(category)
        candidates = node.mailbox.peek(senders, predicate)
        taken = node.take_ranked(senders, predicate)
        if taken is None:
            assert not candidates
            return None
        message = taken[1]
        assert message in candidates
        if message.sender != self.flamesdk:
            numbers = sorted(self.seq(name, m) for m in candidates if m.sender == message.sender)
            assert self.seq(name, message) == numbers[0], (
                f"{name} took {message.sender}'s #{self.seq(name, message)} before {numbers}"
            )
        return taken

    def deliver(self, recipient: str, body: bytes) -> None:
        assert self.nodes[recipient].receive(body, at(self.now)) is None
        self.drain(recipient)

    def answer_post(self, index: int, outcome: str) -> None:
        poster, post = self.posts.pop(index % len(self.posts))
        if outcome in ("ok", "lost answer"):
            body = orjson.dumps(post.body)
            if poster == self.flamesdk and post.kind is PostKind.MESSAGE:
                body = without_stream(body)
            self.wire.extend((recipient, body) for recipient in post.recipients)
        if post.kind is not PostKind.MESSAGE:
            return  # acks and notices are best effort: nobody is told how they went
        node, now = self.nodes[poster], at(self.now)
        if outcome == "ok":
            assert post.message_id is not None
            self.posted_ok.add(post.message_id)
            node.post_done(post.post_id, now)
        elif outcome == "4xx":
            node.post_failed(post.post_id, PostFailure(False, "400 Bad Request"), now)
        else:
            node.post_failed(post.post_id, PostFailure(True, "503 or timed out"), now)
        self.drain(poster)

    def advance_to(self, when: float) -> None:
        self.now = max(self.now, when)
        for name in self.names:
            self.nodes[name].tick(at(self.now))
            self.drain(name)
        self.ticked = self.now

    def flush(self, name: str) -> None:
        self.acks_due.discard(name)
        self.nodes[name].flush_acks()
        self.drain(name)

    # -- setup -------------------------------------------------------------------------------

    @initialize(count=st.integers(min_value=2, max_value=4), flamesdk=st.booleans())
    def start(self, count: int, flamesdk: bool) -> None:
        self.names = [f"n{i}" for i in range(count)]
        if flamesdk:
            self.flamesdk = self.names[-1]
        for name in self.names:
            self.nodes[name] = NodeProtocol(name, self.names, protocol_settings(name))
            self.acked[name] = {}
            self.refused[name] = set()
            self.handed[name] = set()
            self.last_seq[name] = {}
            self.consumed[name] = set()
            self.outstanding[name] = []
            self.waiters[name] = {}
            self.woken[name] = set()

    # -- senders -----------------------------------------------------------------------------

    @rule(
        sender=INDEX,
        receivers=st.integers(min_value=1, max_value=7),
        category=st.sampled_from(CATEGORIES),
        timeout=st.sampled_from(TIMEOUTS),
    )
    def node_sends(self, sender: int, receivers: int, category: str, timeout: float) -> None:
        name = self.names[sender % len(self.names)]
        others = [n for n in self.names if n != name]
        chosen = pick(others, receivers) or others[:1]
        node = self.nodes[name]
        data = {"n": len(self.sent)}
        message_id = node.send(chosen, category, data, now=at(self.now), timeout=timeout)
        self.sent[message_id] = Sent(name, tuple(chosen), dict(node.outbox.sending[message_id].seq))
        self.drain(name)

    @precondition(lambda self: any(n.outbox.sending for n in self.nodes.values()))
    @rule(index=INDEX, cancelled=st.sampled_from((True, False, False)))
    def caller_may_cancel_a_send(self, index: int, cancelled: bool) -> None:
        if not cancelled:
            return
        unsettled = [(n, m) for n in self.names for m in sorted(self.nodes[n].outbox.sending)]
        name, message_id = unsettled[index % len(unsettled)]
        self.nodes[name].abandon(message_id, at(self.now))
        self.drain(name)

    # -- the broker and the clock ------------------------------------------------------------

    @precondition(lambda self: self.posts)
    @rule(index=INDEX, outcome=st.sampled_from(POST_OUTCOMES))
    def broker_answers_a_post(self, index: int, outcome: str) -> None:
        self.answer_post(index, outcome)

    @precondition(lambda self: self.wire)
    @rule(index=INDEX, fault=st.sampled_from(NETWORK_FAULTS))
    def broker_delivers(self, index: int, fault: str) -> None:
        index %= len(self.wire)
        recipient, body = self.wire[index]
        if fault != "duplicate":
            del self.wire[index]
        if fault != "drop":
            self.deliver(recipient, body)

    @precondition(lambda self: self.acks_due)
    @rule(index=INDEX)
    def node_flushes_acks(self, index: int) -> None:
        due = sorted(self.acks_due)
        self.flush(due[index % len(due)])

    @rule(step=st.sampled_from(STEPS))
    def time_passes(self, step: float) -> None:
        self.advance_to(self.now + step)

    @precondition(lambda self: self.wire or self.posts)
    @rule(step=st.sampled_from(STEPS))
    def time_passes_with_traffic_under_way(self, step: float) -> None:
        """(Weighs time: gaps expire and resends race with late deliveries.)"""
        self.advance_to(self.now + step)

    # -- the analysis ------------------------------------------------------------------------

    @rule(node=INDEX, sender=INDEX, category=st.sampled_from((None, *CATEGORIES)))
    def analysis_takes_a_message(self, node: int, sender: int, category: str | None) -> None:
        name = self.names[node % len(self.names)]
        if self.outstanding[name]:
            return  # one wait at a time per node: concurrent waits on one sender race
        others = [n for n in self.names if n != name]
        senders = None if sender >= len(others) else [others[sender]]
        if (message := self.take(name, senders, category)) is not None:
            self.consumed[name].add(key(message))

    @rule(node=INDEX, category=st.sampled_from((None, *CATEGORIES)))
    def analysis_waits_for_each_peer(self, node: int, category: str | None) -> None:
        """``await_messages``: one message from each peer, taken as they come."""
        name = self.names[node % len(self.names)]
        if self.outstanding[name]:
            return
        for sender in [n for n in self.names if n != name]:
            if (taken := self.take_ranked(name, [sender], category)) is not None:
                self.outstanding[name].append(taken)

    @precondition(lambda self: any(self.outstanding.values()))
    @rule(index=INDEX, cancelled=st.booleans())
    def analysis_wait_ends(self, index: int, cancelled: bool) -> None:
        """The wait returns what it took, or is cancelled and puts it back."""
        busy = [name for name in self.names if self.outstanding[name]]
        name = busy[index % len(busy)]
        taken, self.outstanding[name] = self.outstanding[name], []
        for rank, message in taken:
            if cancelled:
                self.nodes[name].requeue(message, rank)
            else:
                self.consumed[name].add(key(message))

    @rule(node=INDEX, senders=INDEX, category=st.sampled_from((None, *CATEGORIES)))
    def analysis_registers_a_waiter(self, node: int, senders: int, category: str | None) -> None:
        name = self.names[node % len(self.names)]
        chosen = frozenset(pick([n for n in self.names if n != name], senders)) or None
        waiter_id = self.nodes[name].add_waiter(chosen, category)
        self.waiters[name][waiter_id] = Waiting(chosen, category)

    @precondition(lambda self: any(self.waiters.values()))
    @rule(index=INDEX)
    def analysis_drops_a_waiter(self, index: int) -> None:
        registered = [(name, w) for name in self.names for w in sorted(self.waiters[name])]
        name, waiter_id = registered[index % len(registered)]
        self.nodes[name].remove_waiter(waiter_id)
        del self.waiters[name][waiter_id]

    # -- the contract ------------------------------------------------------------------------

    @invariant()
    def contract_holds(self) -> None:
        for name in self.names:
            self.drain(name)
        for name in self.names:
            self.check_receiver(name)

    def check_receiver(self, name: str) -> None:
        node = self.nodes[name]
        queued = node.mailbox.peek()
        queued_keys = {key(m) for m in queued}
        outstanding = {key(m) for _, m in self.outstanding[name]}
        consumed = self.consumed[name]
        assert len(queued_keys) == len(queued), f"{name} queued a message twice"
        assert not queued_keys & consumed, f"{name} queued a message it handed over before"
        assert not queued_keys & outstanding
        assert self.handed[name] <= queued_keys | consumed | outstanding

        new = [m for m in queued if key(m) not in self.handed[name]]
        self.handed[name].update(key(m) for m in new)
        assert node.stats["handed_over"] == len(self.handed[name]), (
            f"{name} handed over {node.stats['handed_over']} times, "
            f"{len(self.handed[name])} distinct messages"
        )
        for message in new:
            sent = self.sent.get(message.id)
            assert sent is not None and sent.sender == message.sender, (
                f"{name} handed over {key(message)}, which was never sent"
            )
            assert name in sent.targets, f"{name} handed over {key(message)}, sent to others"
        self.check_order(name, new)

        assert not self.handed[name] & self.refused[name], f"{name} refused what it took"
        for acked, when in self.acked[name].items():
            if when + GAP <= self.ticked:
                assert acked in self.handed[name], (
                    f"{name} acknowledged {acked} at {when} but had not handed it over at "
                    f"{self.ticked}"
                )

        waiters = self.waiters[name]
        woken, self.woken[name] = self.woken[name], set()
        assert woken <= set(waiters), f"{name} woke a waiter that is gone"
        for waiter_id, waiting in waiters.items():
            wanted = any(waiting.wants(m) for m in new)
            assert wanted == (waiter_id in woken), (
                f"{name}: {waiting} woken={waiter_id in woken} for {[key(m) for m in new]}"
            )

    def check_order(self, name: str, new: list[Message]) -> None:
        """Each flame-async sender's new messages come after those handed over before."""
        last = self.last_seq[name]
        numbers: dict[str, list[int]] = {}
        for message in new:
            if message.sender != self.flamesdk:
                numbers.setdefault(message.sender, []).append(self.seq(name, message))
        for sender, seqs in numbers.items():
            assert min(seqs) > last.get(sender, 0), (
                f"{name} handed over {sender}'s {sorted(seqs)} after #{last.get(sender, 0)}"
            )
            last[sender] = max(seqs)

    # -- the end -----------------------------------------------------------------------------

    def teardown(self) -> None:
        if sys.exc_info()[1] is not None or not self.names:
            return  # a rule or check failed: that is the report
        for name, taken in self.outstanding.items():  # the waits return what they took
            self.consumed[name].update(key(m) for _, m in taken)
            taken.clear()
        horizon = self.now + max(TIMEOUTS) + GAP + 1.0
        while True:
            while self.posts or self.wire or self.acks_due:
                while self.posts:
                    self.answer_post(0, "ok")
                while self.wire:
                    self.deliver(*self.wire.pop(0))
                for name in sorted(self.acks_due):
                    self.flush(name)
            self.contract_holds()
            if self.now >= horizon:
                break
            deadlines = [d for n in self.nodes.values() if (d := n.next_deadline()) is not None]
            self.advance_to(min([*deadlines, horizon]))
        self.check_quiescent()

    def check_quiescent(self) -> None:
        assert set(self.reports) == set(self.sent), "every send settles"
        for name, node in self.nodes.items():
            assert not node.outbox.sending, f"{name} has unsettled sends"
            assert node.held_count() == 0, f"{name} still holds messages"
            for acked in self.acked[name]:
                assert acked in self.handed[name], f"{name} acknowledged {acked}, never took it"
        for message_id, report in self.reports.items():
            sender = self.sent[message_id].sender
            for receiver in report.acked:
                assert (sender, message_id) in self.handed[receiver]
        for name in self.names:  # the analysis takes the rest, each sender's in its order
            while (message := self.take(name, None, None)) is not None:
                self.consumed[name].add(key(message))


Network.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(120)
def test_delivery_contract_holds_in_a_faulty_network() -> None:
    Network.TestCase().runTest()
