"""Helper process for results.py: one node that sends or receives a large array."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import anyio
import numpy as np
import psutil

from flame_async import FlameConfig, FlameSDK


def rss_mib() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def main(role: str, mib: int) -> dict[str, float]:
    config = FlameConfig.from_env(os.environ)
    async with FlameSDK(config, ship_logs=False) as flame:
        peer = flame.get_participant_ids()[0]
        idle = rss_mib()
        if role == "sender":
            arr = np.arange(mib * 2**20 // 8, dtype=np.float64)
            await flame.ready_check([peer], timeout=60)
            t0 = time.perf_counter()
            infos = await flame.save_intermediate_result(arr, receivers=[peer])
            up = time.perf_counter() - t0
            await flame.send_message(
                peer, {"result_id": {peer: infos[peer].result_id}}, category="intermediate_data"
            )
            await flame.await_message(peer, category="done", timeout=120)
            return {"seconds": up, "idle_rss_mib": idle, "peak_rss_mib": peak_rss_mib()}
        message = await flame.await_message(peer, category="intermediate_data", timeout=120)
        t0 = time.perf_counter()
        arr = await flame.get_intermediate_result(
            message.data["result_id"][flame.node_id], sender=peer
        )
        down = time.perf_counter() - t0
        n = arr.shape[0]
        if arr[0] != 0 or arr[-1] != n - 1 or arr.dtype != np.float64:
            raise RuntimeError("the received array differs from the one sent")
        result = {"seconds": down, "idle_rss_mib": idle, "peak_rss_mib": peak_rss_mib()}
        await flame.send_message(peer, {}, category="done")
        return result


if __name__ == "__main__":
    out = anyio.run(main, sys.argv[1], int(sys.argv[2]))
    print(json.dumps(out), flush=True)
