"""Scale benchmark: one star round against the number of nodes N, up to 10 000.

A star round: the aggregator sends one ``go`` message ({"round": r}) to every other node with
``send_message(None, ...)``; each analyzer awaits it (``await_message(aggregator,
category="go")``) and answers with one acknowledged ``send_message(aggregator, ...,
category="answer")``; the round ends when the aggregator's ``await_messages(category="answer")``
has every answer.

Configurations, each in a child process of its own (so that its peak RSS is its own):

* ``memory``: ``LocalPlatform(N, transport="memory")`` and N entered ``FlameSDK`` in one
  process, N = 10, 100, 1 000, 10 000;
* ``http``: the same over real HTTP on 127.0.0.1, N = 10, 30, 100, 300 (and 1 000 with
  ``--http-1000``);
* ``processes``: ``run_script(..., mode="processes")``, one ``python`` per node running
  ``_scale_analysis.py``, N = 3, 10, 20;
* ``flower``: the same round in Flower 1.42's simulation runtime on Ray (``_flower_round.py``,
  run by ``--flower-python``, an interpreter with ``flwr[simulation]``), N = 10, 100, 1 000.

Per configuration: start-up, round p50/p95 (after warm-up rounds), CPU per round and per
analyzer, peak RSS and RSS per node, broker copies per round against the minimum; across them,
the growth exponent of CPU per round in N and flame-async's memory round over Flower's. A
configuration that fails or times out is reported as such. See docs/benchmarks.md. Usage::

    python benchmarks/scale.py --json benchmarks/results/scale.json \\
        --plot docs/assets/scale.png --flower-python /path/to/flwr-venv/bin/python
    python benchmarks/scale.py --quick --json /tmp/scale-quick.json
    python benchmarks/scale.py --one memory 1000 --rounds 5   # one configuration, one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform as pyplatform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, get_args

import anyio

from flame_async import FlameSDK, Message, SendReport
from flame_async.local import DeliveryEvent, LocalNode, LocalPlatform
from flame_async.runner import NodeOutcome, run_script, tuned_collector

HERE: Final = Path(__file__).resolve().parent
ANALYSIS: Final = HERE / "_scale_analysis.py"
FLOWER_DRIVER: Final = HERE / "_flower_round.py"
MARKER: Final = "SCALE "  # starts the line each node of _scale_analysis.py prints (its MARKER)

Kind = Literal["memory", "http", "processes", "flower"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)

FULL: Final[dict[Kind, tuple[int, ...]]] = {
    "memory": (10, 100, 1_000, 10_000),
    "http": (10, 30, 100, 300),
    "processes": (3, 10, 20),
    "flower": (10, 100, 1_000),
}
QUICK: Final[dict[Kind, tuple[int, ...]]] = {
    "memory": (10, 100),
    "http": (10, 30),
    "processes": (3,),
    "flower": (10,),
}
PO_INTERVAL: Final = 10.0
"""The platform's status loop polls each node this often: the real PO's interval."""
SETTLE_S: Final = 0.2
"""Pause before the deliveries are counted: the broker records a copy's outcome once the
receiving node answered its webhook, a moment after the sender saw the acknowledgement."""
TIMEOUT_BASE_S: Final = 300.0
TIMEOUT_PER_NODE_S: Final[dict[Kind, float]] = {
    "memory": 0.25,
    "http": 1.0,
    "processes": 10.0,
    "flower": 0.5,
}

TARGETS: Final[dict[str, tuple[str, float]]] = {
    # the targets of the scale issue, each a ratio or a figure measured in this run
    "memory_100_round_over_flower": ("<=", 0.1),
    "memory_1000_round_p50_ms": ("<=", 200.0),
    "memory_10000_peak_rss_mib": ("<=", 2048.0),
    "memory_cpu_exponent_100_1000": ("<=", 1.1),
    "http_100_round_p50_ms": ("<=", 100.0),
    "http_cpu_exponent_10_100": ("<=", 1.15),
    "http_300_deliveries_over_minimum": ("<=", 1.05),
    "http_1000_ok": (">=", 1.0),
    "processes_20_startup_s": ("<=", 3.0),
}


# -- measuring -----------------------------------------------------------------------------


def maxrss_mib() -> float:
    """This process' peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``samples``, linearly interpolated between the two nearest."""
    ordered = sorted(samples)
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


