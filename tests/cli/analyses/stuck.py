"""Test analysis: the aggregator waits for a message nobody sends."""

from __future__ import annotations

import asyncio

from flame_async import FlameSDK


async def main() -> None:
    async with FlameSDK() as flame:
        if flame.is_aggregator:
            await flame.await_message(category="never", timeout=300)
        else:
            await flame.wait_until_finished(timeout=300)


if __name__ == "__main__":
    asyncio.run(main())
