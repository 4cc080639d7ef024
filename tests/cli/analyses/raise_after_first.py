"""Test analysis: node-3 raises right after its first message; the others would wait 60 s."""

from __future__ import annotations

import asyncio

from flame_async import FlameSDK


async def main() -> str:
    async with FlameSDK() as flame:
        if flame.is_aggregator:
            for number in range(2):
                answers = await flame.await_messages(category="round", timeout=60)
                flame.logger.info("round %d: %s", number, sorted(answers))
            await flame.analysis_finished()
            return "done"
        aggregator = flame.get_aggregator_id()
        assert aggregator is not None
        await flame.send_message(aggregator, {"round": 0}, category="round")
        if flame.node_id == "node-3":
            raise ValueError("node-3 broke after its first message")
        await flame.send_message(aggregator, {"round": 1}, category="round")
        await flame.wait_until_finished(timeout=60)
        return "sent"


if __name__ == "__main__":
    asyncio.run(main())
