"""Fixtures for the local platform tests (helpers in :mod:`.helpers`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flame_async.local import LocalNode, LocalPlatform

from .helpers import Caller, Gateway, MakeGateway, StartApi, StartPlatform, StubApi, Via


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def platforms() -> list[LocalPlatform]:
    """Every platform a test started (so a node's stub API finds its platform)."""
    return []


@pytest.fixture
def start_platform(
    stack: AsyncExitStack, tmp_path: Path, platforms: list[LocalPlatform]
) -> StartPlatform:
    async def start(nodes: Any = 3, **options: Any) -> LocalPlatform:
        options.setdefault("webhook_retry_initial", 0.001)
        options.setdefault("po_interval", 3600.0)  # status loop off unless a test wants it
        options.setdefault("state_dir", tmp_path / "state")  # never the user's cache
        started = await stack.enter_async_context(LocalPlatform(nodes, **options))
        platforms.append(started)
        return started

    return start


@pytest.fixture
async def platform(start_platform: StartPlatform) -> LocalPlatform:
    return await start_platform()


@pytest.fixture
async def http(stack: AsyncExitStack) -> aiohttp.ClientSession:
    return await stack.enter_async_context(aiohttp.ClientSession())


@pytest.fixture
def start_api(stack: AsyncExitStack, platforms: list[LocalPlatform]) -> StartApi:
    async def start(node: LocalNode) -> StubApi:
        owner = next(p for p in platforms if p.node(node.node_id) is node)
        return await StubApi(node).start(stack, owner)

    return start


@pytest.fixture
def gateway(http: aiohttp.ClientSession, platform: LocalPlatform) -> MakeGateway:
    def make(node_id: str) -> Gateway:
        return Gateway(http, platform, platform.node(node_id))

    return make


@pytest.fixture(params=["port", "shared", "memory"])
async def caller(
    request: pytest.FixtureRequest,
    start_platform: StartPlatform,
    stack: AsyncExitStack,
    tmp_path: Path,
) -> Caller:
    """A 3-node platform (node-2 has an ``s3/rows.csv``), called over HTTP on each gateway's
    own port, over the shared port with ``Host``, or in memory."""
    via: Via = request.param
    data = tmp_path / "data"
    (data / "node-2" / "s3").mkdir(parents=True)
    (data / "node-2" / "s3" / "rows.csv").write_text("a\n1\n")
    platform = await start_platform(
        3, transport="http" if via != "memory" else "memory", data_dir=data
    )
    return await Caller.start(stack, platform, via)
