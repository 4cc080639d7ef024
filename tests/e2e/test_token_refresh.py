"""``/token_refresh`` takes only a token the node's services accept; everything else is refused
with a reason, the old token stays, and ``/healthz`` answers 200 throughout.

Requests reach the API the way the platform's PO does (``platform.call_api``): over real HTTP on
the HTTP transport, by a direct call on the in-memory one. A :class:`TokenTap` around the node's
transport shows which token each of the node's own requests carried.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from flame_async import FlameSDK
from flame_async._jwt import MAX_TOKEN_CHARS
from flame_async._transport import Request, Transport
from flame_async.local import LocalNode, LocalPlatform

from .conftest import running
from .faults import TokenTap

pytestmark = pytest.mark.slow

JSON = {"content-type": "application/json"}
SIGNED = {"alg": "HS256", "typ": "JWT"}


def seg(value: object) -> str:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt(header: object, claims: object, signature: str = "c2lnbmF0dXJl") -> str:
    return f"{seg(header)}.{seg(claims)}.{signature}"


def mint(platform: LocalPlatform, node_id: str, lifetime: float) -> str:
    """A token signed by the platform's issuer, as its PO mints one for a refresh.

    LocalPlatform has no public way to mint a token outside its PO's status loop.
    """
    return platform._run.core.issuer.mint(node_id, lifetime=lifetime)


async def call(platform: LocalPlatform, node_id: str, request: Request) -> tuple[int, Any]:
    async with platform.call_api(node_id, request) as answer:
        return answer.status, orjson.loads(await answer.read())


def refresh(platform: LocalPlatform, node_id: str, body: object) -> Any:
    request = Request("POST", "/token_refresh", headers=JSON, body=orjson.dumps(body))
    return call(platform, node_id, request)


async def healthz(platform: LocalPlatform, node_id: str) -> int:
    status, body = await call(platform, node_id, Request("GET", "/healthz"))
    assert status == 200, body
    remaining = body["token_remaining_time"]
    assert isinstance(remaining, int | float)
    return int(remaining)


@asynccontextmanager
async def tapped(
    transport: str,
) -> AsyncIterator[tuple[LocalPlatform, FlameSDK, FlameSDK, TokenTap]]:
    """Two nodes; node-1's transport is tapped."""
    taps: dict[str, TokenTap] = {}

    def wrap(node: LocalNode, inner: Transport) -> Transport:
        taps[node.node_id] = tap = TokenTap(inner)
        return tap

    async with running(2, transport=transport, wrap=wrap) as (platform, (a, b)):
        yield platform, a, b, taps[a.node_id]


async def exchange(a: FlameSDK, b: FlameSDK, category: str) -> None:
    report = await a.send_message(b.node_id, {"n": 1}, category=category, timeout=5)
    assert report.ok, report
    assert (await b.await_message(a.node_id, category=category, timeout=5)).data == {"n": 1}


def bad_tokens(analysis_id: str, node_id: str) -> list[tuple[str, object, int, str]]:
    """(name, token, status, a word the reason must contain)."""
    now = int(time.time())
    claims = {"client_id": analysis_id, "sub": node_id, "iat": now, "exp": now + 600}
    return [
        ("forged signature", jwt(SIGNED, claims), 422, "refused"),
        ("unsigned, alg none", jwt({"alg": "none"}, claims, ""), 422, "unsigned"),
        ("alg none with a signature", jwt({"alg": "none"}, claims), 422, "unsigned"),
        ("alg missing", jwt({"typ": "JWT"}, claims), 422, "unsigned"),
        ("empty signature", jwt(SIGNED, claims, ""), 422, "signature"),
        ("other analysis", jwt(SIGNED, {**claims, "client_id": "another"}), 422, "another"),
        ("no client_id", jwt(SIGNED, {"exp": now + 600}), 422, "client_id"),
        ("expired", jwt(SIGNED, {**claims, "exp": now - 10}), 422, "expired"),
        ("exp 1e300", jwt(SIGNED, {**claims, "exp": 1e300}), 422, "days ahead"),
        ("exp 2 years ahead", jwt(SIGNED, {**claims, "exp": now + 2 * 366 * 86400}), 422, "days"),
        ("exp negative", jwt(SIGNED, {**claims, "exp": -1}), 422, "expired"),
        ("exp -1e300", jwt(SIGNED, {**claims, "exp": -1e300}), 422, "expired"),
        ("exp a string", jwt(SIGNED, {**claims, "exp": str(now + 600)}), 422, "not a number"),
        ("exp true", jwt(SIGNED, {**claims, "exp": True}), 422, "not a number"),
        ("exp missing", jwt(SIGNED, {"client_id": analysis_id}), 422, "missing"),
        ("two parts", f"{seg(SIGNED)}.{seg(claims)}", 400, "3 dot-separated"),
        ("four parts", jwt(SIGNED, claims) + ".x", 400, "3 dot-separated"),
        ("not base64url", jwt(SIGNED, claims).replace(".", ".!", 1), 400, "base64url"),
        ("padded", jwt(SIGNED, claims) + "==", 400, "base64url"),
        ("header injection", jwt(SIGNED, claims) + "\r\nX-Evil: 1", 400, "base64url"),
        ("payload not JSON", f"{seg(SIGNED)}.{seg(b'{nope')}.c2ln", 400, "JSON"),
        ("payload an array", jwt(SIGNED, [claims]), 400, "JSON object"),
        ("header not JSON", f"{seg(b'alg')}.{seg(claims)}.c2ln", 400, "JSON"),
        ("too long", jwt(SIGNED, {**claims, "pad": "x" * MAX_TOKEN_CHARS}), 400, "characters"),
        ("not a string", 12345, 400, "string"),
        ("empty", "", 400, "string"),
        ("null", None, 400, "string"),
    ]


