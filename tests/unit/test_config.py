"""FlameConfig.from_env: required variables, overrides, secrecy (also where the tokens are used)."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self

import orjson
import pytest
from anyio.abc import TaskStatus
from pydantic import SecretStr, ValidationError

from flame_async import (
    ConfigError,
    DataAccessError,
    DataSource,
    DataSourceKind,
    FhirClient,
    FlameConfig,
    RetryPolicy,
)
from flame_async._jwt import TokenStore, decode_claims, remaining_seconds
from flame_async._transport import GatewayClient, Handler, Request, Response
from flame_async.data import DataService


def jwt(claims: dict[str, object]) -> str:
    def seg(obj: object) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    return f"{seg({'alg': 'none'})}.{seg(claims)}.sig"


def env(**extra: str) -> dict[str, str]:
    base = {
        "ANALYSIS_ID": "a1",
        "PROJECT_ID": "p1",
        "DEPLOYMENT_NAME": "analysis-a1-1",
        "KEYCLOAK_TOKEN": jwt({"exp": 2_000_000_000, "client_id": "a1"}),
        "DATA_SOURCE_TOKEN": "kong-key",
    }
    base.update(extra)
    return base


def test_defaults_match_the_platform() -> None:
    config = FlameConfig.from_env(env())
    assert config.base_url == "http://nginx-analysis-a1-1"
    assert config.webhook_url == "http://nginx-analysis-a1-1/analysis/webhook"
    assert (config.api_host, config.api_port) == ("0.0.0.0", 8000)
    assert config.partner_status_grace == 100.0


def test_overrides_are_applied() -> None:
    config = FlameConfig.from_env(
        env(
            FLAME_BASE_URL="http://127.0.0.1:9000/",
            FLAME_API_PORT="0",
            FLAME_PARTNER_STATUS_GRACE="2",
        )
    )
    assert config.base_url == "http://127.0.0.1:9000"
    assert config.webhook_url == "http://127.0.0.1:9000/analysis/webhook"
    assert config.api_port == 0
    assert config.partner_status_grace == 2.0


def test_every_problem_is_reported_at_once() -> None:
    bad = env(KEYCLOAK_TOKEN="not-a-jwt", FLAME_API_PORT="eighty", FLAME_BASE_URL="nginx")
    del bad["PROJECT_ID"]
    with pytest.raises(ConfigError) as info:
        FlameConfig.from_env(bad)
    text = str(info.value)
    assert len(info.value.problems) == 4
    for name in ("PROJECT_ID", "KEYCLOAK_TOKEN", "FLAME_API_PORT", "FLAME_BASE_URL"):
        assert name in text
    assert isinstance(info.value, ValueError)


def test_missing_everything_names_all_five() -> None:
    with pytest.raises(ConfigError) as info:
        FlameConfig.from_env({})
    assert len(info.value.problems) == 5


def test_tokens_are_redacted() -> None:
    config = FlameConfig.from_env(env())
    token = config.keycloak_token.get_secret_value()
    assert token not in repr(config)
    assert "kong-key" not in repr(config)
    assert token not in repr(TokenStore(config.keycloak_token))


def test_round_trip_through_env() -> None:
    config = FlameConfig.from_env(env(FLAME_API_PORT="1234"))
    assert FlameConfig.from_env(config.to_env()) == config


def test_jwt_payload_is_decoded_as_base64url() -> None:
    # '?' and '>' in the payload give '-' and '_' in base64url, which plain base64 garbles
    token = jwt({"exp": 2_000_000_000, "note": "??>>"})
    assert "-" in token.split(".")[1] or "_" in token.split(".")[1]
    assert decode_claims(token)["note"] == "??>>"
    assert remaining_seconds(token, now=1_999_999_990) == 10
    assert remaining_seconds("garbage") == 0


def test_retry_delays_are_bounded_and_instant_when_asked() -> None:
    policy = RetryPolicy(attempts=5, initial=1, multiplier=2, maximum=3, jitter=0)
    assert list(policy.delays()) == [1, 2, 3, 3]
    assert list(RetryPolicy(attempts=3, instant=True).delays()) == [0, 0]


class Refusing:
    """A transport whose data proxy refuses every key (401), remembering the keys it saw."""

    def __init__(self) -> None:
        self.apikeys: list[str | None] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Response]:
        self.apikeys.append(request.headers.get("apikey"))
        yield Response(401, b'{"detail": "Invalid authentication credentials"}')

    async def serve(self, handler: Handler, *, task_status: TaskStatus[int | None]) -> None:
        raise NotImplementedError


async def test_data_source_token_never_shows_in_reprs_logs_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "kong-s3cr3t-4711"
    config = FlameConfig.from_env(env(DATA_SOURCE_TOKEN=secret))
    assert isinstance(config.data_source_token, SecretStr)
    assert config.data_source_token.get_secret_value() == secret
    shown = [repr(config), str(config), config.model_dump_json(), repr(config.model_dump())]
    with pytest.raises(ConfigError) as bad_env:
        FlameConfig.from_env(env(DATA_SOURCE_TOKEN=secret, FLAME_API_PORT="x"))
    with pytest.raises(ValidationError) as bad_override:
        FlameConfig.from_env(env(DATA_SOURCE_TOKEN=secret), api_port=-1)
    shown += [str(bad_env.value), str(bad_override.value)]

    caplog.set_level(logging.DEBUG)
    transport = Refusing()
    gateway = GatewayClient(
        transport,
        TokenStore(config.keycloak_token),
        retry=RetryPolicy(instant=True),
        timeout=1,
    )
    data = DataService(gateway, project_id="p1", apikey=config.data_source_token)
    source = DataSource(id="s1", name="s1-fhir", kind=DataSourceKind.FHIR)
    client = FhirClient(gateway, source, config.data_source_token)
    with pytest.raises(DataAccessError, match="is DATA_SOURCE_TOKEN right") as refused:
        await client.get("Patient")
    assert transport.apikeys == [secret]  # sent where it belongs
    shown += [repr(data), repr(client), str(refused.value), repr(refused.value), caplog.text]
    for text in shown:
        assert secret not in text


def test_the_api_body_limit_comes_from_the_environment() -> None:
    config = FlameConfig.from_env(env(FLAME_MAX_API_BODY_BYTES="1048576"))
    assert config.max_api_body_bytes == 1 << 20
    assert FlameConfig.from_env(config.to_env()) == config
    with pytest.raises(ConfigError, match="FLAME_MAX_API_BODY_BYTES='lots'"):
        FlameConfig.from_env(env(FLAME_MAX_API_BODY_BYTES="lots"))
