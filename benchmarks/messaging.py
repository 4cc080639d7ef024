"""Messaging benchmark: raw aiohttp baseline vs. flame-async on the local platform.

Everything runs in one process and one event loop, baseline included, so the figures are
comparable as ratios. flame-async is measured on both transports: real HTTP (the top-level
figures and targets) and in memory (under ``memory``; same services, no sockets). Usage::

    python benchmarks/messaging.py --json benchmarks/results/messaging.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform as pyplatform
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from flame_async import FlameSDK, Message
from flame_async.local import LocalPlatform


def p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def baseline(rounds: int, total: int, inflight: int) -> dict[str, float]:
    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(None)

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/echo"
    body = json.dumps({"recipients": ["node-2"], "message": {"i": 1, "meta": {"id": "x"}}}).encode()
    headers = {"Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
            samples = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                samples.append(time.perf_counter() - t0)

            sem = asyncio.Semaphore(inflight)

            async def one() -> None:
                async with sem, session.post(url, data=body, headers=headers) as r:
                    await r.read()

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(total):
                    tg.start_soon(one)
            rps = total / (time.perf_counter() - t0)
    finally:
        await runner.cleanup()
    return {"rtt_p50_us": p50_us(samples), "baseline_rps": rps}


async def through_platform(
    rounds: int, star_rounds: int, total: int, inflight: int, transport: str = "http"
) -> dict[str, float]:
    async with (
        LocalPlatform(11, po_interval=5.0, transport=transport) as plat,  # type: ignore[arg-type]
        AsyncExitStack() as stack,
    ):
        nodes = [
            await stack.enter_async_context(FlameSDK(n.config(), transport=plat.transport_for(n)))
            for n in plat.nodes
        ]
        agg, a, b = nodes[0], nodes[1], nodes[2]
        analyzers = nodes[1:]
        for node in analyzers:

            @node.handler("q")
            async def answer(request: Message, node: FlameSDK = node) -> dict[str, Any]:
                return {"node": node.node_id, "v": request.data["i"]}

        # warm-up
        for i in range(50):
            await a.send_message(b.node_id, {"i": i}, category="warm")
            await b.await_message(a.node_id, category="warm", timeout=10)

        one_way = []
        async with anyio.create_task_group() as tg:
            for i in range(rounds):
                t0 = time.perf_counter()
                tg.start_soon(lambda i=i: a.send_message(b.node_id, {"i": i}, category="ow"))
                await b.await_message(a.node_id, category="ow", timeout=10)
                one_way.append(time.perf_counter() - t0)
                await anyio.sleep(0.002)  # let the ack settle so rounds do not overlap

        acked = []
        for i in range(rounds):
            t0 = time.perf_counter()
            report = await a.send_message(b.node_id, {"i": i}, category="ack")
            acked.append(time.perf_counter() - t0)
            assert report.ok
        while b.get_list_of_messages(category="ack"):
            await b.await_message(category="ack", timeout=1)

        star = []
        for i in range(star_rounds):
            t0 = time.perf_counter()
            replies = await agg.send_message_and_wait_for_responses(
                None, {"i": i}, category="q", timeout=10
            )
            star.append(time.perf_counter() - t0)
            assert all(replies.values()), replies

        received = 0

        async def drain() -> None:
            nonlocal received
            while received < total:
                await b.await_message(a.node_id, category="tp", timeout=30)
                received += 1

        sem = asyncio.Semaphore(inflight)

        async def send(i: int) -> None:
            async with sem:
                report = await a.send_message(b.node_id, {"i": i}, category="tp")
                assert report.ok

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            for i in range(total):
                tg.start_soon(send, i)
        throughput = total / (time.perf_counter() - t0)
        deliveries = len(plat.deliveries)
    return {
        "one_way_p50_us": p50_us(one_way),
        "acked_send_p50_us": p50_us(acked),
        "star10_round_p50_ms": statistics.median(star) * 1e3,
        "throughput_msgs_per_s": throughput,
        "platform_deliveries": deliveries,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = await baseline(args.rounds, args.total, args.inflight)
    flame = await through_platform(args.rounds, args.star_rounds, args.total, args.inflight)
    memory = await through_platform(
        args.rounds, args.star_rounds, args.total, args.inflight, transport="memory"
    )
    rtt = base["rtt_p50_us"]
    ratios = {
        "one_way_over_rtt": flame["one_way_p50_us"] / rtt,
        "acked_send_over_rtt": flame["acked_send_p50_us"] / rtt,
        "star10_ms_over_rtt_ms": flame["star10_round_p50_ms"] / (rtt / 1000),
        "throughput_over_baseline": flame["throughput_msgs_per_s"] / base["baseline_rps"],
    }
    targets = {
        "one_way_over_rtt": ratios["one_way_over_rtt"] <= 2.5,
        "acked_send_over_rtt": ratios["acked_send_over_rtt"] <= 5,
        "star10_ms_over_rtt_ms": ratios["star10_ms_over_rtt_ms"] <= 100,
        "throughput_over_baseline": ratios["throughput_over_baseline"] >= 0.2,
    }
    memory_ratios = {
        "one_way_over_rtt": memory["one_way_p50_us"] / rtt,
        "acked_send_over_rtt": memory["acked_send_p50_us"] / rtt,
        "star10_ms_over_rtt_ms": memory["star10_round_p50_ms"] / (rtt / 1000),
        "throughput_over_baseline": memory["throughput_msgs_per_s"] / base["baseline_rps"],
    }
    return {
        **base,
        **flame,
        "memory": {**memory, "ratios": memory_ratios},
        "ratios": ratios,
        "targets_met": targets,
        "python": sys.version.split()[0],
        "machine": pyplatform.machine(),
        "params": vars(args) | {"json": str(args.json) if args.json else None},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--star-rounds", type=int, default=60)
    parser.add_argument("--total", type=int, default=4000)
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
