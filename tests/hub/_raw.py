"""A raw aiohttp caller for Hub tests: no client library, just the wire (status, JSON, bytes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from ._backends import HubConnection

__all__ = ["Answer", "RawHub", "camel", "key"]


def camel(name: str) -> str:
    """``created_at`` -> ``createdAt``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def key(hub: HubConnection, name: str) -> str:
    """A snake_case field name as ``hub`` spells it on the wire."""
    return camel(name) if hub.wire_case == "camel" else name


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class RawHub:
    """Calls one Hub over ``session``; logs in with the admin password on first use."""

    def __init__(self, hub: HubConnection, session: aiohttp.ClientSession) -> None:
        self.hub = hub
        self.session = session
        self.token: str | None = None
        self.refresh_token: str | None = None

    def url(self, service: str, path: str) -> str:
        base = {
            "auth": self.hub.auth_url,
            "core": self.hub.core_url,
            "storage": self.hub.storage_url,
        }[service]
        return base.rstrip("/") + "/" + path.lstrip("/")

    async def grant(self, body: Mapping[str, Any]) -> Answer:
        async with self.session.post(self.url("auth", "token"), json=dict(body)) as response:
            return Answer(response.status, await response.read(), dict(response.headers))

    async def login(self) -> str:
        answer = await self.grant(
            {"grant_type": "password", "username": self.hub.user, "password": self.hub.password}
        )
        assert answer.status == 200, answer.body
        self.token = answer.json["access_token"]
        self.refresh_token = answer.json["refresh_token"]
        return str(self.token)

    async def call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        json: Any = None,
        params: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
        data: Any = None,
        token: str | None = None,
        authenticate: bool = True,
    ) -> Answer:
        headers = {}
        if authenticate:
            if token is None:
                token = self.token or await self.login()
            headers["authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.url(service, path), json=json, params=params, data=data, headers=headers
        ) as response:
            return Answer(response.status, await response.read(), dict(response.headers))

    async def create(self, service: str, resource: str, body: Mapping[str, Any]) -> dict[str, Any]:
        wire = {key(self.hub, k): v for k, v in body.items()}
        answer = await self.call("POST", service, resource, json=wire)
        assert answer.status == 201, (resource, answer.status, answer.body)
        return dict(answer.json)

    async def master_realm_id(self) -> str:
        answer = await self.call("GET", "auth", "realms", params={"filter[name]": "master"})
        return str(answer.json["data"][0]["id"])
