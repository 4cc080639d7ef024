"""Re-authentication against a real authup whose tokens live 5 s (refresh tokens 20 s).

authup still answers ``expires_in: 3600``; an expired token gets 500 from core; refresh tokens
are single-use. Skipped, with the reason printed, without such a Hub; slow (about 45 s).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import RealHubSettings

# marked for the session fixture, which prepares only the Hub instances selected tests need
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.real_hub("short")]


async def test_requests_never_fail_across_token_lifetimes_and_idle_pauses(
    short_token_hub_settings: RealHubSettings,
) -> None:
    async with short_token_hub_settings.client() as hub:
        await hub.core.nodes.find(limit=1)
        # 100 concurrent requests while the token is inside its refresh margin: one refresh
        # (two would make one fail: refresh tokens are single-use)
        await asyncio.sleep(3.5)
        await asyncio.gather(*(hub.core.nodes.find(limit=1) for _ in range(100)))
        assert hub.tokens.grants == {"password": 1, "refresh_token": 1}
        # a steady stream of requests over three lifetimes: refreshed, never failing
        started = time.monotonic()
        while time.monotonic() - started < 15:
            await hub.core.nodes.find(limit=1)
            await asyncio.sleep(0.2)
        refreshes = hub.tokens.grants["refresh_token"]
        assert 3 <= refreshes <= 8, hub.tokens.grants  # one per 3 s (refreshed 2 s early)
        assert hub.tokens.grants["password"] == 1
        # idle beyond the refresh token's 20 s: one password login, no failure
        await asyncio.sleep(21)
        await hub.core.nodes.find(limit=1)
        assert hub.tokens.grants == {"password": 2, "refresh_token": refreshes}
