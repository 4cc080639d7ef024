"""Test analysis: the aggregator blocks its event loop for 6 s (as heavy numpy work would)."""

from __future__ import annotations

import asyncio
import time

from flame_async import FlameSDK


async def main() -> None:
    async with FlameSDK() as flame:
        if flame.is_aggregator:
            time.sleep(6)  # noqa: ASYNC251 - the line the run must name: blocker.py:14
        await flame.wait_until_finished(timeout=60)


if __name__ == "__main__":
    asyncio.run(main())
