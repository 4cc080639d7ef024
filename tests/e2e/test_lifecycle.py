"""Nothing outlives `async with FlameSDK()`: no task, no socket; status follows the exit."""

from __future__ import annotations

import asyncio

import anyio
import psutil
import pytest

from flame_async import FlameSDK, SDKStateError, StartupError
from flame_async.local import LocalNode

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


def sdk_sockets(node: LocalNode, api_port: int) -> list[object]:
    gateway_port = int(node.gateway_url.rsplit(":", 1)[1])
    return [
        c
        for c in psutil.Process().net_connections(kind="inet")
        if c.laddr.port == api_port or (c.raddr and c.raddr.port == gateway_port)
    ]


async def use_and_exit(node: LocalNode, how: str) -> tuple[FlameSDK, int]:
    flame = FlameSDK(node.config(retry=FAST_RETRY))
    port = 0
    if how == "normal":
        async with flame:
            port = flame.api_port or 0
            await flame.ask_status_nodes(timeout=0.2)
    elif how == "exception":
        with pytest.raises(ZeroDivisionError):
            async with flame:
                port = flame.api_port or 0
                await flame.ask_status_nodes(timeout=0.2)
                1 / 0  # noqa: B018
    else:
        async with anyio.create_task_group() as tg:

            async def body() -> None:
                nonlocal port
                async with flame:
                    port = flame.api_port or 0
                    await anyio.sleep_forever()

            tg.start_soon(body)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    return flame, port


@pytest.mark.parametrize(
    ("how", "status"), [("normal", "executed"), ("exception", "failed"), ("cancel", "stopped")]
)
async def test_nothing_left_running_after_exit(how: str, status: str) -> None:
    async with running(2, start=1) as (platform, _):
        node = platform.nodes[1]
        before = sdk_tasks()
        flame, port = await use_and_exit(node, how)
        assert port
        await anyio.sleep(0.05)
        assert sdk_tasks() - before == set()
        assert sdk_sockets(node, port) == []
        assert flame.status.status.value == status
        assert platform.status(node.node_id) == status  # shipped to the PO before closing
        with pytest.raises(SDKStateError):
            flame.get_participants()


async def test_failure_ships_the_traceback_to_the_po() -> None:
    async with running(2, start=1) as (platform, _):
        node = platform.nodes[1]
        await use_and_exit(node, "exception")
        logs = [r.log for r in platform.logs(node.node_id)]
        assert any("ZeroDivisionError" in line and "Traceback" in line for line in logs)


async def test_unreachable_gateway_fails_start_up_clearly() -> None:
    async with running(2, start=0) as (platform, _):
        config = platform.nodes[0].config(
            base_url="http://127.0.0.1:9", startup_timeout=0.3, retry=FAST_RETRY
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
