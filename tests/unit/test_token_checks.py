"""Judging a refreshed token without the signing key, and ``/healthz`` whatever token is held."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import orjson
import pytest
from anyio.abc import TaskStatus
from pydantic import SecretStr

from flame_async import RetryPolicy, ServiceUnavailable
from flame_async._jwt import (
    MAX_TOKEN_LIFETIME,
    MalformedToken,
    TokenRefused,
    TokenStore,
    check_token,
    remaining_seconds,
)
from flame_async._protocol import Rejection
from flame_async._transport import GatewayClient, Handler, Request, Response, Transport
from flame_async.api import NodeApi
from flame_async.status import StatusService

NOW = 1_800_000_000


def jwt(claims: object, header: object = None, signature: str = "c2ln") -> str:
    def seg(value: object) -> str:  # json, not orjson: it writes ints beyond 64 bits
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{seg(header or {'alg': 'RS256'})}.{seg(claims)}.{signature}"


def test_a_signed_token_of_this_analysis_with_a_sane_exp_passes() -> None:
    token = jwt({"client_id": "a1", "exp": NOW + 300})
    assert check_token(token, analysis_id="a1", now=NOW) == NOW + 300
    at_the_limit = jwt({"client_id": "a1", "exp": NOW + MAX_TOKEN_LIFETIME})
    assert check_token(at_the_limit, analysis_id="a1", now=NOW) == NOW + MAX_TOKEN_LIFETIME


@pytest.mark.parametrize(
    ("token", "match"),
    [
        (jwt({"client_id": "a1", "exp": NOW + 300}, {"alg": "none"}), "unsigned"),
        (jwt({"client_id": "a1", "exp": NOW + 300}, {"alg": "NONE"}), "unsigned"),
        (jwt({"client_id": "a1", "exp": NOW + 300}, {"alg": 256}), "unsigned"),
        (jwt({"client_id": "a1", "exp": NOW + 300}, signature=""), "empty signature"),
        (jwt({"client_id": "a2", "exp": NOW + 300}), "is for 'a2'.*analysis 'a1'"),
        (jwt({"client_id": ["a1"], "exp": NOW + 300}), "is for"),
        (jwt({"exp": NOW + 300}), "no client_id"),
        (jwt({"client_id": "a1", "exp": NOW}), "expired 0 s ago"),
        (jwt({"client_id": "a1", "exp": NOW - 90.5}), "expired 91 s ago"),
        (jwt({"client_id": "a1", "exp": -1e300}), "expired long ago"),
        (jwt({"client_id": "a1", "exp": 1e300}), "366 days ahead"),
        (jwt({"client_id": "a1", "exp": NOW + MAX_TOKEN_LIFETIME + 1}), "366 days ahead"),
        (jwt({"client_id": "a1", "exp": 10**30}), "366 days ahead"),
        (jwt({"client_id": "a1", "exp": "1800000300"}), "'1800000300', not a number"),
        (jwt({"client_id": "a1", "exp": False}), "not a number"),
        (jwt({"client_id": "a1", "exp": None}), "missing"),
        (jwt({"client_id": "a1", "exp": {"n": 1}}), "not a number"),
    ],
)
def test_tokens_the_node_does_not_take_are_refused_with_the_reason(token: str, match: str) -> None:
    with pytest.raises(TokenRefused, match=match) as info:
        check_token(token, analysis_id="a1", now=NOW)
    assert not isinstance(info.value, MalformedToken)


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("abc", "3 dot-separated parts"),
        ("a.b.c.d", "4"),
        ("a b.c.d", "header holds characters"),
        ("YQ.b=.c", "payload holds characters"),
        ("e30.e30.c2ln\n", "signature holds characters"),
        ("e30.e30.c2l\u00e9", "signature holds characters"),
        (".e30.c2ln", "header is not base64url-encoded JSON"),
        ("e30.A.c2ln", "payload is not base64url-encoded JSON"),
        ("e30.WzFd.c2ln", "payload must be a JSON object, it is a list"),
        ("x" * 20_000, "20000 characters"),
    ],
)
def test_what_is_not_a_jwt_is_malformed(token: str, match: str) -> None:
    with pytest.raises(MalformedToken, match=match):
        check_token(token, analysis_id="a1", now=NOW)


@pytest.mark.parametrize(
    ("exp", "remaining"),
    [
        (NOW + 42.9, 42),
        (NOW - 5, 0),
        (1e300, MAX_TOKEN_LIFETIME),
        (-1e300, 0),
        (10**30, MAX_TOKEN_LIFETIME),
        ("soon", 0),
        (True, 0),
        (None, 0),
    ],
)
def test_remaining_seconds_are_clamped_and_never_raise(exp: object, remaining: int) -> None:
    assert remaining_seconds(jwt({"exp": exp}), now=NOW) == remaining


class _Refused:
    def __init__(self, request: Request) -> None:
        self.request = request

    async def __aenter__(self) -> Response:
        raise ServiceUnavailable("no gateway here", service="x", method="GET", url="/")

    async def __aexit__(self, *exc_info: object) -> None:
        pass


class NoGateway:
    """A transport whose gateway is never reachable (nothing here should need it)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def open(self, request: Request) -> AbstractAsyncContextManager[Response]:
        return _Refused(request)

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        raise NotImplementedError


