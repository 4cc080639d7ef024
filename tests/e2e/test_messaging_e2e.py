"""Messaging end to end over real HTTP on the local platform."""

from __future__ import annotations

import anyio
import pytest

from flame_async import (
    FlameSDK,
    InvalidArgument,
    Message,
    MessageTimeout,
    NodeRole,
    NodeStatus,
    PeerFailed,
    RemoteError,
    UnknownNodeError,
)

from .conftest import running

pytestmark = pytest.mark.slow


async def test_five_nodes_all_to_all_exactly_once_in_per_sender_order(transport: str) -> None:
    per_peer = 200
    async with running(5, transport=transport) as (_, flames):
        ids = [f.node_id for f in flames]
        received: dict[str, dict[str, list[int]]] = {i: {j: [] for j in ids if j != i} for i in ids}

        async def send_all(flame: FlameSDK) -> None:
            # concurrent sends (16 in flight per sender) so the broker's deliveries interleave
            limit = anyio.Semaphore(16)

            async def one(peer: str, i: int) -> None:
                async with limit:
                    report = await flame.send_message(peer, {"i": i}, category="load", timeout=30)
                    assert report.ok, report

            async with anyio.create_task_group() as tg:
                for i in range(per_peer):
                    for peer in flame.get_participant_ids():
                        tg.start_soon(one, peer, i)

        async def receive_all(flame: FlameSDK) -> None:
            for _ in range(per_peer * (len(ids) - 1)):
                message = await flame.await_message(category="load", timeout=30)
                received[flame.node_id][message.sender].append(message.data["i"])

        async with anyio.create_task_group() as tg:
            for flame in flames:
                tg.start_soon(send_all, flame)
                tg.start_soon(receive_all, flame)

        for node, senders in received.items():
            for sender, numbers in senders.items():
                assert numbers == list(range(per_peer)), (node, sender)
        for flame in flames:
            assert flame.get_list_of_messages() == []  # nothing handed over twice or left over


async def test_participants_roles_and_identity(transport: str) -> None:
    async with running(["agg", "b", "c"], aggregator="agg", transport=transport) as (
        platform,
        flames,
    ):
        agg, b, _ = flames
        assert agg.role is NodeRole.AGGREGATOR and agg.is_aggregator
        assert b.role is NodeRole.DEFAULT
        assert [p.node_id for p in b.get_participants()] == ["agg", "c"]
        assert b.get_aggregator_id() == "agg"
        assert agg.get_aggregator_id() == "agg"
        assert b.analysis_id == platform.analysis_id


