"""A service that is also a FLAME node: the how-to's two examples, run as they are.

Each service answers a request of its own while its FlameSDK exchanges messages with a peer.
The aiohttp service serves the node API from its own application (no second listening port);
the Starlette service runs under uvicorn with the node's API on its own port.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import psutil
import pytest
import uvicorn
from aiohttp import web

from flame_async import FlameSDK, Message
from flame_async.local import LocalPlatform

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "embedding"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"embedding_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[LocalPlatform]:
    async with LocalPlatform(2, po_interval=3600.0, state_dir=tmp_path) as started:
        yield started


def listening_ports() -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


async def test_an_aiohttp_service_hosts_the_node_api_and_answers_its_own_routes(
    platform: LocalPlatform,
) -> None:
    service = load("aiohttp_service")
    node, peer_node = platform.nodes
    app: web.Application = service.create_app(node.config())
    before = listening_ports()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # starts the node (cleanup_ctx)
    try:
        # the service listens where the platform expects the node's API: one socket for both
        await web.SockSite(runner, platform.bind_api(node.node_id)).start()
        port = platform.api_port(node.node_id)
        assert port is not None
        flame: FlameSDK = app[service.FLAME]
        assert flame.api_port is None  # no server of its own
        assert listening_ports() - before == {port}
        async with (
            FlameSDK(peer_node.config(), transport=platform.transport_for(peer_node)) as peer,
            aiohttp.ClientSession() as http,
        ):
            reply = await peer.send_message_and_wait_for_response(
                node.node_id, {"x": 21}, category="question", timeout=10
            )
            assert reply.data == {"answer": 42}
            async with http.get(f"http://127.0.0.1:{port}/status") as response:
                assert await response.json() == {"node": node.node_id, "answered": 1}
    finally:
        await runner.cleanup()  # leaves the node (cleanup_ctx)
    assert flame.status.status.value == "executed"


async def test_a_starlette_service_under_uvicorn_runs_a_node_in_its_lifespan(
    platform: LocalPlatform,
) -> None:
    service = load("starlette_service")
    node, peer_node = platform.nodes
    app = service.create_app(node.config(), transport=platform.transport_for(node))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    sock = socket.create_server(("127.0.0.1", 0))  # bound here, handed to uvicorn
    port = sock.getsockname()[1]
    async with AsyncExitStack() as stack:
        peer = await stack.enter_async_context(
            FlameSDK(peer_node.config(), transport=platform.transport_for(peer_node))
        )

        @peer.handler("question")
        async def answer(message: Message) -> dict[str, Any]:
            return {"answer": message.data["x"] * 2}

        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(20):
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                    await anyio.sleep(0.01)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/status") as response:
                    status = await response.json()
                assert status == {"node": node.node_id, "peers": [peer_node.node_id]}
                async with http.post(f"http://127.0.0.1:{port}/ask", json={"x": 5}) as response:
                    assert await response.json() == {peer_node.node_id: 10}
            server.should_exit = True
    assert platform.status(node.node_id) == "executed"  # the lifespan left the node cleanly
