"""Results benchmark: a 256 MiB float64 array as an intermediate result between two nodes.

The platform and each node run in their own process (so each RSS is its own). In the same run,
a raw aiohttp streaming upload and download of the same size gives the baseline. Usage::

    python benchmarks/results.py --json benchmarks/results/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as pyplatform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).parent
CHUNK = 1 << 20


async def baseline(mib: int) -> dict[str, float]:
    """Raw aiohttp: stream ``mib`` MiB up (server discards) and down (server streams)."""
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before any timing
        [sys.executable, "-c", _BASELINE_SERVER, str(mib)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(await asyncio.to_thread(server.stdout.readline))
        url = f"http://127.0.0.1:{port}"
        block = memoryview(bytearray(CHUNK))

        async def body() -> Any:
            for _ in range(mib):
                yield block

        async with aiohttp.ClientSession() as session:
            t0 = time.perf_counter()
            async with session.put(f"{url}/up", data=body()) as r:
                await r.read()
            up = time.perf_counter() - t0
            t0 = time.perf_counter()
            buffer = bytearray(mib * CHUNK)
            view = memoryview(buffer)
            filled = 0
            async with session.get(f"{url}/down") as r:
                async for chunk in r.content.iter_any():
                    view[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
            down = time.perf_counter() - t0
            if filled != mib * CHUNK:
                raise RuntimeError(f"downloaded {filled} bytes, expected {mib * CHUNK}")
    finally:
        server.terminate()
        server.wait()
    return {"baseline_up_mibps": mib / up, "baseline_down_mibps": mib / down}


_BASELINE_SERVER = r"""
import sys
from aiohttp import web
MIB = int(sys.argv[1])
BLOCK = bytes(1 << 20)

async def up(request):
    async for _ in request.content.iter_chunked(1 << 20):
        pass
    return web.Response(status=204)

async def down(request):
    response = web.StreamResponse(headers={"Content-Length": str(MIB << 20)})
    await response.prepare(request)
    for _ in range(MIB):
        await response.write(BLOCK)
    await response.write_eof()
    return response

async def start():
    app = web.Application(client_max_size=0)
    app.router.add_put("/up", up)
    app.router.add_get("/down", down)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    import asyncio
    await asyncio.Event().wait()

import asyncio
asyncio.run(start())
"""


def through_platform(mib: int) -> dict[str, float]:
    platform = subprocess.Popen(
        [sys.executable, str(HERE / "_results_platform.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert platform.stdout is not None
        assert platform.stdin is not None
        envs = json.loads(platform.stdout.readline())
        procs = {
            role: subprocess.Popen(
                [sys.executable, str(HERE / "_results_node.py"), role, str(mib)],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                text=True,
            )
            for role, env in zip(("receiver", "sender"), envs, strict=True)
        }
        out = {
            role: json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1])
            for role, p in procs.items()
        }
    finally:
        if platform.stdin:
            platform.stdin.close()
        platform.wait(timeout=60)
    sender, receiver = out["sender"], out["receiver"]
    return {
        "up_mibps": mib / sender["seconds"],
        "down_mibps": mib / receiver["seconds"],
        "sender_idle_rss_mib": sender["idle_rss_mib"],
        "sender_peak_rss_mib": sender["peak_rss_mib"],
        "receiver_idle_rss_mib": receiver["idle_rss_mib"],
        "receiver_peak_rss_mib": receiver["peak_rss_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--mib", type=int, default=256, help="payload size in MiB")
    args = parser.parse_args()
    base = asyncio.run(baseline(args.mib))
    flame = through_platform(args.mib)
    payload = float(args.mib)
    ratios = {
        "up_over_baseline": flame["up_mibps"] / base["baseline_up_mibps"],
        "down_over_baseline": flame["down_mibps"] / base["baseline_down_mibps"],
        "sender_rss_growth_over_payload": (
            flame["sender_peak_rss_mib"] - flame["sender_idle_rss_mib"]
        )
        / payload,
        "receiver_rss_growth_over_payload": (
            flame["receiver_peak_rss_mib"] - flame["receiver_idle_rss_mib"]
        )
        / payload,
    }
    result = {
        "payload_mib": payload,
        **base,
        **flame,
        "ratios": ratios,
        "targets_met": {
            "up_over_baseline": ratios["up_over_baseline"] >= 0.4,
            "down_over_baseline": ratios["down_over_baseline"] >= 0.4,
            "sender_rss_growth_over_payload": ratios["sender_rss_growth_over_payload"] <= 1.5,
            "receiver_rss_growth_over_payload": ratios["receiver_rss_growth_over_payload"] <= 1.5,
        },
        "python": sys.version.split()[0],
        "machine": pyplatform.machine(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
