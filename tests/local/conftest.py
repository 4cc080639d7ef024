"""Fixtures for the local platform tests (helpers in :mod:`.helpers`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flame_async.local import LocalNode, LocalPlatform

from .helpers import Gateway, MakeGateway, StartApi, StartPlatform, StubApi


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