class Countdown:
    """An event that is set once ``count`` ticks have arrived."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = anyio.Event()
        if count <= 0:
            self.done.set()

    def tick(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


def copy_kind(event: DeliveryEvent, aggregator: str) -> str:
    """What one broker copy of the star round is: ``go``, ``go-ack``, ``answer``, ``answer-ack``
    (``dropped-`` before it when it was not delivered), or ``other``.

    An acknowledgement is a broker message of the acknowledged message's category, sent by the
    receiver back to the sender, so the sender tells data from acknowledgement apart: the
    aggregator sends the go and acknowledges the answers.
    """
    if event.category == "go":
        kind = "go" if event.sender == aggregator else "go-ack"
    elif event.category == "answer":
        kind = "answer-ack" if event.sender == aggregator else "answer"
    else:
        return "other"
    return kind if event.outcome == "delivered" else f"dropped-{kind}"


def minimum_copies_per_round(nodes: int, *, separate_go_acks: bool) -> int:
    """The broker copies one star round of ``nodes`` nodes needs when nothing is lost.

    The yardstick of ``deliveries.over_minimum``. Data: the go to each of the N-1 analyzers
    and each analyzer's answer, 2(N-1) copies. Acknowledgements are broker messages too (of the
    acknowledged message's category), one copy each. Every answer needs one: the analyzer's
    send waits for it and nothing else goes back to the analyzer, N-1 copies. Every go needs
    one as well, N-1 more, unless the answer, which goes to the go's sender anyway, carries
    its acknowledgement. So 4(N-1) with ``separate_go_acks`` (acknowledgements travel alone)
    and 3(N-1) without (a reply acknowledges what it answers).
    """
    peers = nodes - 1
    return 2 * peers + peers + (peers if separate_go_acks else 0)


class DeliveryCounter:
    """Counts the broker's copies (:func:`copy_kind`) from its creation on, as they come.

    ``LocalPlatform.deliveries`` keeps only the last 100 000 events (10 000 nodes make 40 000 a
    round), so :meth:`update` is called after each round and takes only what is new: through
    ``deliveries_since`` (a cursor) where the platform has it, else by finding the last event
    seen in the kept ones. ``overflowed`` tells when events went before they were counted.
    With ``keep``, the events are kept too, for :meth:`recount`.
    """

    def __init__(
        self, platform: LocalPlatform, aggregator: str, *, from_start: bool, keep: bool = False
    ) -> None:
        self._platform = platform
        self._aggregator = aggregator
        self._since: Callable[[int], tuple[list[DeliveryEvent], int]] | None = getattr(
            platform, "deliveries_since", None
        )
        self._cursor = 0
        self._last: DeliveryEvent | None = None
        self.counts: Counter[str] = Counter()
        self.overflowed = False
        self.kept: list[DeliveryEvent] | None = [] if keep else None
        if not from_start:
            self._new()

    def _new(self) -> list[DeliveryEvent]:
        if self._since is not None:
            events, cursor = self._since(self._cursor)
            self.overflowed |= cursor - self._cursor > len(events)
            self._cursor = cursor
            return events
        kept = self._platform.deliveries
        start = 0
        if self._last is not None:
            for index in range(len(kept) - 1, -1, -1):
                if kept[index] is self._last:
                    start = index + 1
                    break
            else:
                self.overflowed = True
        if kept:
            self._last = kept[-1]
        return kept[start:]

    def update(self) -> None:
        """Count what was recorded since the last call."""
        aggregator = self._aggregator
        new = self._new()
        self.counts.update(copy_kind(event, aggregator) for event in new)
        if self.kept is not None:
            self.kept.extend(new)

    def recount(self, sent_after: float) -> None:
        """Count again only the kept copies of messages the broker took at or after
        ``sent_after`` (``time.monotonic()``)."""
        assert self.kept is not None, "recount needs keep=True"
        aggregator = self._aggregator
        self.counts = Counter(
            copy_kind(event, aggregator)
            for event in self.kept
            if event.sent_monotonic >= sent_after
        )

    def summary(self, nodes: int, rounds: int) -> dict[str, Any]:
        """Copies per round by kind, and the ratio of the star's delivered copies to the minimum."""
        counts = self.counts
        # every go acknowledged by a copy of its own: this protocol cannot let answers carry
        # them; any go acknowledged by its answer: it can, and a separate one is extra
        separate = counts["go-ack"] >= (nodes - 1) * rounds
        minimum = minimum_copies_per_round(nodes, separate_go_acks=separate)
        star = sum(counts[k] for k in ("go", "go-ack", "answer", "answer-ack"))
        return {
            "per_round": {kind: counts[kind] / rounds for kind in sorted(counts)},
            "star_copies": star,
            "rounds": rounds,
            "minimum_per_round": minimum,
            "minimum_rule": "4(N-1)" if separate else "3(N-1): answers acknowledge the go",
            "over_minimum": star / (minimum * rounds),
            "overflowed": self.overflowed,
        }


