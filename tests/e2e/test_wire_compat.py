"""Wire compatibility with flamesdk 0.6 (PROTOCOL §2.7, §2.8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import orjson
import pytest

from flame_async._transport import Request, Response
from flame_async.local import LocalNode, LocalPlatform

from .conftest import running

pytestmark = pytest.mark.slow

FLAMESDK_META_FIELDS = {
    "type",
    "category",
    "id",
    "akn_id",
    "status",
    "sender",
    "created_at",
    "arrived_at",
    "number",
}


class LegacyNode:
    """Stands in for a flamesdk node: hand-made wire bodies with its token, its own webhook.

    It speaks through the platform's transport for its node (real HTTP, or in memory), so the
    exact bytes a flamesdk node would send and receive are checked on both transports.
    """

    def __init__(self, platform: LocalPlatform, node: LocalNode) -> None:
        self.node = node
        self.transport = platform.transport_for(node)
        self.inbox: list[dict[str, Any]] = []
        self.arrived = anyio.Event()
        self._prefix = f"/message-broker/analyses/{node.env['ANALYSIS_ID']}"

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[LegacyNode]:
        async def webhook(request: Request) -> Response:
            self.inbox.append(orjson.loads(await request.read()))
            self.arrived.set()
            return Response(200, b"null", headers={"content-type": "application/json"})

        async with self.transport, anyio.create_task_group() as tg:
            await tg.start(self.transport.serve, webhook)
            yield self
            tg.cancel_scope.cancel()

    async def _post(self, path: str, body: object, expect: int) -> None:
        request = Request(
            "POST",
            self._prefix + path,
            headers={
                "authorization": f"Bearer {self.node.env['KEYCLOAK_TOKEN']}",
                "content-type": "application/json",
            },
            body=orjson.dumps(body),
            service="broker",
        )
        async with self.transport.open(request) as answer:
            text = await answer.read()
            assert answer.status == expect, text

    async def subscribe(self, webhook: str) -> None:
        await self._post("/messages/subscriptions", {"webhookUrl": webhook}, 201)

    async def send(self, recipients: list[str], message: dict[str, Any]) -> None:
        await self._post("/messages", {"recipients": recipients, "message": message}, 202)

    async def wait(self, count: int) -> list[dict[str, Any]]:
        with anyio.fail_after(5):
            while len(self.inbox) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.inbox


async def test_outgoing_message_carries_flamesdk_meta_and_user_fields(transport: str) -> None:
    async with (
        running(2, start=1, transport=transport) as (platform, (a,)),
        LegacyNode(platform, platform.nodes[1]).serving() as legacy,
    ):
        await legacy.subscribe(f"{legacy.node.gateway_url}/analysis/webhook")
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: a.send_message(
                    legacy.node.node_id, {"weights": [1, 2]}, category="round", timeout=0.5
                )
            )
            (body,) = await legacy.wait(1)
    assert body["weights"] == [1, 2]
    meta = body["meta"]
    assert set(meta) >= FLAMESDK_META_FIELDS
    assert meta["type"] == "outgoing" and meta["akn_id"] is None and meta["status"] == "unread"
    assert (
        meta["sender"] == a.node_id and meta["category"] == "round" and meta["arrived_at"] is None
    )
    assert isinstance(meta["number"], int) and meta["id"].startswith(a.node_id[:4] + "-0-")
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is None  # str(datetime.now())


async def test_flamesdk_message_is_handed_over_and_acked_recognisably(transport: str) -> None:
    async with (
        running(2, start=1, transport=transport) as (platform, (a,)),
        LegacyNode(platform, platform.nodes[1]).serving() as legacy,
    ):
        await legacy.subscribe(f"{legacy.node.gateway_url}/analysis/webhook")
        original_meta = {
            "type": "outgoing",
            "category": "intermediate_data",
            "id": "node-0-ab12",
            "akn_id": None,
            "status": "unread",
            "sender": legacy.node.node_id,
            "created_at": "2026-11-22 10:00:00.123456",
            "arrived_at": None,
            "number": 0,
        }
        await legacy.send([a.node_id], {"result_id": {"x": "y"}, "meta": original_meta})
        message = await a.await_message(legacy.node.node_id, timeout=5)
        (ack,) = await legacy.wait(1)
        # flamesdk sends the same message again if the ack were lost: a duplicate
        await legacy.send([a.node_id], {"result_id": {"x": "y"}, "meta": original_meta})
        await legacy.wait(2)
        leftover = a.get_list_of_messages()
    assert message.data == {"result_id": {"x": "y"}} and message.category == "intermediate_data"
    assert message.id == "node-0-ab12"
    # flamesdk recognises an ack as: meta.id == I and meta.akn_id == receiver, sender unchanged
    ack_meta = ack["meta"]
    assert ack_meta["id"] == "node-0-ab12"
    assert ack_meta["akn_id"] == a.node_id
    assert ack_meta["sender"] == legacy.node.node_id
    assert ack_meta["category"] == "intermediate_data"
    assert ack_meta["type"] == "incoming" and ack_meta["arrived_at"] is not None
    for key in ("status", "created_at", "number"):
        assert key in ack_meta  # fields flamesdk reads without a guard
    assert set(ack) == {"meta"}  # slim: the payload is not echoed
    assert leftover == []  # the duplicate was acked again, not handed over twice
