"""Many nodes on one machine: star rounds at scale, in memory and over HTTP.

Each node is entered in its own task, as the runner does (entering thousands of SDKs one
inside the other in a single task would nest their cancel scopes thousands deep).
"""

from __future__ import annotations

import gc
import resource
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Literal

import anyio
import pytest

from flame_async import FlameSDK
from flame_async.local import LocalPlatform
from flame_async.runner import run_script

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow

_CATEGORIES = ("go", "answer")


@asynccontextmanager
async def star(platform: LocalPlatform) -> AsyncIterator[tuple[FlameSDK, list[FlameSDK]]]:
    """Every node of ``platform`` entered in a task of its own; yields (aggregator, others)."""
    flames: dict[str, FlameSDK] = {}
    all_in, done = anyio.Event(), anyio.Event()

    async def node(local_id: str) -> None:
        local = platform.node(local_id)
        async with FlameSDK(local.config(), transport=platform.transport_for(local)) as flame:
            flames[local_id] = flame
            if len(flames) == len(platform.nodes):
                all_in.set()
            await done.wait()

    async with anyio.create_task_group() as tg:
        for node_id in platform.node_ids:
            tg.start_soon(node, node_id)
        with anyio.fail_after(300):
            await all_in.wait()
        aggregator = flames[platform.aggregator_id]
        try:
            yield aggregator, [f for f in flames.values() if f is not aggregator]
        finally:
            done.set()


async def star_round(aggregator: FlameSDK, others: list[FlameSDK], number: int) -> None:
    """The aggregator sends "go" to every node; each answers with an acknowledged message."""

    async def answer(flame: FlameSDK) -> None:
        go = await flame.await_message(aggregator.node_id, category="go", timeout=120)
        report = await flame.send_message(
            aggregator.node_id,
            {"n": go.data["round"] * 1000 + int(flame.node_id[5:])},
            category="answer",
            timeout=120,
        )
        assert report.ok, report

    async with anyio.create_task_group() as tg:
        for flame in others:
            tg.start_soon(answer, flame)
        report = await aggregator.send_message(None, {"round": number}, category="go", timeout=120)
        assert report.ok and len(report.acked) == len(others), report
        answers = await aggregator.await_messages(category="answer", timeout=120)
    assert len(answers) == len(others)
    got = sum(m.data["n"] for m in answers.values() if m is not None)
    expected = sum(number * 1000 + int(f.node_id[5:]) for f in others)
    assert got == expected, f"round {number}: sum {got}, expected {expected}"


@pytest.mark.timeout(600)
async def test_a_thousand_nodes_run_three_exact_star_rounds_in_memory() -> None:
    nodes = 1000
    async with (
        LocalPlatform(nodes, transport="memory", po_interval=3600.0) as platform,
        star(platform) as (aggregator, others),
    ):
        assert aggregator.is_aggregator
        for number in range(1, 4):
            await star_round(aggregator, others, number)
        assert platform.api_port(aggregator.node_id) is None  # no socket anywhere
        # the participant table is one object for all nodes, not a copy per node
        rosters = {id(f._run.broker._participants._roster) for f in [aggregator, *others]}
        assert len(rosters) == 1


@contextmanager
def cyclic_garbage() -> Iterator[Counter[str]]:
    """Counts, by type, the objects that only the cyclic collector could free, made in the
    block (the collector is paused in it, so none is freed early)."""
    found: Counter[str] = Counter()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.update(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_star_rounds_leave_no_reference_cycles(transport: Literal["memory", "http"]) -> None:
    """Every object a message makes is freed when its last reference goes: a cycle (say a
    response holding a bound method of itself) would keep each message's bodies and headers
    until the collector's next pass, which at 1,000 nodes is tens of MB of stale memory and
    a collection pause every round or two."""
    async with (
        LocalPlatform(5, transport=transport, po_interval=3600.0) as platform,
        star(platform) as (aggregator, others),
    ):
        await star_round(aggregator, others, 1)  # first use: caches and lazy set-up
        with cyclic_garbage() as found:
            for number in range(2, 5):
                await star_round(aggregator, others, number)
    assert not found, f"reference cycles per 3 rounds of 4 analyzers: {dict(found)}"


def _descriptors_for(nodes: int) -> None:
    """Raise the soft file limit for ``nodes`` in-process HTTP nodes, or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 64 + 24 * nodes
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"{nodes} HTTP nodes need about {need} descriptors; ulimit -Hn is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.timeout(600)
async def test_three_hundred_http_nodes_need_no_more_than_the_minimum_deliveries() -> None:
    """5 star rounds over HTTP: the platform counts every broker copy (messages and acks).

    The minimum per round is a copy of "go" and of each answer, one ack per answer, and one
    per "go" unless the answer carries it: 3 (N - 1) when every answer carries it, 4 (N - 1)
    when none does. Resends (a timeout shorter than the round) would add to it."""
    nodes, rounds = 300, 5
    _descriptors_for(nodes)
    async with (
        LocalPlatform(nodes, transport="http", po_interval=3600.0) as platform,
        star(platform) as (aggregator, others),
    ):
        before = len(platform.deliveries)
        for number in range(1, rounds + 1):
            await star_round(aggregator, others, number)
        events = platform.deliveries[before:]
    copies = [e for e in events if e.category in _CATEGORIES]
    assert all(e.outcome == "delivered" and e.attempts == 1 for e in copies)
    minimum = rounds * 3 * (nodes - 1)
    assert len(copies) <= 1.05 * minimum, f"{len(copies)} copies for a minimum of {minimum}"
    # nothing was resent: each message reached each receiver once
    firsts = {(e.recipient, e.message_id) for e in copies}
    assert len(firsts) == len(copies)


@pytest.mark.timeout(600)
async def test_the_star_example_runs_on_a_thousand_simulated_nodes(tmp_path: Path) -> None:
    """`flame-async run examples/star.py --nodes 1000 --transport memory`: simulation mode."""
    result = await run_script(
        EXAMPLES / "star.py", nodes=1000, transport="memory", out_dir=tmp_path / "out"
    )
    assert result.ok, [o.failure for o in result.failed]
    values = [o.result for o in result.outcomes if o.role != "aggregator"]
    aggregator = next(o for o in result.outcomes if o.role == "aggregator")
    assert aggregator.result == sum(values) + star_value(aggregator.node_id)


def star_value(node_id: str) -> int:
    """examples/star.py's local value of a node."""
    return sum(ord(c) for c in node_id) % 97
