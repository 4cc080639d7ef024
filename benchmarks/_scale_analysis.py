"""The analysis ``scale.py`` runs in processes mode: ``python _scale_analysis.py`` per node.

Star rounds as in ``scale.py``: the aggregator waits until every node answers a
``ready_check``, then per round sends ``go`` ({"round": r}) to every other node and awaits
one ``answer`` from each; each analyzer awaits the ``go`` and answers with one acknowledged
message. After the last round the aggregator sends ``stop`` so that no analyzer shuts down
while a round still runs.

Rounds, warm-up rounds and the per-wait timeout come from ``FLAME_SCALE_ROUNDS``,
``FLAME_SCALE_WARMUP`` and ``FLAME_SCALE_TIMEOUT``. Each node prints one line
``SCALE {json}`` with what it measured; ``time.monotonic()`` stamps are comparable across
the processes of one machine (``CLOCK_MONOTONIC`` is system-wide on Linux and macOS).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

from flame_async import FlameSDK

MARKER = "SCALE "
"""Prefix of the one line of results each node prints."""
SETTLE_S = 0.2
"""Pause between the warm-up and the measured rounds."""


def maxrss_mib() -> float:
    """This process' peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


async def aggregate(sdk: FlameSDK, rounds: int, warmup: int, timeout: float) -> dict[str, Any]:
    """Wait for every node, run the rounds, tell the analyzers to stop."""
    ready = await sdk.ready_check(timeout=timeout)
    if not all(ready.values()):
        raise RuntimeError(f"not ready: {sorted(n for n, ok in ready.items() if not ok)}")
    ready_at = time.monotonic()
    walls: list[float] = []
    cpus: list[float] = []
    measured_from = ready_at
    cpu_mark = time.process_time()
    for r in range(warmup + rounds):
        if r == warmup:
            # the warm-up's last acknowledgements go out before the measured rounds begin, so
            # the broker copies counted from here on are the measured rounds' own
            await asyncio.sleep(SETTLE_S)
            measured_from = time.monotonic()
        t0 = time.perf_counter()
        report = await sdk.send_message(None, {"round": r}, category="go", timeout=timeout)
        answers = await sdk.await_messages(category="answer", timeout=timeout)
        walls.append(time.perf_counter() - t0)
        if not report.ok:
            raise RuntimeError(f"round {r}: go not acknowledged by {report.missing}")
        late = sorted(n for n, m in answers.items() if m is None or m.data.get("round") != r)
        if late:
            raise RuntimeError(f"round {r}: no answer from {late[:5]} ({len(late)} nodes)")
        cpus.append(time.process_time() - cpu_mark)
        cpu_mark = time.process_time()
    await sdk.send_message(None, {}, category="stop", timeout=timeout)
    return {
        "role": "aggregator",
        "ready_at": ready_at,
        "measured_from": measured_from,
        "round_s": walls,
        "round_cpu_s": cpus,
    }


async def analyze(sdk: FlameSDK, aggregator: str, rounds: int, timeout: float) -> dict[str, Any]:
    """Answer every ``go``, then wait for ``stop``."""
    cpus: list[float] = []
    cpu_mark = time.process_time()
    for _ in range(rounds):
        go = await sdk.await_message(aggregator, category="go", timeout=timeout)
        answer = {"round": go.data["round"], "node": sdk.node_id}
        report = await sdk.send_message(aggregator, answer, category="answer", timeout=timeout)
        if not report.ok:
            raise RuntimeError(f"answer to round {go.data['round']} not acknowledged")
        # from the end of one round to the end of the next: all this node's CPU, once
        cpus.append(time.process_time() - cpu_mark)
        cpu_mark = time.process_time()
    await sdk.await_message(aggregator, category="stop", timeout=timeout)
    return {"role": "analyzer", "round_cpu_s": cpus}


async def main() -> dict[str, Any]:
    """One node of the benchmark; prints and returns what it measured."""
    rounds = int(os.environ.get("FLAME_SCALE_ROUNDS", "5"))
    warmup = int(os.environ.get("FLAME_SCALE_WARMUP", "1"))
    timeout = float(os.environ.get("FLAME_SCALE_TIMEOUT", "120"))
    idle = maxrss_mib()
    async with FlameSDK() as sdk:
        aggregator = sdk.get_aggregator_id()
        if aggregator is None:
            raise RuntimeError("the analysis has no aggregator")
        if sdk.is_aggregator:
            report = await aggregate(sdk, rounds, warmup, timeout)
        else:
            report = await analyze(sdk, aggregator, warmup + rounds, timeout)
        report["node"] = sdk.node_id
    report |= {"idle_rss_mib": idle, "peak_rss_mib": maxrss_mib()}
    print(MARKER + json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    asyncio.run(main())
