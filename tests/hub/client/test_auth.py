"""Tokens: lifetime from the JWT, single-flight refresh, fallback to the password, re-auth."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import aiohttp
import pytest

from flame_async.errors import AuthenticationError, HubRequestInvalid
from flame_async.hub import ClientAuth, PasswordAuth, RobotAuth, StaticToken
from flame_async.hub._auth import TokenManager, lifetime_of

from .conftest import Fault, MiniHub, client_for, make_jwt


def test_lifetime_is_the_smaller_of_expires_in_and_the_jwt() -> None:
    assert lifetime_of(make_jwt(5), 3600) == 5  # authup says 3600 whatever it means
    assert lifetime_of(make_jwt(7200), 60) == 60
    assert lifetime_of("not-a-jwt", 30) == 30
    assert lifetime_of("not-a-jwt", None) == 60  # refreshed early rather than late


def test_secrets_never_show_in_repr() -> None:
    for creds in (
        PasswordAuth("admin", "hunter2"),
        RobotAuth("rid", "hunter2"),
        ClientAuth("cid", "hunter2"),
        StaticToken("hunter2"),
    ):
        assert "hunter2" not in repr(creds)
        assert "hunter2" not in repr(TokenManager(creds, _never, auth_url="http://a/token"))


async def _never(grant: dict[str, str]) -> object:
    raise AssertionError("no token request expected")


async def test_grants_send_the_documented_bodies() -> None:
    sent: list[dict[str, str]] = []

    async def post(grant: dict[str, str]) -> object:
        sent.append(grant)
        return {"access_token": make_jwt(60), "expires_in": 3600}

    for creds in (RobotAuth("r", "s"), ClientAuth("c", "s")):
        await TokenManager(creds, post, auth_url="x").token()
    assert sent == [
        {"grant_type": "robot_credentials", "id": "r", "secret": "s"},
        {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"},
    ]


async def test_a_hundred_concurrent_requests_cause_one_token_request(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(1)
    async with client_for(mini_hub) as hub:
        node_id = mini_hub.nodes[0]["id"]
        await asyncio.gather(*(hub.core.nodes.get(node_id) for _ in range(100)))
        assert mini_hub.grants == ["password"]


async def test_an_expiring_token_is_refreshed_once_for_many_waiters(mini_hub: MiniHub) -> None:
    now = [1000.0]
    async with aiohttp.ClientSession() as http:

        async def post(grant: dict[str, str]) -> object:
            async with http.post(f"{mini_hub.url}/token", json=grant) as response:
                assert response.status == 200
                return await response.json()

        manager = TokenManager(
            PasswordAuth("admin", "start123"), post, auth_url="x", clock=lambda: now[0]
        )
        first = await manager.token()
        now[0] += 3600 - 100  # within 10 % of the lifetime: a refresh is due
        tokens = await asyncio.gather(*(manager.token() for _ in range(100)))
    assert mini_hub.grants == ["password", "refresh_token"]
    assert manager.grants == {"password": 1, "refresh_token": 1}
    assert len(set(tokens)) == 1
    assert tokens[0] != first


async def test_jwt_lifetime_beats_expires_in_and_margin_is_at_least_two_seconds() -> None:
    now = [0.0]
    tokens: list[str] = []

    async def post(grant: dict[str, str]) -> object:
        tokens.append(make_jwt(5))
        return {"access_token": tokens[-1], "refresh_token": "r", "expires_in": 3600}

    manager = TokenManager(PasswordAuth("a", "b"), post, auth_url="x", clock=lambda: now[0])
    first = await manager.token()
    now[0] = 2.9  # 2.1 s left > max(2, 0.5)
    assert await manager.token() == first
    now[0] = 3.1  # 1.9 s left: refresh
    assert await manager.token() != first
    assert len(tokens) == 2


async def test_tokens_shorter_than_the_margin_do_not_thrash() -> None:
    calls = 0

    async def post(grant: dict[str, str]) -> object:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return {"access_token": make_jwt(1), "expires_in": 3600}

    manager = TokenManager(RobotAuth("r", "s"), post, auth_url="x", clock=lambda: 0.0)
    await asyncio.gather(*(manager.token() for _ in range(50)))
    assert calls == 1


async def test_a_refused_refresh_falls_back_to_the_password() -> None:
    grants: list[str] = []
    now = [0.0]

    async def post(grant: dict[str, str]) -> object:
        grants.append(grant["grant_type"])
        if grant["grant_type"] == "refresh_token":
            raise HubRequestInvalid(
                service="auth", method="POST", url="x", status=400, code="inactive_token"
            )
        return {"access_token": make_jwt(60), "refresh_token": "r", "expires_in": 3600}

    manager = TokenManager(PasswordAuth("a", "b"), post, auth_url="x", clock=lambda: now[0])
    await manager.token()
    now[0] = 59
    await manager.token()
    assert grants == ["password", "refresh_token", "password"]


async def test_which_error_answers_count_as_token_problems() -> None:
    now = [0.0]

    async def post(grant: dict[str, str]) -> object:
        return {"access_token": make_jwt(100), "expires_in": 3600}

    manager = TokenManager(RobotAuth("r", "s"), post, auth_url="x", clock=lambda: now[0])
    token = await manager.token()
    assert manager.suspect(token, status=400, code="BAD_REQUEST")  # never seen working
    manager.verified(token)
    assert not manager.suspect(token, status=400, code="BAD_REQUEST")
    assert not manager.suspect(token, status=500, code="INTERNAL_SERVER_ERROR")
    assert manager.suspect(token, status=401, code="")
    assert manager.suspect(token, status=400, code="invalid_token")
    assert not manager.suspect(token, status=404, code="")
    now[0] = 95  # within the margin of expiry: a 500 is likely the expired token
    assert manager.suspect(token, status=500, code="INTERNAL_SERVER_ERROR")
    static = TokenManager(StaticToken("t"), post, auth_url="x")
    assert not static.suspect("t", status=401, code="")


async def test_a_401_invalidates_the_token_and_retries_once(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(1)
    unauthorized = Fault(401, b'{"statusCode":401,"code":"UNAUTHORIZED","message":""}')
    async with client_for(mini_hub) as hub:
        await hub.core.nodes.get(mini_hub.nodes[0]["id"])
        mini_hub.fail_next("GET", "/nodes", unauthorized)
        page = await hub.core.nodes.find()
        assert len(page.items) == 1
        assert mini_hub.grants == ["password", "refresh_token"]
        mini_hub.fail_next("GET", "/nodes", unauthorized, unauthorized)
        with pytest.raises(AuthenticationError):  # only once
            await hub.core.nodes.find()


async def test_a_server_expired_token_gets_500_and_is_replaced(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(1)
    async with client_for(mini_hub) as hub:
        await hub.core.nodes.find()
        mini_hub.tokens.clear()
        mini_hub.fail_next(
            "GET",
            "/nodes",
            Fault(500, b'{"statusCode":500,"code":"token_expired","message":"jwt expired"}'),
        )
        await hub.core.nodes.find()
        assert len(mini_hub.grants) == 2


async def test_a_genuine_400_with_a_working_token_is_not_retried(mini_hub: MiniHub) -> None:
    body = b'{"statusCode":400,"code":"BAD_REQUEST","message":"no","issues":[{"path":["x"]}]}'
    async with client_for(mini_hub) as hub:
        await hub.core.nodes.find()
        mini_hub.fail_next("GET", "/nodes", Fault(400, body))
        with pytest.raises(HubRequestInvalid) as info:
            await hub.core.nodes.find()
        assert info.value.issues == ({"path": ["x"]},)
        assert info.value.message == "no"
        assert mini_hub.grants == ["password"]


async def test_wrong_password_names_the_auth_url_and_hides_the_secret(
    mini_hub: MiniHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flame_async")
    async with client_for(mini_hub, PasswordAuth("admin", "wrong-secret-xyz")) as hub:
        with pytest.raises(AuthenticationError) as info:
            await hub.core.nodes.find()
    assert "wrong-secret-xyz" not in caplog.text
    text = str(info.value)
    assert f"{mini_hub.url}/token" in text
    assert info.value.code == "invalid_credentials"
    assert "wrong-secret-xyz" not in text
    assert "wrong-secret-xyz" not in repr(info.value.__cause__)


async def test_a_static_token_is_never_refreshed(mini_hub: MiniHub) -> None:
    async with client_for(mini_hub, StaticToken("not-known")) as hub:
        with pytest.raises(HubRequestInvalid):
            await hub.core.nodes.find()
    assert mini_hub.grants == []


@pytest.mark.parametrize("module", ["flame_async.hub", "flame_async"])
def test_importing_the_hub_client_touches_no_warning_filter_and_no_heavy_module(
    module: str,
) -> None:
    # a fresh interpreter: the baseline is Python's own filters; aiohttp.web (which adds its
    # NotAppKeyWarning filter on import) must not be imported by a program that only calls out
    code = (
        "import sys, warnings; before = list(warnings.filters); "
        f"import {module}; "
        "assert warnings.filters == before, [f for f in warnings.filters if f not in before]; "
        "assert 'aiohttp.web' not in sys.modules, 'aiohttp.web was imported'; "
        "heavy = {'numpy', 'pandas', 'torch', 'rich', 'pyarrow'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_an_expired_refresh_token_is_not_tried() -> None:
    grants: list[str] = []
    now = [0.0]

    async def post(grant: dict[str, str]) -> object:
        grants.append(grant["grant_type"])
        dead = make_jwt(20, now=0)  # expired in 1970
        return {"access_token": make_jwt(60), "refresh_token": dead, "expires_in": 3600}

    manager = TokenManager(PasswordAuth("a", "b"), post, auth_url="x", clock=lambda: now[0])
    await manager.token()
    now[0] = 59
    await manager.token()
    assert grants == ["password", "password"]
