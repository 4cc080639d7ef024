"""Flower's equivalent of the star round of ``scale.py``, run by it in a child process.

A ServerApp sends one tiny message (a ``ConfigRecord`` holding the round number) to each of
N virtual SuperNodes with the Message API of Flower 1.42 (``grid.send_and_receive``); each
ClientApp answers with a tiny reply (a one-value ``MetricRecord``). A round ends when the
ServerApp has every reply: the same shape as flame-async's go/answer round. It runs in the
simulation runtime (``flwr.simulation.run_simulation``) on the Ray backend.

Imports only flwr and the standard library: it runs under the interpreter that has
Flower installed (``--flower-python``), not the project's. Prints one JSON line. Usage::

    python benchmarks/_flower_round.py --nodes 100 --rounds 5 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux ``/proc``; just ``pid`` elsewhere)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in task.read_text().split())
    return found


def process_tree() -> tuple[float, float] | None:
    """CPU seconds (user + system) and resident MiB of this process and all it started.

    Ray runs the ClientApps in worker processes started by its raylet, itself started by
    this process, so the tree holds all of Flower's work. ``None`` without ``/proc``.
    """
    if not Path("/proc/self/stat").exists():
        return None
    cpu = rss = 0.0
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the fields after the command name, which may hold spaces and parentheses
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
            rss += int(fields[21]) * _PAGE / 2**20  # rss in pages
    return cpu, rss


def run(nodes: int, rounds: int, warmup: int, client_cpus: float) -> dict[str, Any]:
    """Run ``warmup + rounds`` star rounds on ``nodes`` virtual SuperNodes."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    launched = time.perf_counter()
    seen: dict[str, Any] = {"rounds": [], "cpu": [], "answers": []}

    client = ClientApp()

    @client.train()
    def answer(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        assert isinstance(config, ConfigRecord)
        r = config["round"]
        assert isinstance(r, int)
        return Message(RecordDict({"answer": MetricRecord({"round": r})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def star(grid: Grid, context: Context) -> None:
        # the Grid has no wait: Flower's own strategies poll it once a second
        # (strategy_utils.sample_nodes); polling faster keeps start-up from being rounded up
        while len(node_ids := list(grid.get_node_ids())) < nodes:
            time.sleep(0.02)
        seen["serverapp_s"] = time.perf_counter() - launched
        seen["nodes_seen"] = len(node_ids)
        before = process_tree()
        for r in range(warmup + rounds):
            if r == warmup:
                before = process_tree()
            t0 = time.perf_counter()
            messages = [
                Message(
                    RecordDict({"config": ConfigRecord({"round": r})}),
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN,
                    group_id=str(r),
                )
                for node_id in node_ids
            ]
            replies = list(grid.send_and_receive(messages, timeout=600))
            elapsed = time.perf_counter() - t0
            after = process_tree()
            ok = sum(1 for m in replies if not m.has_error())
            if ok < len(node_ids):
                errors = [str(m.error) for m in replies if m.has_error()][:1]
                seen["errors"] = errors
            seen["answers"].append(ok)
            seen["rounds"].append(elapsed)
            if before is not None and after is not None:
                seen["cpu"].append(after[0] - before[0])
                seen["tree_rss_mib"] = max(seen.get("tree_rss_mib", 0.0), after[1])
            before = after
            if r == 0:
                seen["first_round_s"] = elapsed

    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
    }
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=nodes,
        backend_name="ray",
        backend_config=backend_config,
    )
    total = time.perf_counter() - launched
    measured = seen["rounds"][warmup:]
    if not measured:
        raise RuntimeError("the ServerApp did not run (see Flower's log above)")
    answers = seen["answers"][warmup:]
    if min(answers) != nodes:
        raise RuntimeError(
            f"a round got {min(answers)} of {nodes} replies; {seen.get('errors', [])}"
        )
    quantiles = statistics.quantiles(measured, n=20) if len(measured) > 1 else measured * 19
    cpu = seen["cpu"][warmup:]
    return {
        "status": "ok",
        "nodes": nodes,
        "rounds": len(measured),
        "warmup": warmup,
        # the simulation starts Ray and its actors while the first round waits for them: what
        # that round took beyond a steady one is start-up
        "startup_s": seen["first_round_s"] + seen["serverapp_s"] - statistics.median(measured),
        "serverapp_s": seen["serverapp_s"],
        "first_round_s": seen["first_round_s"],
        "round_p50_ms": statistics.median(measured) * 1e3,
        "round_p95_ms": quantiles[18] * 1e3,
        # CPU of every process of the simulation (driver, Ray, its workers), from /proc in
        # clock ticks (10 ms): a mean over the rounds, not a median of a few ticks each
        "round_cpu_ms": statistics.fmean(cpu) * 1e3 if cpu else None,
        "cpu_per_client_us": statistics.fmean(cpu) * 1e6 / nodes if cpu else None,
        "tree_rss_mib": seen.get("tree_rss_mib"),
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_s": total,
        "client_resources": backend_config["client_resources"],
        "ray_actors": int((os.cpu_count() or 1) / client_cpus),
        "flwr": _version("flwr"),
        "ray": _version("ray"),
    }


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--client-cpus",
        type=float,
        default=1.0,
        help="Ray CPUs per virtual client: the actor pool holds CPUs / this many workers, over "
        "which all N virtual clients are run",
    )
    args = parser.parse_args()
    result = run(args.nodes, args.rounds, args.warmup, args.client_cpus)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
