"""The delivery contract under the faults real brokers produce (docs/concepts/delivery.md).

An acknowledgement is a promise: whatever a sender is told was acknowledged is handed over to
the receiving analysis, exactly once and in the sender's order, also when the broker answers
5xx, drops connections, delivers late or loses a message for good. A send that cannot be
delivered says so, with a reason.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import TaskStatus

from flame_async import (
    FlameConfig,
    FlameSDK,
    IncompleteResponse,
    Message,
    SendReport,
    TransportError,
)
from flame_async._transport import Handler, Request, Response, Transport
from flame_async.local import LocalNode, LocalPlatform

from .conftest import running
from .faults import CuttingProxy, FaultyTransport

pytestmark = pytest.mark.slow


async def _eventually(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait for the platform's records (which offer no event) to show ``predicate``."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - platform state, polled
            await anyio.sleep(0.005)


async def test_a_message_behind_an_oversized_one_is_handed_over_not_held(transport: str) -> None:
    """The receiver refuses the first message (413: larger than its body limit); the broker
    drops it. The small message after it must reach the analysis, not wait for it forever.

    The nodes take less than the broker does (1 MiB against 16 MiB; with equal limits the
    broker refuses such a message at send time already), and send it inline, not through
    storage.
    """
    async with running(
        2,
        transport=transport,
        sdk={"gap_timeout": 2.0, "inline_message_limit": 8 << 20},
        config={"max_api_body_bytes": 1 << 20},
    ) as (platform, (a, b)):
        big = {"blob": "x" * (2 << 20)}
        big_report: SendReport | None = None

        async def send_big() -> None:
            nonlocal big_report
            big_report = await a.send_message(b.node_id, big, category="big", timeout=4)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_big)
            # the big one was numbered first and refused by the receiver (413, dropped)
            await _eventually(
                lambda: any(
                    e.category == "big" and e.outcome == "dropped" and e.status == 413
                    for e in platform.deliveries
                ),
                10,
            )
            small = await a.send_message(b.node_id, {"n": 1}, category="small", timeout=10)
            assert small.ok  # acknowledged: a promise that b's analysis gets it
            handed = await b.await_message(a.node_id, category="small", timeout=10)
            assert handed.data == {"n": 1}
        assert big_report is not None
        assert big_report.missing == (b.node_id,)
        assert "no acknowledgement within 4 s" in big_report.reasons[b.node_id]
        assert b.get_list_of_messages() == []  # the big one never arrives late


async def test_every_acked_message_is_handed_over_once_in_order_despite_broker_faults(
    transport: str,
) -> None:
    """500, 503 and connection resets (before and after the broker took the message) on a
    third of the broker POSTs, random delays on all of them, many sends in flight."""
    per_peer = 40
    seed = random.Random(7)
    wrapped: dict[str, FaultyTransport] = {}

    def faulty(node: LocalNode, inner: Transport) -> Transport:
        wrapped[node.node_id] = FaultyTransport(inner, random.Random(seed.random()))
        return wrapped[node.node_id]

    async with running(3, transport=transport, wrap=faulty) as (_, flames):
        reports: dict[tuple[str, str, int], SendReport] = {}
        handed: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
        total = per_peer * (len(flames) - 1)

        async def send_all(flame: FlameSDK) -> None:
            limit = anyio.Semaphore(8)

            async def one(peer: str, i: int) -> None:
                async with limit:
                    reports[(flame.node_id, peer, i)] = await flame.send_message(
                        peer, {"i": i}, category="load", timeout=30
                    )

            async with anyio.create_task_group() as tg:
                for i in range(per_peer):
                    for peer in flame.get_participant_ids():
                        tg.start_soon(one, peer, i)

        async def receive_all(flame: FlameSDK, done: anyio.Event) -> None:
            while len(handed[flame.node_id]) < total:
                with anyio.move_on_after(0.5) as scope:
                    message: Message = await flame.await_message(category="load", timeout=60)
                if scope.cancelled_caught:
                    if done.is_set() and _all_acked_handed(reports, handed, flame.node_id):
                        return
                    continue
                handed[flame.node_id].append((message.sender, message.data["i"], time.monotonic()))

        sends_done = anyio.Event()
        async with anyio.create_task_group() as tg:
            for flame in flames:
                tg.start_soon(receive_all, flame, sends_done)
            async with anyio.create_task_group() as senders:
                for flame in flames:
                    senders.start_soon(send_all, flame)
            last_send = time.monotonic()
            sends_done.set()

        faults = sum((w.injected for w in wrapped.values()), start=Counter[str]())
        assert sum(faults.values()) > 50, faults  # the faults really happened
        acked = {key for key, report in reports.items() if report.ok}
        assert len(acked) > 0.9 * len(reports)
        for (_, receiver, _), report in reports.items():
            if not report.ok:
                assert report.reasons[receiver]  # a send that ends unacked says why
        for receiver, items in handed.items():
            keys = [(sender, i) for sender, i, _ in items]
            assert len(keys) == len(set(keys)), "handed over twice"
            for sender in {s for s, _, _ in items}:
                numbers = [i for s, i, _ in items if s == sender]
                assert numbers == sorted(numbers), f"{sender}->{receiver} out of order"
            for sender, i in keys:  # nothing that was never sent
                assert (sender, receiver, i) in reports
            late = [t - last_send for _, _, t in items if t - last_send > 5]
            assert not late, f"handed over more than 5 s after the last send: {late}"
        for sender, receiver, i in acked:
            assert (sender, i) in {(s, n) for s, n, _ in handed[receiver]}, (sender, receiver, i)


def _all_acked_handed(
    reports: dict[tuple[str, str, int], SendReport],
    handed: dict[str, list[tuple[str, int, float]]],
    receiver: str,
) -> bool:
    got = {(s, i) for s, i, _ in handed[receiver]}
    return all(
        (sender, i) in got
        for (sender, to, i), report in reports.items()
        if to == receiver and report.ok
    )


async def test_an_out_of_range_time_is_taken_with_the_arrival_time(transport: str) -> None:
    """``meta.created_at`` in year 1 (it overflows when converted) once answered 500 after the
    id was recorded, so the broker's retry was acked as a duplicate and the message lost."""
    async with running(2, transport=transport) as (platform, (a, b)):
        meta = {
            "type": "outgoing",
            "category": "odd-time",
            "id": "flamesdk-0-abcd",
            "akn_id": None,
            "status": "unread",
            "sender": a.node_id,
            "created_at": "0001-01-01T00:00:00+01:00",
            "arrived_at": None,
            "number": 0,
        }

        async def deliver(body: dict[str, object]) -> int:
            request = Request(
                "POST",
                "/webhook",
                headers={"content-type": "application/json"},
                body=orjson.dumps(body),
            )
            async with platform.call_api(b.node_id, request) as answer:
                return answer.status

        before = time.time()
        # a delivery with a broken field is refused (nothing recorded) ...
        assert await deliver({"v": 1, "meta": {**meta, "number": "zero"}}) == 422
        # ... so the retry of the same message is taken, and taken once
        assert await deliver({"v": 1, "meta": meta}) == 200
        assert await deliver({"v": 1, "meta": meta}) == 200
        message = await b.await_message(a.node_id, category="odd-time", timeout=5)
        assert message.data == {"v": 1}
        assert before - 1 <= message.time.timestamp() <= time.time() + 1  # its arrival time
        assert b.get_list_of_messages() == []


