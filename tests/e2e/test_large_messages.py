"""Messages larger than the broker carries inline travel through the storage service.

The sender stores the payload once per receiver and the broker carries a small reference; the
receiver reads the payload back before it hands the message over, so the analysis gets the same
message as for a small one, in the sender's order. Where that cannot work (a flamesdk receiver,
or the path switched off) the send fails up front, before any I/O.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from flame_async import FlameSDK, Message, MessageTooLarge, TransportError
from flame_async._transport import Request, Transport
from flame_async.local import LocalNode

from .conftest import running
from .faults import FaultyTransport

MB = 1 << 20


def blob(size: int, fill: str = "x") -> dict[str, Any]:
    return {"blob": fill * size}


def broker_copies(platform: Any, message_id: str, sender: str) -> list[Any]:
    """The broker's deliveries of a message (its acks travel the other way)."""
    return [e for e in platform.deliveries if e.message_id == message_id and e.sender == sender]


@pytest.mark.timeout(120)
async def test_a_50_mb_message_reaches_its_receiver_once_and_the_broker_carries_a_reference(
    transport: str,
) -> None:
    payload = blob(50 * MB)
    # resends after 30 s only: every broker copy below is a first try
    async with running(2, transport=transport, sdk={"resend_initial": 30.0}) as (platform, nodes):
        a, b = nodes
        report = await a.send_message("node-2", payload, category="model", timeout=60)
        message = await b.await_message("node-1", category="model", timeout=60)

    assert report.acked == ("node-2",)
    assert message.data == payload
    assert message.id == report.message_id and message.category == "model"
    [copy] = broker_copies(platform, report.message_id, "node-1")  # one POST, not one per resend
    assert copy.outcome == "delivered"
    assert copy.size < 4096  # the broker carried the reference, not 50 MB


async def test_large_and_small_messages_keep_the_senders_order(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        for n, size in enumerate((10, 3 * MB, 10, 2 * MB, 10), start=1):
            await a.send_message("node-2", {"n": n, **blob(size)}, category="data")
        got = [await b.await_message("node-1", timeout=30) for _ in range(5)]
    assert [m.data["n"] for m in got] == [1, 2, 3, 4, 5]
    assert [len(m.data["blob"]) for m in got] == [10, 3 * MB, 10, 2 * MB, 10]


async def test_predicates_and_handlers_see_the_real_data(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):

        @b.handler("measure")
        async def measure(request: Message) -> dict[str, Any]:
            return {"length": len(request.data["blob"])}

        await a.send_message("node-2", {"round": 1, **blob(2 * MB)}, category="data")
        await a.send_message("node-2", {"round": 2, **blob(2 * MB)}, category="data")
        # a predicate over the data (the runtime's own waits use them) sees the payload
        second = await b._require().await_message(
            "node-1", category="data", predicate=lambda m: m.data["round"] == 2, timeout=30
        )
        reply = await a.send_message_and_wait_for_response(
            "node-2", blob(3 * MB), category="measure", timeout=30
        )
        # and a large reply travels the same way
        first = await b.await_message("node-1", category="data", timeout=30)
    assert second.data["round"] == 2 and len(second.data["blob"]) == 2 * MB
    assert first.data["round"] == 1
    assert reply.data == {"length": 3 * MB}


async def test_switched_off_the_send_fails_before_any_io(transport: str) -> None:
    sdk = {"large_messages": "refuse", "inline_message_limit": 64 * 1024}
    async with running(2, transport=transport, sdk=sdk) as (platform, (a, _)):
        before = len(platform.deliveries)
        with pytest.raises(MessageTooLarge) as refused:
            await a.send_message("node-2", blob(100 * 1024), category="data")
        assert len(platform.deliveries) == before
        small = await a.send_message("node-2", blob(1000), category="data")
    assert refused.value.size > refused.value.limit
    assert "large_messages='refuse'" in str(refused.value)
    assert "send_intermediate_result()" in str(refused.value)
    assert small.ok


async def test_a_flamesdk_receiver_gets_a_clear_error_up_front(transport: str) -> None:
    async with running(3, transport=transport) as (platform, (a, _, _)):
        # node-3 spoke without message numbers: it runs flamesdk
        a._require().protocol.legacy_senders.add("node-3")
        before = len(platform.deliveries)
        with pytest.raises(MessageTooLarge) as refused:
            await a.send_message(None, blob(2 * MB), category="data")
        assert len(platform.deliveries) == before
    assert "node-3 runs flamesdk" in str(refused.value)


async def test_a_payload_that_cannot_be_read_is_an_error_for_the_analysis_not_a_loss(
    transport: str,
) -> None:
    def reading_fails(node: LocalNode, inner: Transport) -> Transport:
        if node.node_id != "node-2":
            return inner

        def hurt(request: Request) -> bool:
            return request.method == "GET" and "/storage/intermediate/" in request.path

        return FaultyTransport(inner, random.Random(7), rate=1.0, max_delay=0, hurt=hurt)

    async with running(2, transport=transport, wrap=reading_fails) as (_, (a, b)):
        await a.send_message("node-2", {"n": 1, **blob(2 * MB)}, category="data")
        await a.send_message("node-2", {"n": 2}, category="data")
        with pytest.raises(TransportError) as failed:
            await b.await_message("node-1", timeout=30)
        after = await b.await_message("node-1", timeout=30)
    notes = "\n".join(getattr(failed.value, "__notes__", []))
    assert "large messages travel through the storage service" in notes
    assert "from node-1" in notes
    assert after.data == {"n": 2}  # the error took its place in the order; nothing else lost


async def test_a_large_message_to_several_receivers_is_stored_for_each(transport: str) -> None:
    payload = blob(2 * MB, fill="y")
    async with running(3, transport=transport) as (_, (a, b, c)):
        report = await a.send_message(None, payload, category="data")
        got = await asyncio.gather(
            b.await_message("node-1", timeout=30), c.await_message("node-1", timeout=30)
        )
    assert report.acked == ("node-2", "node-3")
    assert [m.data == payload for m in got] == [True, True]


def test_reserved_key_is_refused() -> None:
    from flame_async._protocol import NodeProtocol

    with pytest.raises(Exception, match="_flame_async_stored"):
        NodeProtocol.encode_payload({"_flame_async_stored": {}})


def test_bad_options_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="inline_message_limit"):
        FlameSDK(inline_message_limit=0)
    with pytest.raises(ValueError, match="large_messages"):
        FlameSDK(large_messages="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unreachable_grace"):
        FlameSDK(unreachable_grace=0)
