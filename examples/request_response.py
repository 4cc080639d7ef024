"""Request/response with handlers: the aggregator asks every node for statistics.

Each analyzer node registers a handler for the ``stats`` category; its return value goes back
to the asker as the reply. The aggregator asks all nodes at once and combines the replies.

    flame-async run examples/request_response.py --nodes 4
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from flame_async import FlameSDK, Message


def local_sample(node_id: str) -> list[float]:
    """Stands in for a node's private data."""
    seed = sum(ord(c) for c in node_id)
    return [float((seed * (i + 7)) % 50) for i in range(20 + seed % 10)]


async def main() -> dict[str, Any]:
    async with FlameSDK() as flame:
        if not flame.is_aggregator:
            sample = local_sample(flame.node_id)

            @flame.handler("stats")
            async def stats(request: Message) -> dict[str, Any]:
                flame.logger.info("%s asked for %s", request.sender, request.data["fields"])
                return {"n": len(sample), "sum": sum(sample), "max": max(sample)}

            await flame.wait_until_finished(timeout=60)
            return {"n": len(sample)}

        replies = await flame.send_message_and_wait_for_responses(
            None, {"fields": ["n", "sum", "max"]}, category="stats", timeout=30
        )
        missing = sorted(node for node, reply in replies.items() if reply is None)
        if missing:
            raise RuntimeError(f"no answer from {', '.join(missing)}")
        answers = [reply.data for reply in replies.values() if reply is not None]
        n = sum(a["n"] for a in answers)
        result = {
            "nodes": len(answers),
            "n": n,
            "mean": sum(a["sum"] for a in answers) / n,
            "max": max(a["max"] for a in answers),
            "median_of_node_means": statistics.median(a["sum"] / a["n"] for a in answers),
        }
        flame.logger.info("combined statistics: %s", result)
        await flame.analysis_finished()
        return result


if __name__ == "__main__":
    asyncio.run(main())
