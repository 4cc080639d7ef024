"""LocalPlatform: configuration, the node table and a clean lifecycle."""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack

import aiohttp
import psutil
import pytest

from flame_async.config import REQUIRED_ENV, FlameConfig
from flame_async.errors import InvalidArgument
from flame_async.local import LocalPlatform, PlatformStateError

from .helpers import Gateway, StartPlatform, StubApi, eventually


def test_node_ids_from_a_count_and_the_first_is_the_aggregator() -> None:
    platform = LocalPlatform(4)
    assert platform.node_ids == ("node-1", "node-2", "node-3", "node-4")
    assert platform.aggregator_id == "node-1"


@pytest.mark.parametrize(
    ("nodes", "options", "match"),
    [
        (0, {}, "at least one"),
        ([], {}, "at least one"),
        ("node-1", {}, "not a string"),
        (["Node-1"], {}, "lowercase"),
        (["-a"], {}, "start with"),
        (["a_b"], {}, "lowercase"),
        (["x" * 40], {}, "longer than 39"),
        (["a", "b", "a"], {}, "duplicate node ids: a"),
        (["a", "b"], {"aggregator": "c"}, "aggregator"),
        (2, {"analysis_id": "not valid!"}, "analysis_id"),
        (2, {"project_id": ""}, "project_id"),
        (2, {"po_interval": 0}, "po_interval"),
        (2, {"token_lifetime": -1}, "token_lifetime"),
        (2, {"webhook_retry_initial": -0.1}, "webhook_retry_initial"),
        (2, {"shared_port": 70000}, "shared_port"),
    ],
)
def test_invalid_options_are_refused(nodes: object, options: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as caught:
        LocalPlatform(nodes, **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


async def test_using_it_before_enter_or_entering_twice_is_an_error() -> None:
    platform = LocalPlatform(2, analysis_id="a1", project_id="p1")
    assert (platform.analysis_id, platform.project_id) == ("a1", "p1")
    with pytest.raises(PlatformStateError, match="async with"):
        _ = platform.nodes
    with pytest.raises(PlatformStateError):
        platform.logs("node-1")
    async with platform:
        with pytest.raises(PlatformStateError, match="only once"):
            await platform.__aenter__()
    with pytest.raises(PlatformStateError, match="only once"):
        await platform.__aenter__()
    assert platform.deliveries == []  # records stay readable after exit


async def test_nodes_have_their_env_and_config(start_platform: StartPlatform) -> None:
    platform: LocalPlatform = await start_platform(
        ["alpha", "beta", "gamma"], aggregator="beta", partner_status_grace=1.5
    )
    assert [n.node_id for n in platform.nodes] == ["alpha", "beta", "gamma"]
    assert [n.role for n in platform.nodes] == ["default", "aggregator", "default"]
    assert platform.aggregator is platform.node("beta")
    ports = [n.gateway_port for n in platform.nodes]
    assert len(set(ports)) == 3
    assert len({n.deployment_name for n in platform.nodes}) == 3
    for node in platform.nodes:
        assert set(REQUIRED_ENV) <= node.env.keys()
        assert node.env["ANALYSIS_ID"] == platform.analysis_id
        assert node.env["PROJECT_ID"] == platform.project_id
        assert (
            node.env["FLAME_BASE_URL"]
            == node.gateway_url
            == f"http://127.0.0.1:{node.gateway_port}"
        )
        assert node.env["FLAME_API_HOST"] == "127.0.0.1"
        assert node.env["FLAME_API_PORT"] == "0"  # the node binds, then announces its port
        assert node.env["FLAME_ANNOUNCE_API"] == "1"
        assert node.env["FLAME_PARTNER_STATUS_GRACE"] == "1.5"
        config = node.config()
        assert isinstance(config, FlameConfig)
        assert config.base_url == node.gateway_url
        assert config.webhook_url == f"{node.gateway_url}/analysis/webhook"
        assert (config.api_host, config.api_port, config.announce_api) == ("127.0.0.1", 0, True)
        assert config.partner_status_grace == 1.5
        assert node.config(request_timeout=3).request_timeout == 3
        assert node.nginx_host == f"nginx-{node.deployment_name}"
        assert len(node.nginx_host) <= 63
    tokens = {n.env["DATA_SOURCE_TOKEN"] for n in platform.nodes}
    assert len(tokens) == 3


async def test_longest_node_ids_still_give_valid_host_names(
    start_platform: StartPlatform, http: aiohttp.ClientSession
) -> None:
    node_id = "n" * 39
    platform: LocalPlatform = await start_platform([node_id])
    node = platform.node(node_id)
    assert len(node.nginx_host) == 63
    node.config()  # DEPLOYMENT_NAME passes FlameConfig's host name check
    async with http.get(f"{platform.shared_url}/healthz", headers={"Host": node.nginx_host}) as r:
        assert r.status == 200


async def test_the_chosen_shared_port_is_the_one_bound(start_platform: StartPlatform) -> None:
    # No free-port guessing: the port is held by this test, so binding it must fail, which
    # shows that the platform binds exactly the port it was given.
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await start_platform(1, shared_port=port)


async def test_enter_and_exit_may_happen_in_different_tasks() -> None:
    """pytest-asyncio runs an async fixture's set-up and tear-down in different tasks."""
    platform = LocalPlatform(1)
    await asyncio.create_task(platform.__aenter__())
    await asyncio.create_task(platform.__aexit__(None, None, None))


def _connections(ports: set[int]) -> list[object]:
    return [
        c
        for c in psutil.Process().net_connections(kind="inet")
        if (c.laddr and c.laddr.port in ports) or (c.raddr and c.raddr.port in ports)
    ]


async def test_exit_leaves_no_task_and_no_socket_behind() -> None:
    before = asyncio.all_tasks()
    platform = LocalPlatform(3, po_interval=0.01, webhook_retry_initial=30.0)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(platform)
        apis = [await StubApi(node).start(stack, platform) for node in platform.nodes[:2]]
        apis[1].webhook_answers = [500]  # the delivery waits 30 s before retrying
        http = await stack.enter_async_context(aiohttp.ClientSession())
        sender, receiver = (Gateway(http, platform, platform.node(n)) for n in ("node-1", "node-2"))
        await receiver.subscribe()
        assert await sender.send(["node-2"], {"x": 1}) == 202
        await eventually(lambda: apis[1].on("/webhook"))
        await eventually(lambda: len(apis[0].on("/healthz")) >= 2)
        ports = {n.gateway_port for n in platform.nodes}
        ports |= {port for n in platform.nodes if (port := platform.api_port(n.node_id))}
        ports.add(int(platform.shared_url.rsplit(":", 1)[1]))
        assert _connections(ports)
    assert asyncio.all_tasks() == before
    assert _connections(ports) == []
    assert platform.deliveries == []  # the pending retry was cancelled, not recorded