def check_round(r: int, report: SendReport, answers: dict[str, Message | None]) -> None:
    """Raise unless every analyzer acknowledged the go of round ``r`` and answered it."""
    if not report.ok:
        missing = sorted(report.missing)
        raise RuntimeError(f"round {r}: {len(missing)} nodes did not acknowledge: {missing[:5]}")
    late = sorted(n for n, m in answers.items() if m is None or m.data.get("round") != r)
    if late:
        raise RuntimeError(f"round {r}: no answer from {len(late)} nodes: {late[:5]}")


# -- one configuration, in this process ----------------------------------------------------


async def star_in_process(
    transport: Literal["memory", "http"], nodes: int, rounds: int, warmup: int, timeout: float
) -> dict[str, Any]:
    """Star rounds with the platform and every node in this process and event loop.

    Every node is a task that enters its own ``FlameSDK`` (as ``run_analysis`` does), so the
    nodes start concurrently. Before a round starts, the previous one has settled (every
    analyzer's answer acknowledged), so a round's CPU is its own: from the go until then.
    """
    idle = maxrss_mib()
    total = warmup + rounds
    began = time.perf_counter()
    measured: dict[str, Any] = {}
    async with LocalPlatform(nodes, transport=transport, po_interval=PO_INTERVAL) as platform:
        platform_s = time.perf_counter() - began
        aggregator = platform.aggregator_id
        entered = Countdown(nodes)
        settled = [Countdown(nodes - 1) for _ in range(total)]
        stop = anyio.Event()

        async def lead(sdk: FlameSDK) -> None:
            await entered.done.wait()
            measured["startup_s"] = time.perf_counter() - began
            walls: list[float] = []
            cpus: list[float] = []
            counter: DeliveryCounter | None = None
            for r in range(total):
                if r == warmup:
                    if warmup:
                        await settled[warmup - 1].done.wait()
                        await anyio.sleep(SETTLE_S)
                    counter = DeliveryCounter(platform, aggregator, from_start=False)
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                report = await sdk.send_message(None, {"round": r}, category="go", timeout=timeout)
                answers = await sdk.await_messages(category="answer", timeout=timeout)
                wall = time.perf_counter() - t0
                await settled[r].done.wait()
                cpu = time.process_time() - cpu0
                check_round(r, report, answers)
                if counter is not None:
                    walls.append(wall)
                    cpus.append(cpu)
                    counter.update()
            await anyio.sleep(SETTLE_S)
            assert counter is not None
            counter.update()
            measured.update(walls=walls, cpus=cpus, deliveries=counter.summary(nodes, rounds))

        async def follow(sdk: FlameSDK) -> None:
            for r in range(total):
                go = await sdk.await_message(aggregator, category="go", timeout=timeout)
                answer = {"round": go.data["round"], "node": sdk.node_id}
                report = await sdk.send_message(
                    aggregator, answer, category="answer", timeout=timeout
                )
                if not report.ok:
                    raise RuntimeError(f"{sdk.node_id}: answer to round {r} not acknowledged")
                settled[r].tick()

        async def node(local: LocalNode) -> None:
            async with FlameSDK(local.config(), transport=platform.transport_for(local)) as sdk:
                entered.tick()
                if local.node_id == aggregator:
                    try:
                        await lead(sdk)
                    finally:
                        measured["stopped_at"] = time.perf_counter()
                        stop.set()
                else:
                    await follow(sdk)
                    await stop.wait()  # nobody shuts down while rounds still run

        # the runner tunes the collector for in-process runs: so does this harness
        with tuned_collector():
            async with anyio.create_task_group() as tg:
                for local in platform.nodes:
                    tg.start_soon(node, local)
    teardown_s = time.perf_counter() - measured["stopped_at"]
    return summarize(
        transport,
        nodes,
        rounds,
        warmup,
        startup_s=measured["startup_s"],
        walls=measured["walls"],
        cpus=measured["cpus"],
        peak=maxrss_mib(),
        idle=idle,
        extra={
            "platform_s": platform_s,
            "nodes_s": measured["startup_s"] - platform_s,
            "teardown_s": teardown_s,
            "deliveries": measured["deliveries"],
        },
    )