async def test_timed_out_wait_loses_nothing(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        with pytest.raises(MessageTimeout) as info:
            await b.await_message(a.node_id, category="late", timeout=0.05)
        assert info.value.waiting_for == (a.node_id,)
        await a.send_message(b.node_id, {"v": 1}, category="late")
        message = await b.await_message(a.node_id, category="late", timeout=5)
        assert message.data == {"v": 1}


async def test_cancelled_wait_loses_nothing(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.await_message, a.node_id)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        await a.send_message(b.node_id, {"v": 2}, category="x")
        assert (await b.await_message(a.node_id, timeout=5)).data == {"v": 2}


async def test_wait_cancelled_just_as_the_message_arrives_keeps_it(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        for attempt in range(20):
            with anyio.move_on_after(0.001 * attempt):
                await a.send_message(b.node_id, {"n": attempt}, category="race")
                await b.await_message(a.node_id, category="race", timeout=5)
        got = {m.data["n"] for m in b.get_list_of_messages(category="race")}
        taken = set()
        while b.get_list_of_messages(category="race"):
            taken.add((await b.await_message(category="race", timeout=1)).data["n"])
        assert got == taken


async def test_multi_wait_returns_partial_results(transport: str) -> None:
    async with running(3, transport=transport) as (_, (a, b, c)):
        await b.send_message(a.node_id, {"v": "b"}, category="round")
        answers = await a.await_messages([b.node_id, c.node_id], category="round", timeout=0.2)
        assert answers[b.node_id] is not None and answers[c.node_id] is None


async def test_cancelled_multi_wait_puts_taken_messages_back(transport: str) -> None:
    async with running(3, transport=transport) as (_, (a, b, c)):
        await b.send_message(a.node_id, {"v": "b"}, category="round")
        with anyio.move_on_after(0.1):
            await a.await_messages([b.node_id, c.node_id], category="round", timeout=5)
        assert [m.sender for m in a.get_list_of_messages(category="round")] == [b.node_id]


async def test_send_rejects_bad_receivers_and_data_before_io(transport: str) -> None:
    async with running(2, transport=transport) as (platform, (a, _)):
        before = len(platform.deliveries)
        with pytest.raises(UnknownNodeError):
            await a.send_message(a.node_id, {}, category="x")
        with pytest.raises(UnknownNodeError, match="not participants"):
            await a.send_message(["nobody"], {}, category="x")
        with pytest.raises(InvalidArgument, match="meta"):
            await a.send_message(platform.nodes[1].node_id, {"meta": 1}, category="x")
        with pytest.raises(InvalidArgument, match="JSON"):
            await a.send_message(platform.nodes[1].node_id, {"x": object()}, category="x")
        with pytest.raises(InvalidArgument, match="no receivers"):
            await a.send_message([], {}, category="x")
        assert len(platform.deliveries) == before


async def test_unreachable_receiver_is_reported_missing(transport: str) -> None:
    async with running(3, start=2, transport=transport) as (platform, (a, _)):
        report = await a.send_message(platform.nodes[2].node_id, {}, category="x", timeout=0.5)
        assert report.missing == (platform.nodes[2].node_id,) and not report.ok


async def test_request_response_with_handlers(transport: str) -> None:
    async with running(3, transport=transport) as (_, (agg, b, c)):
        for node in (b, c):

            @node.handler("square")
            async def square(request: Message, node: FlameSDK = node) -> dict[str, object]:
                return {"value": request.data["x"] ** 2, "by": node.node_id}

        reply = await agg.send_message_and_wait_for_response(b.node_id, {"x": 7}, category="square")
        assert reply.data == {"value": 49, "by": b.node_id}
        assert reply.reply_to is not None
        replies = await agg.send_message_and_wait_for_responses(None, {"x": 3}, category="square")
        assert {n: m.data["by"] for n, m in replies.items() if m} == {
            b.node_id: b.node_id,
            c.node_id: c.node_id,
        }


async def test_failing_handler_sends_the_error_back(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):

        @b.handler("boom")
        async def boom(request: Message) -> dict[str, object]:
            raise ValueError("bad input")

        with pytest.raises(RemoteError, match="ValueError: bad input"):
            await a.send_message_and_wait_for_response(b.node_id, {}, category="boom", timeout=5)


async def test_messages_iterator_ends_when_idle(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        for i in range(3):
            await a.send_message(b.node_id, {"i": i}, category="it")
        seen = [m.data["i"] async for m in b.messages(category="it", idle_timeout=0.2)]
        assert seen == [0, 1, 2]


async def test_status_ping_online_and_not_connected(transport: str) -> None:
    async with running(3, start=2, transport=transport) as (platform, (a, b)):
        statuses = await a.ask_status_nodes(timeout=0.5)
        assert statuses == {
            b.node_id: NodeStatus.ONLINE,
            platform.nodes[2].node_id: NodeStatus.NOT_CONNECTED,
        }
        assert await a.ready_check(timeout=0.5) == {
            b.node_id: True,
            platform.nodes[2].node_id: False,
        }


async def test_peer_that_raises_ends_waits_on_it_early(transport: str) -> None:
    async with running(2, start=1, transport=transport) as (platform, (a,)):
        b_node = platform.nodes[1]

        async def node_b() -> None:
            with pytest.raises(RuntimeError):
                async with FlameSDK(b_node.config(), transport=platform.transport_for(b_node)) as b:
                    await b.send_message(a.node_id, {"hello": 1}, category="greet")
                    raise RuntimeError("node b crashed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(node_b)
            greeting = await a.await_message(category="greet", timeout=10)
            with anyio.fail_after(5), pytest.raises(PeerFailed, match="node b crashed") as info:
                await a.await_message(greeting.sender, timeout=60)
        assert info.value.node_id == greeting.sender and info.value.status == "failed"
        assert platform.status(greeting.sender) == "failed"


async def test_analysis_finished_reaches_peers(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        assert await a.analysis_finished(timeout=5)
        await b.wait_until_finished(timeout=5)
        with pytest.raises(PeerFailed):
            await b.await_message(a.node_id, timeout=5)


async def test_none_as_receivers_means_every_other_node(transport: str) -> None:
    """The how-to's ``send_message(None, ...)``, and the same for intermediate results."""
    async with running(3, transport=transport) as (_, (a, b, c)):
        report = await a.send_message(None, {"model": 1}, category="model")
        assert sorted(report.acked) == sorted([b.node_id, c.node_id]) and report.ok
        for peer in (b, c):
            message = await peer.await_message(a.node_id, category="model", timeout=10)
            assert message.data == {"model": 1}
        sent = await a.send_intermediate_result(None, {"weights": [1, 2, 3]})
        assert sent.ok and len(sent.acked) == 2
        for peer in (b, c):
            value = await peer.await_intermediate_result(a.node_id, timeout=10)
            assert value == {"weights": [1, 2, 3]}