async def _no_webhook(body: bytes) -> Rejection | None:
    return None


class _Silent:
    async def __aenter__(self) -> Response:
        await asyncio.Event().wait()  # never set: the gateway takes the call, never answers
        raise AssertionError("unreachable")

    async def __aexit__(self, *exc_info: object) -> None:
        pass


class SilentGateway(NoGateway):
    """A transport whose gateway takes every call and never answers."""

    def open(self, request: Request) -> AbstractAsyncContextManager[Response]:
        return _Silent()


def api_holding(token: str, transport: Transport | None = None, **options: Any) -> NodeApi:
    gateway = GatewayClient(
        transport or NoGateway(),
        TokenStore(SecretStr(token)),
        retry=RetryPolicy(instant=True),
        timeout=60,
    )
    return NodeApi(
        gateway=gateway,
        analysis_id="a1",
        status=StatusService(),
        on_webhook=_no_webhook,
        on_partner_status=lambda statuses: None,
        max_body=1024,
        **options,
    )


async def answer(api: NodeApi, request: Request) -> tuple[int, Any]:
    response = await api.handle(request)
    return response.status, orjson.loads(await response.read())


@pytest.mark.parametrize(
    "token",
    [
        jwt({"exp": 1e300}),
        jwt({"exp": -1e300}),
        jwt({"exp": 10**30}),
        jwt({"exp": "soon"}),
        jwt({"exp": [1]}),
        jwt({}),
        "not-a-jwt",
    ],
)
async def test_healthz_answers_200_whatever_token_is_held(token: str) -> None:
    status, body = await answer(api_holding(token), Request("GET", "/healthz"))
    assert status == 200
    assert 0 <= body["token_remaining_time"] <= MAX_TOKEN_LIFETIME


async def test_a_refresh_the_gateway_cannot_check_is_503_and_the_token_stays() -> None:
    now = time.time()
    api = api_holding(jwt({"client_id": "a1", "exp": now + 3000}))
    new = jwt({"client_id": "a1", "exp": now + 600})
    request = Request(
        "POST",
        "/token_refresh",
        headers={"content-type": "application/json"},
        body=orjson.dumps({"token": new}),
    )
    status, body = await answer(api, request)
    assert status == 503
    assert "could not be checked" in body["detail"] and "no gateway here" in body["detail"]
    assert (await answer(api, Request("GET", "/healthz")))[1]["token_remaining_time"] > 2900


async def test_a_token_check_without_answer_is_bounded_and_gives_503() -> None:
    now = time.time()
    api = api_holding(
        jwt({"client_id": "a1", "exp": now + 3000}), SilentGateway(), token_check_timeout=0.05
    )
    new = jwt({"client_id": "a1", "exp": now + 600})
    request = Request(
        "POST",
        "/token_refresh",
        headers={"content-type": "application/json"},
        body=orjson.dumps({"token": new}),
    )
    status, body = await answer(api, request)
    assert status == 503
    assert "no answer within 0.05 s" in body["detail"]
    assert (await answer(api, Request("GET", "/healthz")))[1]["token_remaining_time"] > 2900
