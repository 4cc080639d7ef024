"""Many nodes on one machine: the in-memory transport runs the same services without sockets."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from flame_async import FlameSDK
from flame_async.local import LocalPlatform

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
async def test_a_thousand_node_star_round_completes_in_memory() -> None:
    """The aggregator sends "go" to 999 nodes; each answers with an acknowledged message."""
    nodes = 1000
    async with (
        LocalPlatform(nodes, transport="memory", po_interval=3600.0) as platform,
        AsyncExitStack() as stack,
    ):
        flames = [
            await stack.enter_async_context(
                FlameSDK(node.config(), transport=platform.transport_for(node))
            )
            for node in platform.nodes
        ]
        aggregator, others = flames[0], flames[1:]
        assert aggregator.is_aggregator

        async def answer(flame: FlameSDK) -> None:
            go = await flame.await_message(aggregator.node_id, category="go", timeout=120)
            report = await flame.send_message(
                aggregator.node_id, {"n": go.data["round"]}, category="answer", timeout=120
            )
            assert report.ok, report

        async with anyio.create_task_group() as tg:
            for flame in others:
                tg.start_soon(answer, flame)
            report = await aggregator.send_message(None, {"round": 1}, category="go", timeout=120)
            assert report.ok and len(report.acked) == nodes - 1
            answers = await aggregator.await_messages(category="answer", timeout=120)
        assert len(answers) == nodes - 1
        assert all(m is not None and m.data == {"n": 1} for m in answers.values())
        assert platform.api_port(aggregator.node_id) is None  # no socket anywhere