async def test_bad_tokens_are_refused_with_reasons_and_the_old_token_stays(
    transport: str,
) -> None:
    async with tapped(transport) as (platform, a, b, tap):
        old = platform.token(a.node_id)
        before = await healthz(platform, a.node_id)
        assert 3000 < before <= 3600
        cases = bad_tokens(platform.analysis_id, a.node_id)
        cases.append(("platform-signed but expired", mint(platform, a.node_id, -5), 422, "expired"))
        cases.append(
            ("platform-signed, 400 days", mint(platform, a.node_id, 400 * 86400), 422, "days")
        )
        tap.seen.clear()
        for name, token, expected, word in cases:
            status, body = await refresh(platform, a.node_id, {"token": token})
            assert status == expected, (name, status, body)
            assert word in body["detail"], (name, body)
            assert "keeps its current token" in body["detail"] or status == 400, (name, body)
            assert abs(await healthz(platform, a.node_id) - before) <= 60, name

        # only a token that passed every check of its own was shown to the broker
        assert tap.tokens_on("/participants/self") == [cases[0][1]]
        await exchange(a, b, "after bad tokens")
        sent = [t for m, p, t in tap.seen if m == "POST" and p.endswith("/messages")]
        assert sent and set(sent) == {old}
        assert a.rejected_requests["token refused"] == 15 + 2
        assert a.rejected_requests["invalid token"] == 12


async def test_a_platform_token_is_taken_and_used_for_later_calls(transport: str) -> None:
    async with tapped(transport) as (platform, a, b, tap):
        fresh = mint(platform, a.node_id, 1800)
        assert fresh != platform.token(a.node_id)
        status, body = await refresh(platform, a.node_id, {"token": fresh, "extra": "ignored"})
        assert (status, body) == (200, {"message": "Token refreshed successfully"})
        assert 1700 < await healthz(platform, a.node_id) <= 1800
        assert tap.tokens_on("/participants/self")[-1] == fresh  # proven before it was taken

        tap.seen.clear()
        await exchange(a, b, "after refresh")
        sent = [t for m, p, t in tap.seen if m == "POST" and p.endswith("/messages")]
        assert sent and set(sent) == {fresh}


async def test_an_unreachable_gateway_gives_503_and_keeps_the_old_token(transport: str) -> None:
    async with tapped(transport) as (platform, a, b, tap):
        old = platform.token(a.node_id)
        fresh = mint(platform, a.node_id, 1800)
        tap.check_down = True
        status, body = await refresh(platform, a.node_id, {"token": fresh})
        assert status == 503, body
        assert "could not be checked" in body["detail"] and "again" in body["detail"]
        tap.check_down = False
        tap.check_status = 500  # the broker answers, but not whether the token is good
        status, body = await refresh(platform, a.node_id, {"token": fresh})
        assert status == 503, body
        assert "HTTP 500" in body["detail"]
        tap.check_status = None

        assert 3000 < await healthz(platform, a.node_id) <= 3600  # still the old one
        tap.seen.clear()
        await exchange(a, b, "while unchecked")
        assert {t for m, p, t in tap.seen if p.endswith("/messages")} == {old}

        # the PO sends it again on its next round: now it is taken
        status, _ = await refresh(platform, a.node_id, {"token": fresh})
        assert status == 200
        assert 1700 < await healthz(platform, a.node_id) <= 1800
