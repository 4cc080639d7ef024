"""A tiny in-test Hub (one aiohttp app on 127.0.0.1, port 0) for the client's unit tests.

It is not the Hub emulator (that lives in tests/hub/emulator): just enough of the token
endpoint, a node collection with rapiq paging and a storage bucket to pin the client's
behaviour, with switches for faults (queued answers, dropped connections) and token lifetimes.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from flame_async.config import RetryPolicy
from flame_async.hub import HubClient, PasswordAuth
from flame_async.hub._auth import Credentials

INSTANT = RetryPolicy(attempts=4, initial=0.0, jitter=1.0, deadline=30.0, instant=True)


def make_jwt(lifetime: float, *, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    payload = {"iat": issued, "exp": issued + lifetime, "jti": uuid.uuid4().hex}
    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg(payload)}.c2ln"


@dataclass
class Fault:
    """One queued answer: a status with a body, or a dropped connection."""

    status: int = 503
    body: bytes = b'{"statusCode":503,"code":"SERVICE_UNAVAILABLE","message":"busy"}'
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


@dataclass
class MiniHub:
    """State and switches of the in-test Hub."""

    lifetime: float = 3600.0
    expires_in: int = 3600
    camel: bool = False
    password: str = "start123"
    nodes: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (wall)
    refresh_tokens: set[str] = field(default_factory=set)
    grants: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: dict[tuple[str, str], list[Fault]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)
    analysis_buckets: list[dict[str, Any]] = field(default_factory=list)
    polls_until_executed: int = 3
    tar: bytes = b""
    url: str = ""
    page_hook: Callable[[int], Any] | None = None

    def key(self, name: str) -> str:
        if not self.camel:
            return name
        head, *rest = name.split("_")
        return head + "".join(p.title() for p in rest)

    def add_nodes(self, count: int, *, prefix: str = "node") -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=len(self.nodes))
        for i in range(count):
            n = len(self.nodes)
            created = (start + timedelta(seconds=i)).isoformat()
            self.nodes.append(
                {
                    "id": str(uuid.UUID(int=n + 1)),
                    "name": f"{prefix}-{n:04d}",
                    "type": "default",
                    self.key("created_at"): created,
                    self.key("updated_at"): created,
                    self.key("realm_id"): str(uuid.UUID(int=999)),
                }
            )

    def fail_next(self, method: str, path: str, *faults: Fault) -> None:
        self.faults.setdefault((method, path), []).extend(faults)


def _error(status: int, code: str, message: str = "") -> web.Response:
    body = {"statusCode": status, "code": code, "message": message}
    return web.json_response(body, status=status)


def build_app(hub: MiniHub) -> web.Application:
    @web.middleware
    async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        hub.requests.append((request.method, request.path))
        queued = hub.faults.get((request.method, request.path))
        if queued:
            fault = queued.pop(0)
            if fault.drop:
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError("dropped on purpose")
            return web.Response(status=fault.status, body=fault.body, headers=fault.headers)
        if request.path != "/token":
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return _error(401, "UNAUTHORIZED", "no token")
            token = auth.removeprefix("Bearer ")
            expiry = hub.tokens.get(token)
            if expiry is None:
                return _error(400, "BAD_REQUEST")
            if expiry <= time.time():
                return _error(500, "INTERNAL_SERVER_ERROR", "jwt expired")
        return await handler(request)

    def issue() -> dict[str, Any]:
        access = make_jwt(hub.lifetime)
        hub.tokens[access] = time.time() + hub.lifetime
        refresh = uuid.uuid4().hex
        hub.refresh_tokens.add(refresh)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": hub.expires_in,
            "token_type": "Bearer",
        }

    async def token(request: web.Request) -> web.Response:
        body = await request.json()
        grant = body.get("grant_type")
        hub.grants.append(grant)
        if grant == "password":
            if body.get("username") != "admin" or body.get("password") != hub.password:
                return _error(400, "invalid_credentials", "The credentials are not valid.")
            return web.json_response(issue())
        if grant == "refresh_token":
            rt = body.get("refresh_token")
            if rt not in hub.refresh_tokens:
                return _error(400, "inactive_token", "The token is not active.")
            hub.refresh_tokens.discard(rt)
            return web.json_response(issue())
        if grant in ("robot_credentials", "client_credentials"):
            return web.json_response({"access_token": issue()["access_token"], "expires_in": 3600})
        return _error(400, "unsupported_grant_type")

    async def list_nodes(request: web.Request) -> web.Response:
        q = request.query
        limit = min(int(q.get("page[limit]", "50")), 50)
        offset = int(q.get("page[offset]", "0"))
        items = list(hub.nodes)
        name = q.get(f"filter[{hub.key('name')}]")
        if name is not None:
            if name.startswith("~"):
                items = [n for n in items if n["name"].startswith(name[1:])]
            else:
                items = [n for n in items if n["name"] == name]
        if hub.page_hook is not None:
            await hub.page_hook(offset)
        page = items[offset : offset + limit]
        return web.json_response(
            {"data": page, "meta": {"total": len(items), "limit": limit, "offset": offset}}
        )

    def find(node_id: str) -> dict[str, Any] | None:
        return next((n for n in hub.nodes if n["id"] == node_id), None)

    async def get_node(request: web.Request) -> web.Response:
        node = find(request.match_info["id"])
        if node is None:
            return _error(404, "NOT_FOUND", "The node was not found.")
        return web.json_response(node)

    async def create_node(request: web.Request) -> web.Response:
        body = await request.json()
        if "name" not in body:
            issues = [{"path": ["name"], "message": "required"}]
            return web.json_response(
                {"statusCode": 400, "code": "BAD_REQUEST", "message": "invalid", "issues": issues},
                status=400,
            )
        if any(n["name"] == body["name"] for n in hub.nodes):
            return _error(409, "CONFLICT", "A node with that name exists.")
        hub.add_nodes(1)
        hub.nodes[-1].update(body)
        return web.json_response(hub.nodes[-1], status=201)

    async def update_node(request: web.Request) -> web.Response:
        node = find(request.match_info["id"])
        if node is None:
            return _error(404, "NOT_FOUND")
        node.update(await request.json())
        return web.json_response(node, status=202)

    async def delete_node(request: web.Request) -> web.Response:
        node = find(request.match_info["id"])
        if node is None:
            return _error(404, "NOT_FOUND")
        hub.nodes.remove(node)
        return web.json_response(node, status=202)

    async def get_analysis(request: web.Request) -> web.Response:
        analysis = hub.analyses.get(request.match_info["id"])
        if analysis is None:
            return _error(404, "NOT_FOUND")
        hub.polls_until_executed -= 1
        if hub.polls_until_executed <= 0:
            analysis["run_status"] = "executed"  # the 0.8 name of execution_status
        return web.json_response(analysis)

    async def command(request: web.Request) -> web.Response:
        analysis = hub.analyses.get(request.match_info["id"])
        if analysis is None:
            return _error(404, "NOT_FOUND")
        name = (await request.json()).get("command")
        if name == "configurationLock":
            analysis["configuration_locked"] = True
            return web.json_response(analysis, status=202)
        return _error(400, "BAD_REQUEST", f"unknown command {name}")

    async def list_analysis_buckets(request: web.Request) -> web.Response:
        q = request.query
        items = [
            b
            for b in hub.analysis_buckets
            if b["analysis_id"] == q.get("filter[analysis_id]", b["analysis_id"])
            and b["type"] == q.get("filter[type]", b["type"])
        ]
        return web.json_response({"data": items, "meta": {"total": len(items)}})

    async def upload(request: web.Request) -> web.Response:
        reader = await request.multipart()
        created = []
        async for part in reader:
            data = bytearray()
            while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                data += chunk
            fid = str(uuid.uuid4())
            hub.files[fid] = bytes(data)
            name = part.filename  # type: ignore[union-attr]
            created.append({"id": fid, "name": name, "size": len(data)})
        return web.json_response({"data": created}, status=201)

    async def stream_file(request: web.Request) -> web.StreamResponse:
        data = hub.files.get(request.match_info["id"])
        if data is None:
            return _error(404, "NOT_FOUND")
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, len(data), 100_000):
            await response.write(data[start : start + 100_000])
        await response.write_eof()
        return response

    async def stream_bucket(request: web.Request) -> web.Response:
        return web.Response(body=hub.tar, content_type="application/x-tar")

    app = web.Application(middlewares=[faults])
    app.router.add_post("/token", token)
    app.router.add_get("/nodes", list_nodes)
    app.router.add_post("/nodes", create_node)
    app.router.add_get("/nodes/{id}", get_node)
    app.router.add_post("/nodes/{id}", update_node)
    app.router.add_delete("/nodes/{id}", delete_node)
    app.router.add_get("/analyses/{id}", get_analysis)
    app.router.add_post("/analyses/{id}/command", command)
    app.router.add_get("/analysis-buckets", list_analysis_buckets)
    app.router.add_post("/buckets/{id}/upload", upload)
    app.router.add_get("/buckets/{id}/stream", stream_bucket)
    app.router.add_get("/bucket-files/{id}/stream", stream_file)
    return app


@pytest.fixture
async def mini_hub() -> AsyncIterator[MiniHub]:
    hub = MiniHub()
    runner = web.AppRunner(build_app(hub), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hub.url = f"http://{host}:{port}"
    try:
        yield hub
    finally:
        await runner.cleanup()


def client_for(hub: MiniHub, credentials: Credentials | None = None, **options: Any) -> HubClient:
    options.setdefault("retry", INSTANT)
    options.setdefault("wire_case", "snake")
    return HubClient(
        auth_url=hub.url,
        core_url=hub.url,
        storage_url=hub.url,
        credentials=credentials or PasswordAuth("admin", "start123"),
        **options,
    )


@dataclass(frozen=True)
class RealHubSettings:
    """Where the real Hub runs and who to log in as (the shape of the ``real_hub`` fixture)."""

    auth_url: str
    core_url: str
    storage_url: str
    user: str
    password: str
    robot_id: str
    robot_secret: str
    wire_case: str

    def client(self, credentials: Credentials | None = None, **options: Any) -> HubClient:
        options.setdefault("wire_case", "auto")
        # the Hub is shared: ride out authup's rate limit (1,200 anonymous requests a minute
        # per address, /token included) rather than fail on someone else's load
        options.setdefault("retry", RetryPolicy(attempts=6, initial=0.2, jitter=1.0, deadline=100))
        return HubClient(
            auth_url=self.auth_url,
            core_url=self.core_url,
            storage_url=self.storage_url,
            credentials=credentials or PasswordAuth(self.user, self.password),
            **options,
        )


@pytest.fixture
def real_hub_settings(request: pytest.FixtureRequest) -> RealHubSettings:
    """The real Hub: the session fixture ``real_hub`` (tests/hub/conftest.py) when there is
    one, else the ``FLAME_HUB_*`` variables; skipped, with the reason, when neither exists."""
    try:
        hub = request.getfixturevalue("real_hub")
    except pytest.FixtureLookupError:
        env = os.environ
        if not env.get("FLAME_HUB_CORE_URL"):
            pytest.skip(
                "no real Hub: FLAME_HUB_CORE_URL is unset (start ../shared/hub/start_real_hub.sh "
                "and export the variables of its 'env' command)"
            )
        return RealHubSettings(
            auth_url=env.get("FLAME_HUB_AUTH_URL", ""),
            core_url=env["FLAME_HUB_CORE_URL"],
            storage_url=env.get("FLAME_HUB_STORAGE_URL", ""),
            user=env.get("FLAME_HUB_USER", "admin"),
            password=env.get("FLAME_HUB_PASSWORD", ""),
            robot_id=env.get("FLAME_HUB_ROBOT_ID", ""),
            robot_secret=env.get("FLAME_HUB_ROBOT_SECRET", ""),
            wire_case=env.get("FLAME_HUB_WIRE_CASE", "snake"),
        )
    return RealHubSettings(
        **{f: str(getattr(hub, f)) for f in RealHubSettings.__dataclass_fields__}
    )


@pytest.fixture
def short_token_hub_settings(request: pytest.FixtureRequest) -> RealHubSettings:
    """A real Hub whose authup issues 5-s access and 20-s refresh tokens: the session fixture
    ``real_hub_short_tokens`` when there is one, else ``FLAME_HUB_SHORT_{AUTH,CORE,STORAGE}_URL``
    (credentials as for the main instance); skipped, with the reason, when neither exists."""
    try:
        hub = request.getfixturevalue("real_hub_short_tokens")
    except pytest.FixtureLookupError:
        env = os.environ
        if not env.get("FLAME_HUB_SHORT_CORE_URL"):
            pytest.skip(
                "no real Hub with short-lived tokens: neither the real_hub_short_tokens fixture "
                "nor FLAME_HUB_SHORT_CORE_URL is there"
            )
        return RealHubSettings(
            auth_url=env.get("FLAME_HUB_SHORT_AUTH_URL", ""),
            core_url=env["FLAME_HUB_SHORT_CORE_URL"],
            storage_url=env.get("FLAME_HUB_SHORT_STORAGE_URL", ""),
            user=env.get("FLAME_HUB_USER", "admin"),
            password=env.get("FLAME_HUB_PASSWORD", ""),
            robot_id=env.get("FLAME_HUB_ROBOT_ID", ""),
            robot_secret=env.get("FLAME_HUB_ROBOT_SECRET", ""),
            wire_case=env.get("FLAME_HUB_WIRE_CASE", "snake"),
        )
    return RealHubSettings(
        **{f: str(getattr(hub, f)) for f in RealHubSettings.__dataclass_fields__}
    )