@pytest.mark.parametrize("what", ["intermediate result", "s3 object"])
async def test_a_download_cut_off_midway_raises_a_transport_error(
    transport: str, what: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "node-2" / "s3").mkdir(parents=True)
    (data_dir / "node-2" / "s3" / "big.bin").write_bytes(b"z" * 300_000)
    cut = r"/storage/intermediate/|/kong/node-2-s3/s3/big\.bin"
    async with running(2, start=1, transport=transport, data_dir=data_dir) as (platform, (a,)):
        b_node = platform.nodes[1]
        async with (
            _cutting(platform, b_node, cut) as (b_config, b_transport),
            FlameSDK(b_config, transport=b_transport) as b,
        ):
            if what == "intermediate result":
                await a.send_intermediate_result(b.node_id, b"y" * 300_000)
                with pytest.raises(TransportError, match="cut off") as info:
                    await b.await_intermediate_result(a.node_id, timeout=10)
            else:
                s3 = b.get_data_client("node-2-s3")
                with pytest.raises(TransportError, match="cut off") as info:
                    await s3.get("big.bin")
        cause = info.value if isinstance(info.value, IncompleteResponse) else info.value.__cause__
        assert isinstance(cause, IncompleteResponse)


class _CutBodies:
    """In memory there is no wire to cut: answers to matching requests break off after half of
    their body, with the error a transport raises for a connection that broke."""

    def __init__(self, inner: Transport, cut: str) -> None:
        self.inner = inner
        self.cut = re.compile(cut)

    async def __aenter__(self) -> _CutBodies:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Response]:
        async with self.inner.open(request) as response:
            if not self.cut.search(request.path):
                yield response
                return
            body = await response.read()

            async def half() -> AsyncIterator[bytes]:
                yield body[: len(body) // 2]
                raise IncompleteResponse(
                    f"the answer of {request.service} to {request.method} {request.path} was "
                    "cut off (injected)",
                    service=request.service,
                    method=request.method,
                    url=request.path,
                )

            yield Response(
                response.status, half(), headers=response.headers, content_length=len(body)
            )

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        await self.inner.serve(handler, task_status=task_status)


@asynccontextmanager
async def _cutting(
    platform: LocalPlatform, node: LocalNode, cut: str
) -> AsyncIterator[tuple[FlameConfig, Transport]]:
    """A node configuration and transport whose downloads matching ``cut`` break off."""
    if platform.transport == "memory":
        yield node.config(), _CutBodies(platform.transport_for(node), cut)
        return
    async with CuttingProxy(node.gateway_port, cut)() as proxy:
        config = node.config(
            base_url=f"http://127.0.0.1:{proxy.port}",
            webhook_url=f"{node.gateway_url}/analysis/webhook",
        )
        yield config, platform.transport_for(node, config)
        assert proxy.cuts >= 1
