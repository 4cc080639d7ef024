"""Helpers to run FlameSDK nodes on a fresh local platform inside one test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from flame_async import FlameSDK, RetryPolicy
from flame_async.local import LocalPlatform

FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, deadline=5)


@asynccontextmanager
async def running(
    nodes: int | list[str] = 3,
    *,
    start: int | None = None,
    sdk: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[LocalPlatform, list[FlameSDK]]]:
    """A platform with ``nodes`` nodes and a FlameSDK entered on the first ``start`` of them."""
    options.setdefault("webhook_retry_initial", 0.01)
    options.setdefault("po_interval", 3600.0)
    sdk_options = {"resend_initial": 0.2, **(sdk or {})}
    async with LocalPlatform(nodes, **options) as platform, AsyncExitStack() as stack:
        count = len(platform.nodes) if start is None else start
        flames = []
        for node in platform.nodes[:count]:
            node_config = node.config(**{"retry": FAST_RETRY, **(config or {})})
            flame = FlameSDK(
                node_config, transport=platform.transport_for(node, node_config), **sdk_options
            )
            flames.append(await stack.enter_async_context(flame))
        yield platform, flames
