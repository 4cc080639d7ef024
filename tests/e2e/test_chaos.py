"""Chaos mode: an analysis holds against the faults of a real platform, injected by the local
platform on both transports (seeded: a failing run replays with the spec in its output)."""

from __future__ import annotations

import anyio
import pytest

from flame_async import FlameSDK, Message
from flame_async.local import Faults

from .conftest import running

pytestmark = pytest.mark.slow

ROUNDS = 50
NODES = 5
CHAOS = (
    "drop=0.1,dup=0.1,webhook-5xx=0.05,5xx=0.05,delay=0-50ms,"
    "broker-restart=2s,token=6s,seed=20261126"
)


def value(node: int, round_: int) -> int:
    return (node + 1) * 1000 + round_


async def aggregator(flame: FlameSDK, seen: list[tuple[str, str, int]]) -> list[int]:
    analyzers = flame.get_participant_ids()
    sums = []
    for round_ in range(ROUNDS):
        got = await flame.await_messages(analyzers, category="value", timeout=60)
        values: dict[str, Message] = {}
        for node, message in got.items():
            assert message is not None, f"round {round_}: nothing from {node}"
            values[node] = message
            seen.append(("value", node, message.data["round"]))
        assert {m.data["round"] for m in values.values()} == {round_}, values
        total = sum(m.data["value"] for m in values.values())
        sums.append(total)
        report = await flame.send_message(
            None, {"round": round_, "sum": total}, category="total", timeout=60
        )
        assert report.ok, report
    return sums


async def analyzer(flame: FlameSDK, index: int, seen: list[tuple[str, str, int]]) -> None:
    aggregator_id = flame.get_aggregator_id()
    for round_ in range(ROUNDS):
        report = await flame.send_message(
            aggregator_id,
            {"round": round_, "value": value(index, round_)},
            category="value",
            timeout=60,
        )
        assert report.ok, report
        total = await flame.await_message(aggregator_id, category="total", timeout=60)
        seen.append(("total", flame.node_id, total.data["round"]))
        assert total.data["round"] == round_


@pytest.mark.timeout(240)
async def test_fifty_star_rounds_are_exact_under_chaos(transport: str) -> None:
    faults = Faults.parse(CHAOS)
    seen: list[tuple[str, str, int]] = []
    sums: list[int] = []
    async with running(NODES, transport=transport, faults=faults, po_interval=1.0) as (
        platform,
        flames,
    ):

        async def aggregate() -> None:
            sums.extend(await aggregator(flames[0], seen))

        with anyio.fail_after(200):
            async with anyio.create_task_group() as tg:
                tg.start_soon(aggregate)
                for index, flame in enumerate(flames[1:], start=1):
                    tg.start_soon(analyzer, flame, index, seen)
        leftovers = {f.node_id: f._require().queued() for f in flames}
        injected = platform.faults.injected if platform.faults else {}
        refreshes = sum(platform.token_refreshes(n) for n in platform.node_ids)

    expected = [sum(value(i, r) for i in range(1, NODES)) for r in range(ROUNDS)]
    assert sums == expected, f"replay with faults {faults.spec()!r}"
    # every message handed over exactly once: each (direction, node, round) once
    assert len(seen) == len(set(seen)) == 2 * (NODES - 1) * ROUNDS
    assert leftovers == {f: [] for f in leftovers}
    for kind in ("drop", "duplicate", "webhook-5xx"):
        assert injected.get(kind, 0) > 0, (kind, injected)
    assert any(k.startswith("service-") for k in injected), injected
    assert refreshes >= NODES, "every node's token was refreshed mid-run"


MESSAGES = 30
ROUGH = "reorder=0.2,delay=0-20ms,webhook-reset=0.1,reset=0.05,api-down=node-2@300ms+1s,seed=5"


@pytest.mark.timeout(240)
async def test_all_to_all_in_order_under_resets_reordering_and_an_api_outage(
    transport: str,
) -> None:
    faults = Faults.parse(ROUGH)
    received: dict[str, list[tuple[str, int]]] = {}
    async with running(3, transport=transport, faults=faults) as (platform, flames):

        async def node(flame: FlameSDK) -> None:
            peers = flame.get_participant_ids()

            async def send_all() -> None:
                for n in range(MESSAGES):
                    report = await flame.send_message(peers, {"n": n}, category="n", timeout=60)
                    assert report.ok, report

            async def receive_all() -> None:
                got = received.setdefault(flame.node_id, [])
                for _ in range(MESSAGES * len(peers)):
                    message = await flame.await_message(category="n", timeout=60)
                    got.append((message.sender, message.data["n"]))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all)
                tg.start_soon(receive_all)

        with anyio.fail_after(200):
            async with anyio.create_task_group() as tg:
                for flame in flames:
                    tg.start_soon(node, flame)
        injected = dict(platform.faults.injected) if platform.faults else {}

    for name, got in received.items():
        for sender in {s for s, _ in got}:
            numbers = [n for s, n in got if s == sender]
            assert numbers == list(range(MESSAGES)), (name, sender, faults.spec())
    for kind in ("reorder", "webhook-reset", "api-down"):
        assert injected.get(kind, 0) > 0, (kind, injected)
    assert injected.get("service-reset-before", 0) + injected.get("service-reset-after", 0)
