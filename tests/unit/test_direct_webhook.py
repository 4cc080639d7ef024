"""An in-process transport hands webhook bodies to the node API without a request around them;
the answer and the bookkeeping are the webhook route's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Self

import orjson
import pytest
from anyio.abc import TaskStatus
from pydantic import SecretStr

from flame_async import RetryPolicy
from flame_async._jwt import TokenStore
from flame_async._protocol import Rejection
from flame_async._transport import DirectWebhook, GatewayClient, Handler, Request, Response
from flame_async.api import NodeApi
from flame_async.status import StatusService

Sink = Callable[[bytes], Awaitable[Rejection | None]]


async def _taken(body: bytes) -> Rejection | None:
    return None


async def _starting(body: bytes) -> Rejection | None:
    return Rejection(503, "starting", "node is still starting")


class NoGateway:
    """A transport for a node API whose gateway is never called here."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def open(self, request: Request) -> AbstractAsyncContextManager[Response]:
        raise AssertionError(f"unexpected gateway call: {request.path}")

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        raise AssertionError("not served")


def api_with(
    sink: Sink, taken: list[bytes] | None = None, ready: list[bool] | None = None
) -> NodeApi:
    async def recording(body: bytes) -> Rejection | None:
        if taken is not None:
            taken.append(body)
        return await sink(body)

    gateway = GatewayClient(
        NoGateway(), TokenStore(SecretStr("t")), retry=RetryPolicy(instant=True), timeout=60
    )
    return NodeApi(
        gateway=gateway,
        analysis_id="a1",
        status=StatusService(),
        on_webhook=recording,
        on_partner_status=lambda statuses: None,
        max_body=64,
        webhook_ready=None if ready is None else lambda: ready[0],
    )


def webhook(body: bytes) -> Request:
    return Request("POST", "/webhook", headers={"content-type": "application/json"}, body=body)


@pytest.mark.parametrize(
    ("sink", "body", "status", "key"),
    [
        (_taken, orjson.dumps({"meta": {}}), 200, None),
        (_taken, b"x" * 65, 413, "body too large"),
        (_taken, b"", 400, "empty body"),
        (_starting, orjson.dumps({"meta": {}}), 503, "starting"),
    ],
)
async def test_a_direct_delivery_answers_and_counts_as_the_webhook_route(
    sink: Sink, body: bytes, status: int, key: str | None
) -> None:
    over_http, direct = api_with(sink), api_with(sink)
    assert (await over_http.handle(webhook(body))).status == status
    assert await direct.deliver_webhook(body) == status
    assert direct.rejected == over_http.rejected
    if key is not None:
        assert direct.rejected[key] == 1


async def test_the_body_reaches_the_broker_unchanged() -> None:
    taken: list[bytes] = []
    api = api_with(_taken, taken)
    body = orjson.dumps({"meta": {"id": "m1"}, "data": [1, 2]})
    assert await api.deliver_webhook(body) == 200
    assert taken == [body]


def test_the_node_api_is_its_own_handler_and_a_direct_webhook() -> None:
    api = api_with(_taken)
    assert isinstance(api, DirectWebhook)
    assert callable(api)


def test_webhooks_are_taken_at_once_only_once_the_node_says_so() -> None:
    assert not api_with(_taken).takes_webhooks_at_once()  # no readiness known: maybe not
    ready = [False]
    api = api_with(_taken, ready=ready)
    assert not api.takes_webhooks_at_once()
    ready[0] = True
    assert api.takes_webhooks_at_once()
