"""Nothing outlives `async with FlameSDK()`: no task, no socket; status follows the exit."""

from __future__ import annotations

import asyncio
import socket

import anyio
import psutil
import pytest

from flame_async import FlameSDK, SDKStateError, StartupError
from flame_async.local import LocalNode, LocalPlatform

from .conftest import FAST_RETRY, running

pytestmark = pytest.mark.slow


def sdk_tasks() -> set[asyncio.Task[object]]:
    found = set()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None)
        filename = code.co_filename if code else ""
        if "/flame_async/" in filename and "/flame_async/local/" not in filename:
            found.add(task)
    return found


def sdk_sockets(node: LocalNode, api_port: int | None) -> list[object]:
    return [
        c
        for c in psutil.Process().net_connections(kind="inet")
        if (api_port and c.laddr.port == api_port)
        or (c.raddr and c.raddr.port == node.gateway_port)
    ]


async def use_and_exit(
    platform: LocalPlatform, node: LocalNode, how: str
) -> tuple[FlameSDK, int | None]:
    config = node.config(retry=FAST_RETRY)
    flame = FlameSDK(config, transport=platform.transport_for(node, config))
    port: int | None = None
    if how == "normal":
        async with flame:
            port = flame.api_port
            await flame.ask_status_nodes(timeout=0.2)
    elif how == "exception":
        with pytest.raises(ZeroDivisionError):
            async with flame:
                port = flame.api_port
                await flame.ask_status_nodes(timeout=0.2)
                1 / 0  # noqa: B018
    else:
        entered = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def body() -> None:
                nonlocal port
                async with flame:
                    port = flame.api_port
                    entered.set()
                    await anyio.sleep_forever()

            tg.start_soon(body)
            await entered.wait()
            tg.cancel_scope.cancel()
    return flame, port


@pytest.mark.parametrize(
    ("how", "status"), [("normal", "executed"), ("exception", "failed"), ("cancel", "stopped")]
)
async def test_nothing_left_running_after_exit(how: str, status: str, transport: str) -> None:
    async with running(2, start=1, transport=transport) as (platform, _):
        node = platform.nodes[1]
        before = sdk_tasks()
        flame, port = await use_and_exit(platform, node, how)
        assert bool(port) == (transport == "http")  # the socket the platform bound for it
        assert sdk_tasks() - before == set()
        assert sdk_sockets(node, port) == []
        assert flame.status.status.value == status
        assert platform.status(node.node_id) == status  # shipped to the PO before closing
        with pytest.raises(SDKStateError):
            flame.get_participants()


async def test_failure_ships_the_traceback_to_the_po(transport: str) -> None:
    async with running(2, start=1, transport=transport) as (platform, _):
        node = platform.nodes[1]
        await use_and_exit(platform, node, "exception")
        logs = [r.log for r in platform.logs(node.node_id)]
        assert any("ZeroDivisionError" in line and "Traceback" in line for line in logs)


async def test_unreachable_gateway_fails_start_up_clearly() -> None:
    async with running(2, start=0) as (platform, _):
        node = platform.nodes[0]
    # bound but not listening while the test runs: the gateway refuses every connection
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        config = node.config(
            base_url=f"http://127.0.0.1:{closed.getsockname()[1]}",
            startup_timeout=0.3,
            retry=FAST_RETRY,
        )
        before = sdk_tasks()
        with pytest.raises(StartupError, match="did not answer /healthz"):
            async with FlameSDK(config):
                pass
    assert sdk_tasks() - before == set()


async def test_use_outside_the_block_is_refused() -> None:
    flame = FlameSDK()
    with pytest.raises(SDKStateError, match="async with"):
        flame.get_participants()


def test_another_event_loop_than_asyncio_gets_a_clear_error() -> None:
    """trio (or no loop at all): a clear error before anything starts, not aiohttp's."""
    coroutine = FlameSDK().__aenter__()
    with pytest.raises(SDKStateError, match=r"runs on asyncio .* \(trio\?\)"):
        coroutine.send(None)  # driven by hand: no asyncio event loop is running