def summarize(
    kind: Kind,
    nodes: int,
    rounds: int,
    warmup: int,
    *,
    startup_s: float,
    walls: list[float],
    cpus: list[float],
    peak: float,
    idle: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The figures of one configuration, from its measured rounds."""
    cpu = statistics.median(cpus)
    return {
        "status": "ok",
        "kind": kind,
        "nodes": nodes,
        "rounds": rounds,
        "warmup": warmup,
        "startup_s": startup_s,
        "round_p50_ms": statistics.median(walls) * 1e3,
        "round_p95_ms": percentile(walls, 0.95) * 1e3,
        "round_cpu_ms": cpu * 1e3,
        "cpu_per_analyzer_us": cpu * 1e6 / (nodes - 1),
        "peak_rss_mib": peak,
        "idle_rss_mib": idle,
        "rss_per_node_kib": (peak - idle) * 1024 / nodes,
        **extra,
        "round_ms": [w * 1e3 for w in walls],
    }


async def star_processes(nodes: int, rounds: int, warmup: int, timeout: float) -> dict[str, Any]:
    """Star rounds with one ``python _scale_analysis.py`` per node (``run_script``).

    Start-up: from the call of ``run_script`` (which first imports the script in a child
    process to check it) until the aggregator's ``ready_check`` has every node's answer, just
    before its first go; ``platform_to_ready_s`` counts from when the runner starts the
    platform instead. CPU per round: the sum over the node processes (each measures from the
    end of one round to the end of the next); the platform process' CPU is reported for the
    whole run only.
    """
    os.environ |= {
        "FLAME_SCALE_ROUNDS": str(rounds),
        "FLAME_SCALE_WARMUP": str(warmup),
        "FLAME_SCALE_TIMEOUT": str(timeout),
    }
    idle = maxrss_mib()
    launched: list[float] = []
    counters: list[DeliveryCounter] = []

    async def observe(platform: LocalPlatform, outcomes: list[NodeOutcome]) -> None:
        if not counters:
            aggregator = platform.aggregator_id
            counters.append(DeliveryCounter(platform, aggregator, from_start=True, keep=True))
        counters[0].update()

    cpu0 = time.process_time()
    called = time.monotonic()
    result = await run_script(
        ANALYSIS,
        mode="processes",
        nodes=nodes,
        timeout=timeout,
        observer=observe,
        on_start=lambda: launched.append(time.monotonic()),
        po_interval=PO_INTERVAL,
    )
    platform_cpu_s = time.process_time() - cpu0
    if not result.ok:
        causes = [f"{o.node_id}: {o.failure.headline()}" for o in result.root_causes[:3]]
        raise RuntimeError(f"the run failed ({result.stop_reason or 'a node failed'}): {causes}")
    reports = [node_report(outcome) for outcome in result.outcomes]
    lead = next(r for r in reports if r["role"] == "aggregator")
    counter = counters[0]
    assert counter.kept is not None
    # copies dropped before the measured rounds: a node not subscribed yet when a message
    # came (the sender resends it later, which start-up then waits for)
    dropped = Counter(
        f"{e.category}: {e.reason}"
        for e in counter.kept
        if e.outcome == "dropped" and e.sent_monotonic < lead["measured_from"]
    )
    # the aggregator let the warm-up settle before it noted the time and began to measure
    counter.recount(sent_after=lead["measured_from"])
    total = warmup + rounds
    cpus = [sum(r["round_cpu_s"][i] for r in reports) for i in range(warmup, total)]
    node_peaks = [r["peak_rss_mib"] for r in reports]
    platform_peak = maxrss_mib()
    figures = summarize(
        "processes",
        nodes,
        rounds,
        warmup,
        startup_s=lead["ready_at"] - called,
        walls=lead["round_s"][warmup:],
        cpus=cpus,
        peak=platform_peak + sum(node_peaks),
        idle=idle,
        extra={
            "platform_to_ready_s": lead["ready_at"] - launched[0],
            "round_cpu_scope": "node processes (the platform process is not included)",
            "platform_cpu_s": platform_cpu_s,
            "platform_peak_rss_mib": platform_peak,
            "node_peak_rss_mib": statistics.median(node_peaks),
            "deliveries": counter.summary(nodes, rounds),
            "dropped_before_measuring": dict(dropped),
        },
    )
    figures["peak_rss_scope"] = "sum over the platform process and every node process"
    return figures


def node_report(outcome: NodeOutcome) -> dict[str, Any]:
    """The ``SCALE {json}`` line a node printed."""
    for _, stream, text in outcome.output:
        if stream == "stdout" and text.startswith(MARKER):
            report: dict[str, Any] = json.loads(text.removeprefix(MARKER))
            return report
    raise RuntimeError(f"{outcome.node_id} printed no results")


def describe(exc: BaseException) -> str:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:2000]


def one(
    kind: Literal["memory", "http", "processes"],
    nodes: int,
    rounds: int,
    warmup: int,
    timeout: float,
) -> dict[str, Any]:
    """Measure one configuration in this process."""
    with contextlib.suppress(ValueError, OSError):  # HTTP with many nodes: many sockets
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        if kind == "processes":
            return asyncio.run(star_processes(nodes, rounds, warmup, timeout))
        return asyncio.run(star_in_process(kind, nodes, rounds, warmup, timeout))
    except Exception as exc:  # noqa: BLE001 - a failed configuration is a result
        return {"status": "failed", "kind": kind, "nodes": nodes, "error": describe(exc)}


# -- the whole benchmark: one child process per configuration --------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration to measure."""

    kind: Kind
    nodes: int
    rounds: int
    warmup: int
    timeout: float


def plan(args: argparse.Namespace) -> list[Config]:
    """The configurations to run, in order (each kind from few nodes to many)."""
    table = {kind: list(ns) for kind, ns in (QUICK if args.quick else FULL).items()}
    if args.http_1000 and 1_000 not in table["http"]:
        table["http"].append(1_000)
    kinds = [k for k in KINDS if args.only is None or k in args.only]
    configs = []
    for kind in kinds:
        for n in table[kind]:
            if n > args.max_nodes:
                continue
            rounds, warmup = default_rounds(kind, n, quick=args.quick)
            rounds = rounds if args.rounds is None else args.rounds
            warmup = warmup if args.warmup is None else args.warmup
            timeout = args.timeout_factor * (TIMEOUT_BASE_S + TIMEOUT_PER_NODE_S[kind] * n)
            configs.append(Config(kind, n, rounds, warmup, timeout))
    return configs


def default_rounds(kind: Kind, nodes: int, *, quick: bool) -> tuple[int, int]:
    """Measured rounds and warm-up rounds."""
    if quick:
        return 5, 1
    if kind == "flower":
        return (5, 1) if nodes <= 100 else (3, 1)
    if nodes <= 300:
        return 20, 2
    if nodes <= 1_000:
        return 5, 1
    return 3, 1


def run_child(command: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run one configuration's child process; its last JSON line, or why there is none.

    The child leads a process group of its own (node processes, Ray), which is killed whole
    when it times out or this benchmark is interrupted.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(child)
            return {"status": "timeout", "timeout_s": timeout, "stderr_tail": tail(err)}
        except BaseException:
            kill_group(child)
            raise
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        if code != 0 or result.get("status") != "ok":
            result = {"status": "failed", **result, "exit_code": code, "stderr_tail": tail(err)}
        return result


def kill_group(child: subprocess.Popen[bytes]) -> None:
    """Stop a child and every process in its group: politely, then for good."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace)
            return


def tail(stream: IO[str], lines: int = 15) -> str:
    """The last lines a child wrote to ``stream``."""
    stream.seek(0)
    return "\n".join(stream.read().splitlines()[-lines:])


def find_flower(requested: str | None) -> tuple[str | None, str]:
    """The interpreter to run Flower with, or None and why Flower is skipped."""
    python = requested or sys.executable
    probe = "import flwr, ray; print(flwr.__version__)"
    try:
        done = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{python} cannot be run: {exc}"
    if done.returncode != 0:
        if requested is None:
            return None, (
                "flwr is not importable by this interpreter; pass --flower-python with one "
                'from a venv that has "flwr[simulation]==1.42.*"'
            )
        return None, f"--flower-python {python} cannot import flwr and ray"
    return python, f"flwr {done.stdout.strip()}"


def command_for(config: Config, args: argparse.Namespace, flower: str | None) -> list[str]:
    """The child process that measures ``config``."""
    common = ["--rounds", str(config.rounds), "--warmup", str(config.warmup)]
    if config.kind == "flower":
        assert flower is not None
        cpus = ["--client-cpus", str(args.flower_client_cpus)]
        return [flower, str(FLOWER_DRIVER), "--nodes", str(config.nodes), *common, *cpus]
    kind_n = ["--one", config.kind, str(config.nodes)]
    timeout = ["--timeout", str(config.timeout)]
    return [sys.executable, str(Path(__file__).resolve()), *kind_n, *common, *timeout]


def growth_exponent(points: Iterable[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(y) against log(N): 1 is linear growth, 2 quadratic."""
    pairs = [(math.log(n), math.log(y)) for n, y in points if y > 0]
    if len({x for x, _ in pairs}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pairs)
    my = statistics.fmean(y for _, y in pairs)
    num = sum((x - mx) * (y - my) for x, y in pairs)
    return num / sum((x - mx) ** 2 for x, _ in pairs)


def by_kind(results: list[dict[str, Any]], kind: Kind, key: str) -> dict[int, float]:
    """``{N: result[key]}`` of the configurations of ``kind`` that ran to the end."""
    return {
        r["nodes"]: r[key]
        for r in results
        if r.get("kind") == kind and r.get("status") == "ok" and r.get(key) is not None
    }


def exponent_between(cpu: dict[int, float], low: int, high: int) -> float | None:
    """Growth exponent of CPU per round between two node counts, if both were measured."""
    if low in cpu and high in cpu:
        return growth_exponent([(low, cpu[low]), (high, cpu[high])])
    return None


def analyse(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth exponents, Flower ratios and targets, across the configurations."""
    cpu = {kind: by_kind(results, kind, "round_cpu_ms") for kind in KINDS}
    exponents: dict[str, float | None] = {
        f"{kind}_cpu_exponent": growth_exponent(cpu[kind].items()) for kind in KINDS
    }
    exponents["memory_cpu_exponent_100_1000"] = exponent_between(cpu["memory"], 100, 1_000)
    exponents["http_cpu_exponent_10_100"] = exponent_between(cpu["http"], 10, 100)
    memory = by_kind(results, "memory", "round_p50_ms")
    flower = by_kind(results, "flower", "round_p50_ms")
    over_flower = {str(n): memory[n] / flower[n] for n in sorted(memory) if n in flower}

    def figure(kind: Kind, nodes: int, key: str) -> float | None:
        found = by_kind(results, kind, key).get(nodes)
        return None if found is None else float(found)

    http_300 = next(
        (
            r["deliveries"]["over_minimum"]
            for r in results
            if r.get("kind") == "http" and r.get("nodes") == 300 and r.get("status") == "ok"
        ),
        None,
    )
    http_1000 = [r for r in results if r.get("kind") == "http" and r.get("nodes") == 1_000]
    values: dict[str, float | None] = {
        "memory_100_round_over_flower": over_flower.get("100"),
        "memory_1000_round_p50_ms": figure("memory", 1_000, "round_p50_ms"),
        "memory_10000_peak_rss_mib": figure("memory", 10_000, "peak_rss_mib"),
        "memory_cpu_exponent_100_1000": exponents["memory_cpu_exponent_100_1000"],
        "http_100_round_p50_ms": figure("http", 100, "round_p50_ms"),
        "http_cpu_exponent_10_100": exponents["http_cpu_exponent_10_100"],
        "http_300_deliveries_over_minimum": http_300,
        "http_1000_ok": (
            float(all(r.get("status") == "ok" for r in http_1000)) if http_1000 else None
        ),
        "processes_20_startup_s": figure("processes", 20, "startup_s"),
    }
    met: dict[str, bool | None] = {}
    for name, (op, limit) in TARGETS.items():
        value = values[name]
        met[name] = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return {
        "growth": exponents,
        "flame_memory_round_over_flower": over_flower,
        "targets": {name: f"{op} {limit:g}" for name, (op, limit) in TARGETS.items()},
        "values": values,
        "targets_met": met,
    }


def plot(results: list[dict[str, Any]], path: Path) -> str | None:
    """Round p50 against N on log-log axes, one line per configuration kind; None when drawn,
    else why not."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: pip install -e '.[bench]'"
    labels = {
        "memory": "flame-async, memory transport",
        "http": "flame-async, HTTP (one process)",
        "processes": "flame-async, HTTP, a process per node",
        "flower": "Flower 1.42 simulation (Ray)",
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    anchor: tuple[int, float] | None = None
    for kind in KINDS:
        points = sorted(by_kind(results, kind, "round_p50_ms").items())
        if points:
            ns, ms = zip(*points, strict=True)
            ax.plot(ns, ms, marker="o", label=labels[kind])
            anchor = anchor or points[0]
    everything = [r["nodes"] for r in results if r.get("status") == "ok"]
    if anchor is not None and len(set(everything)) > 1:  # slope 1 on log-log: linear in N
        low, high = min(everything), max(everything)
        scale = anchor[1] / anchor[0]
        ax.plot([low, high], [low * scale, high * scale], "k:", alpha=0.4, label="∝ N")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("star round, p50 (ms)")
    ax.set_title("One star round (go to every node, one answer each)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return None


def brief(result: dict[str, Any]) -> str:
    """One line about one configuration's outcome, for the progress log."""
    if result.get("status") != "ok":
        return f"{result.get('status')}: {result.get('error') or result.get('stderr_tail', '')}"
    return (
        f"round p50 {result['round_p50_ms']:.1f} ms, p95 {result['round_p95_ms']:.1f} ms, "
        f"cpu {result.get('round_cpu_ms') or 0:.1f} ms, start-up {result['startup_s']:.2f} s"
    )


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration in its own child process, then the analysis across them."""
    flower, flower_note = (None, "--no-flower") if args.no_flower else find_flower(args.flower)
    if flower is None and (args.only is None or "flower" in args.only):
        print(f"Flower skipped: {flower_note}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    gave_up: set[Kind] = set()
    for config in plan(args):
        where = f"{config.kind} N={config.nodes}"
        if config.kind == "flower" and flower is None:
            continue
        result: dict[str, Any]
        if config.kind in gave_up:
            result = {"status": "skipped", "reason": "a smaller N of this kind timed out"}
        else:
            print(f"{where}: {config.rounds}+{config.warmup} rounds ...", file=sys.stderr)
            began = time.perf_counter()
            result = run_child(command_for(config, args, flower), config.timeout)
            result["wall_s"] = time.perf_counter() - began
            if result["status"] == "timeout":
                gave_up.add(config.kind)
        result |= {"kind": config.kind, "nodes": config.nodes, "timeout_s": config.timeout}
        print(f"{where}: {brief(result)}", file=sys.stderr)
        results.append(result)
    return {
        "configs": results,
        **analyse(results),
        "flower": {"python": flower, "note": flower_note},
        "python": sys.version.split()[0],
        "machine": pyplatform.machine(),
        "cpus": os.cpu_count(),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def kinds(text: str) -> list[Kind]:
    """The ``--only`` argument: configuration kinds, comma-separated."""
    chosen = [k for k in KINDS if k in text.split(",")]
    if len(chosen) != len(set(text.split(","))):
        raise argparse.ArgumentTypeError(f"kinds are {', '.join(KINDS)}; got {text}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="draw round p50 against N into this PNG")
    parser.add_argument(
        "--quick", action="store_true", help="memory 10/100, http 10/30, processes 3, flower 10"
    )
    parser.add_argument("--http-1000", action="store_true", help="also HTTP with 1 000 nodes")
    parser.add_argument(
        "--only", type=kinds, help="comma-separated kinds to run: " + ",".join(KINDS)
    )
    parser.add_argument("--max-nodes", type=int, default=10**9, help="skip larger N")
    parser.add_argument("--rounds", type=int, help="measured rounds (default: by N)")
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default: by N)")
    parser.add_argument(
        "--timeout-factor", type=float, default=1.0, help="scale every configuration's timeout"
    )
    parser.add_argument(
        "--flower-python",
        dest="flower",
        help="interpreter with flwr[simulation] 1.42 (default: this one, if it imports flwr)",
    )
    parser.add_argument(
        "--flower-client-cpus",
        type=float,
        default=1.0,
        help="Ray CPUs per virtual client: the actor pool has CPUs / this many workers",
    )
    parser.add_argument("--no-flower", action="store_true", help="skip Flower")
    parser.add_argument(
        "--one",
        nargs=2,
        metavar=("KIND", "N"),
        help="internal: measure one configuration here (memory, http, processes), print JSON",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="with --one: per wait")
    args = parser.parse_args()
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds takes 1 or more")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup takes 0 or more")
    if args.one is not None:
        kind, nodes = args.one
        if kind not in ("memory", "http", "processes") or not nodes.isdigit():
            parser.error(f"--one takes memory, http or processes and a node count, not {kind}")
        rounds, warmup = default_rounds(kind, int(nodes), quick=False)
        rounds = rounds if args.rounds is None else args.rounds
        warmup = warmup if args.warmup is None else args.warmup
        print(json.dumps(one(kind, int(nodes), rounds, warmup, args.timeout)), flush=True)
        return
    result = run_all(args)
    if args.plot is not None:
        result["plot"] = plot(result["configs"], args.plot) or str(args.plot)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
