"""flamesdk compatibility layer benchmark: an acknowledged send through ``FlameCoreSDK``.

flamesdk 0.6 polls its inbox once a second, so each acknowledged ``send_message`` takes about
1 s. Here the same call goes through the compat layer (a blocking portal call into the node's
own event loop, which sends and waits for the receiver's acknowledgement): the target is at
most 10x the in-run raw HTTP round trip (the raw aiohttp baseline of
``benchmarks/messaging.py``, measured in the same run, in one process, as the native figures
there are). The headline figure runs the nodes as ``--mode inprocess`` does; for reference
also each compat node on a loop and thread of its own, each node as a process of its own
(``--mode processes``: every request crosses processes), and the native ``FlameSDK``.
Usage::

    python benchmarks/compat.py --json benchmarks/results/compat.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as pyplatform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal

from flame_async import FlameSDK
from flame_async._transport import Transport
from flame_async.compat.flamesdk import FlameCoreSDK
from flame_async.compat.flamesdk._core import use_host_portal
from flame_async.config import FlameConfig, use_environ, use_transport
from flame_async.local import LocalPlatform
from flame_async.runner import tuned_collector

sys.path.insert(0, str(Path(__file__).parent))
from messaging import baseline  # the same baseline as the messaging benchmark

ROOT = Path(__file__).resolve().parents[1]


def p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed_sends(send: Callable[[], tuple[list[str], list[str]]], rounds: int) -> list[float]:
    """``rounds`` blocking sends from one thread, as an analysis makes them."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        acked, missing = send()
        samples.append(time.perf_counter() - t0)
        assert acked
        assert not missing
    return samples


async def compat_sends(rounds: int, *, own_loops: bool = False) -> dict[str, float]:
    """Both nodes in this process: as ``--mode inprocess`` runs them (their ``FlameSDK`` on
    the platform's loop, the analysis in a thread), or with ``own_loops`` each on a loop of
    its own in a thread of its own (what a ``FlameCoreSDK`` made outside the runner does)."""
    async with (
        LocalPlatform(2, po_interval=5.0) as platform,
        BlockingPortal() as portal,
    ):
        flames: list[FlameCoreSDK] = []
        try:
            for node in platform.nodes:
                transport = platform.transport_for(node)

                def given(config: FlameConfig, t: Transport = transport) -> Transport:
                    return t

                host = contextlib.nullcontext() if own_loops else use_host_portal(portal)
                with use_environ(node.env), use_transport(given), host:
                    flames.append(
                        await anyio.to_thread.run_sync(
                            partial(FlameCoreSDK, end_thread_when_finished=False)
                        )
                    )
            sender = flames[0]
            send = partial(sender.send_message, ["node-2"], "bench", {"i": 1})
            # as the runner's in-process mode does once the nodes are up (own loops: no runner)
            with contextlib.nullcontext() if own_loops else tuned_collector():
                await anyio.to_thread.run_sync(timed_sends, send, 50)  # warm-up
                samples = await anyio.to_thread.run_sync(timed_sends, send, rounds)
        finally:
            for flame in flames:
                await anyio.to_thread.run_sync(flame.close)
    key = "compat_own_loops" if own_loops else "compat_inprocess"
    return {f"{key}_acked_send_p50_us": p50_us(samples)}


_NODE = """
import json, statistics, sys, time
from flame_async.compat.flamesdk import FlameCoreSDK
from flame_async.compat.flamesdk._core import use_host_portal

rounds = int(sys.argv[1])
flame = FlameCoreSDK(end_thread_when_finished=False)
if flame.get_id() == "node-1":
    flame.ready_check(["node-2"])
    samples = []
    for i in range(rounds + 50):
        t0 = time.perf_counter()
        acked, missing = flame.send_message(["node-2"], "bench", {"i": i})
        if i >= 50:
            samples.append(time.perf_counter() - t0)
        assert acked and not missing
    flame.send_message(["node-2"], "done", {})
    print(json.dumps({"p50_us": statistics.median(samples) * 1e6}))
else:
    flame.await_messages(["node-1"], "done")
flame.close()
"""


async def compat_sends_in_processes(rounds: int) -> dict[str, float]:
    """Each node a process of its own, as ``--mode processes`` and FLAME run them (no other
    node's loop competes for the interpreter lock)."""
    async with LocalPlatform(2, po_interval=5.0) as platform:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        async with anyio.create_task_group() as tg:
            outputs: dict[str, bytes] = {}

            async def node(node_env: dict[str, str], node_id: str) -> None:
                done = await anyio.run_process(
                    [sys.executable, "-c", _NODE, str(rounds)], env={**env, **node_env}
                )
                outputs[node_id] = done.stdout

            for n in platform.nodes:
                tg.start_soon(node, n.env, n.node_id)
    return {"compat_processes_acked_send_p50_us": json.loads(outputs["node-1"])["p50_us"]}


async def native_sends(rounds: int) -> dict[str, float]:
    async with LocalPlatform(2, po_interval=5.0) as platform, AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                FlameSDK(n.config(), transport=platform.transport_for(n))
            )
            for n in platform.nodes
        ]
        a, b = nodes
        samples = []
        with tuned_collector():  # in one process, as the runner's in-process mode
            for i in range(rounds + 50):
                t0 = time.perf_counter()
                report = await a.send_message(b.node_id, {"i": i}, category="bench")
                if i >= 50:
                    samples.append(time.perf_counter() - t0)
                assert report.ok
    return {"native_acked_send_p50_us": p50_us(samples)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = await baseline(args.rounds, 200, 16)
    inprocess = await compat_sends(args.rounds)
    own_loops = await compat_sends(args.rounds, own_loops=True)
    processes = await compat_sends_in_processes(args.rounds)
    native = await native_sends(args.rounds)
    rtt = base["rtt_p50_us"]
    compat = inprocess["compat_inprocess_acked_send_p50_us"]
    ratios = {
        "compat_acked_send_over_rtt": compat / rtt,
        "compat_own_loops_acked_send_over_rtt": own_loops["compat_own_loops_acked_send_p50_us"]
        / rtt,
        "compat_processes_acked_send_over_rtt": processes["compat_processes_acked_send_p50_us"]
        / rtt,
        "native_acked_send_over_rtt": native["native_acked_send_p50_us"] / rtt,
        "compat_over_native": compat / native["native_acked_send_p50_us"],
        "flamesdk_1s_over_compat": 1e6 / compat,
    }
    return {
        "rtt_p50_us": rtt,
        **inprocess,
        **own_loops,
        **processes,
        **native,
        "ratios": ratios,
        "targets_met": {"compat_acked_send_over_rtt": ratios["compat_acked_send_over_rtt"] <= 10},
        "python": sys.version.split()[0],
        "machine": pyplatform.machine(),
        "params": vars(args) | {"json": str(args.json) if args.json else None},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
