"""Helpers to run FlameSDK nodes on a fresh local platform inside one test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from flame_async import FlameSDK, RetryPolicy
from flame_async._transport import Transport
from flame_async.local import LocalNode, LocalPlatform

FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, deadline=5)


@pytest.fixture(params=["http", "memory"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each end-to-end test runs on both transports: real HTTP and in memory."""
    return str(request.param)


@asynccontextmanager
async def running(
    nodes: int | list[str] = 3,
    *,
    start: int | None = None,
    sdk: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    wrap: Callable[[LocalNode, Transport], Transport] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[LocalPlatform, list[FlameSDK]]]:
    """A platform with ``nodes`` nodes and a FlameSDK entered on the first ``start`` of them.

    ``wrap`` may wrap each node's transport (to inject faults).
    """
    options.setdefault("webhook_retry_initial", 0.01)
    options.setdefault("po_interval", 3600.0)
    sdk_options = {"resend_initial": 0.2, **(sdk or {})}
    async with LocalPlatform(nodes, **options) as platform, AsyncExitStack() as stack:
        count = len(platform.nodes) if start is None else start
        flames = []
        for node in platform.nodes[:count]:
            node_config = node.config(**{"retry": FAST_RETRY, **(config or {})})
            node_transport = platform.transport_for(node, node_config)
            if wrap is not None:
                node_transport = wrap(node, node_transport)
            flame = FlameSDK(node_config, transport=node_transport, **sdk_options)
            flames.append(await stack.enter_async_context(flame))
        yield platform, flames
