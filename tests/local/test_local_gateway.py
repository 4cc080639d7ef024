"""The node gateways and the shared, Host-routed port (PROTOCOL.md §1.3)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from flame_async._transport import Request
from flame_async.local import LocalPlatform
from flame_async.local._gateway import Gateway
from flame_async.local._tokens import TokenIssuer

from .helpers import StartApi, eventually


async def test_healthz_is_answered_by_the_gateway(
    platform: LocalPlatform, http: aiohttp.ClientSession
) -> None:
    for node in platform.nodes:
        async with http.get(node.gateway_url + "/healthz") as response:
            assert response.status == 200
            assert await response.text() == "healthy"


@pytest.mark.parametrize(
    "path", ["/storage/final", "/storage", "/hub-adapter/kong/datastore/x", "/kong/s/fhir/Patient"]
)
async def test_nginx_prefixes_no_service_claims_answer_501(
    platform: LocalPlatform, path: str
) -> None:
    gateway = Gateway(platform.node("node-1"), [])  # no services: plain logic, no server
    response = await gateway.handle(Request("PUT", path, body=b"x"))
    assert response.status == 501
    assert "not emulated" in orjson.loads(await response.read())["detail"]


@pytest.mark.parametrize("path", ["/storage/final", "/hub-adapter/kong/datastore/x", "/kong/s/s3"])
async def test_every_nginx_prefix_is_served_by_the_platform(
    platform: LocalPlatform, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(platform.node("node-1").gateway_url + path) as response:
        assert response.status != 501


@pytest.mark.parametrize("route", ["/message-broker/analyses/{A}/participants", "/po/stream_logs"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwdw==",
        "Bearer not-a-jwt",
        "Bearer {other_secret}",
        "Bearer {expired}",
        "Bearer {other_analysis}",
    ],
)
async def test_broker_and_po_need_a_valid_token_of_the_analysis(
    platform: LocalPlatform, http: aiohttp.ClientSession, route: str, authorization: str | None
) -> None:
    node = platform.node("node-2")
    tokens = {
        "other_secret": TokenIssuer(platform.analysis_id, lifetime=60).mint("node-2"),
        "expired": TokenIssuer(platform.analysis_id, lifetime=60).mint("node-2", lifetime=-5),
        "other_analysis": TokenIssuer("other", lifetime=60).mint("node-2"),
    }
    headers = {} if authorization is None else {"Authorization": authorization.format(**tokens)}
    url = node.gateway_url + route.format(A=platform.analysis_id)
    async with http.request(
        "GET" if "participants" in route else "POST", url, headers=headers, json={}
    ) as response:
        assert response.status == 401
        assert (await response.json())["detail"]


async def test_analysis_routes_are_proxied_to_the_node_api(
    platform: LocalPlatform, http: aiohttp.ClientSession, start_api: StartApi
) -> None:
    node = platform.node("node-3")
    api = await start_api(node)
    async with http.post(
        URL(node.gateway_url + "/analysis/some%20path/x?a=1&b=%2F", encoded=True), data=b"payload"
    ) as response:
        assert response.status == 200
        assert await response.json() == {
            "path": "/some path/x",
            "query": "a=1&b=%2F",
            "echo": "payload",
        }
    async with http.get(node.gateway_url + "/analysis/healthz") as response:
        assert (await response.json())["status"] == "executing"
    (forwarded, _) = api.requests
    assert forwarded.headers["Host"] == f"127.0.0.1:{node.gateway_port}"  # passed through


async def test_analysis_proxy_answers_502_when_the_api_is_not_listening(
    platform: LocalPlatform, http: aiohttp.ClientSession
) -> None:
    async with http.post(platform.node("node-1").gateway_url + "/analysis/webhook") as response:
        assert response.status == 502
        assert "detail" in await response.json()


async def test_shared_port_routes_by_host_header(
    platform: LocalPlatform, http: aiohttp.ClientSession
) -> None:
    for node in platform.nodes:
        headers = {
            "Host": node.nginx_host,
            "Authorization": f"Bearer {node.env['KEYCLOAK_TOKEN']}",
        }
        broker = f"/message-broker/analyses/{platform.analysis_id}"
        url = f"{platform.shared_url}{broker}/participants/self"
        async with http.get(url, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["nodeId"] == node.node_id


async def test_shared_port_rejects_unknown_hosts(
    platform: LocalPlatform, http: aiohttp.ClientSession
) -> None:
    for host in ("nginx-analysis-unknown-1", "example.org", "127.0.0.1"):
        async with http.get(f"{platform.shared_url}/healthz", headers={"Host": host}) as response:
            assert response.status == 404
            assert "detail" in await response.json()


async def test_shared_port_works_as_http_proxy(
    platform: LocalPlatform, start_api: StartApi
) -> None:
    """A container knowing only http://nginx-{DEPLOYMENT_NAME} gets there through HTTP_PROXY."""
    sender, receiver = platform.node("node-1"), platform.node("node-2")
    api = await start_api(receiver)
    async with aiohttp.ClientSession(trust_env=False) as http:
        # Any: the options are aiohttp's (a TypedDict private to aiohttp.client)
        def via_proxy(
            method: str, url: str, **kwargs: Any
        ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
            return http.request(method, url, proxy=platform.shared_url, **kwargs)

        async with via_proxy("GET", f"http://{sender.nginx_host}/healthz") as response:
            assert (response.status, await response.text()) == (200, "healthy")

        broker = f"/message-broker/analyses/{platform.analysis_id}"
        receiver_auth = {"Authorization": f"Bearer {receiver.env['KEYCLOAK_TOKEN']}"}
        async with via_proxy(
            "POST",
            f"http://{receiver.nginx_host}{broker}/messages/subscriptions",
            json={"webhookUrl": f"http://{receiver.nginx_host}/analysis/webhook"},
            headers=receiver_auth,
        ) as response:
            assert response.status == 201

        sender_auth = {"Authorization": f"Bearer {sender.env['KEYCLOAK_TOKEN']}"}
        async with via_proxy(
            "POST",
            f"http://{sender.nginx_host}{broker}/messages",
            json={"recipients": ["node-2"], "message": {"hello": "world"}},
            headers=sender_auth,
        ) as response:
            assert response.status == 202
        await eventually(lambda: api.on("/webhook"))
        assert api.on("/webhook")[0].body == orjson.dumps({"hello": "world"})

        async with via_proxy("GET", f"http://{receiver.nginx_host}/analysis/healthz") as response:
            assert (await response.json())["status"] == "executing"
