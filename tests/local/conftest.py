"""Fixtures for the local platform tests (helpers in :mod:`.helpers`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flame_async.local import LocalNode, LocalPlatform

from .helpers import Gateway, StubApi


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def start_platform(
    stack: AsyncExitStack, tmp_path: Path
) -> Callable[..., Awaitable[LocalPlatform]]:
    async def start(nodes: Any = 3, **options: Any) -> LocalPlatform:
        options.setdefault("webhook_retry_initial", 0.001)
        options.setdefault("po_interval", 3600.0)  # status loop off unless a test wants it
        options.setdefault("state_dir", tmp_path / "state")  # never the user's cache
        return await stack.enter_async_context(LocalPlatform(nodes, **options))

    return start


@pytest.fixture
async def platform(start_platform: Callable[..., Awaitable[LocalPlatform]]) -> LocalPlatform:
    return await start_platform()


@pytest.fixture
async def http(stack: AsyncExitStack) -> aiohttp.ClientSession:
    return await stack.enter_async_context(aiohttp.ClientSession())


@pytest.fixture
def start_api(stack: AsyncExitStack) -> Callable[[LocalNode], Awaitable[StubApi]]:
    async def start(node: LocalNode) -> StubApi:
        return await StubApi(node).start(stack)

    return start


@pytest.fixture
def gateway(http: aiohttp.ClientSession, platform: LocalPlatform) -> Callable[[str], Gateway]:
    def make(node_id: str) -> Gateway:
        return Gateway(http, platform, platform.node(node_id))

    return make
