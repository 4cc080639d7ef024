"""Star pattern: every node sends a local value to the aggregator, which adds them up.

Run it on three local nodes:

    flame-async run examples/star.py --nodes 3
"""

from __future__ import annotations

import asyncio

from flame_async import FlameSDK


def local_value(node_id: str) -> int:
    """Stands in for a node's local computation (a count over its own data)."""
    return sum(ord(c) for c in node_id) % 97


async def main() -> int:
    async with FlameSDK() as flame:
        if flame.is_aggregator:
            peers = flame.get_participants()
            flame.logger.info("waiting for %d analyzer nodes", len(peers))
            answers = await flame.await_messages(peers, category="local_value", timeout=60)
            missing = sorted(node for node, message in answers.items() if message is None)
            if missing:
                raise RuntimeError(f"no value from {', '.join(missing)}")
            total = local_value(flame.node_id) + sum(
                int(m.data["value"]) for m in answers.values() if m is not None
            )
            flame.logger.info("federated total: %d", total)
            await flame.analysis_finished()
            return total
        aggregator = flame.get_aggregator_id()
        assert aggregator is not None
        value = local_value(flame.node_id)
        report = await flame.send_message(aggregator, {"value": value}, category="local_value")
        if not report.ok:
            raise RuntimeError(f"the aggregator did not acknowledge: {report}")
        await flame.wait_until_finished(timeout=60)
        return value


if __name__ == "__main__":
    asyncio.run(main())
