"""In-memory requests are bounded in time by the platform's coarse RequestClock (no timer per
request): a request past its deadline ends with RequestTimeout, a cancellation from elsewhere
still wins, and nothing is left cancelled or watched afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import pytest
from anyio.abc import TaskGroup

from flame_async._transport import Request, Response
from flame_async.errors import RequestTimeout
from flame_async.local import MemoryTransport
from flame_async.local._core import PlatformCore, RequestClock

Gateway = Callable[[Request], Awaitable[Response]]


class Core:
    """What a MemoryTransport uses of the platform: gateways, the clock, a task group."""

    def __init__(self, tg: TaskGroup, gateway: Gateway) -> None:
        self.gateways = {"n1": gateway}
        self.closed = False
        self._tg = tg
        self.request_clock = RequestClock(cast(PlatformCore, self))

    def spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        self._tg.start_soon(func, *args)

    def unregister_api(self, node_id: str) -> None:
        pass


async def never(request: Request) -> Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def at_once(request: Request) -> Response:
    return Response(200, b"ok")


async def deaf(request: Request) -> Response:
    """Swallows a cancellation once, then answers (a handler that cleans up and replies)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        return Response(200, b"late")
    raise AssertionError("unreachable")


@asynccontextmanager
async def platform_with(gateway: Gateway) -> AsyncIterator[Core]:
    """A core with ``gateway`` for node ``n1``, its task group open inside the block."""
    async with anyio.create_task_group() as tg:
        yield Core(tg, gateway)
        tg.cancel_scope.cancel()


async def call(core: Core, timeout: float) -> bytes:
    async with MemoryTransport(cast(PlatformCore, core), "n1") as transport:
        request = Request("GET", "/healthz", service="gateway", timeout=timeout)
        async with transport.open(request) as response:
            return await response.read()


async def test_a_request_past_its_deadline_ends_with_request_timeout() -> None:
    async with platform_with(never) as core:
        with pytest.raises(RequestTimeout, match="did not answer GET memory://n1/healthz"):
            await call(core, 0.05)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the clock's cancel was undone
        await asyncio.sleep(0)  # and nothing is delivered later
        assert len(core.request_clock) == 0


async def test_an_answer_in_time_is_returned_and_forgotten() -> None:
    async with platform_with(at_once) as core:
        assert await call(core, 5.0) == b"ok"
        assert len(core.request_clock) == 0


async def test_a_cancellation_from_elsewhere_wins_over_the_deadline() -> None:
    entered = asyncio.Event()

    async def waiting(request: Request) -> Response:
        entered.set()
        return await never(request)

    async with platform_with(waiting) as core:
        task = asyncio.ensure_future(call(core, 30.0))
        await entered.wait()
        assert len(core.request_clock) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(core.request_clock) == 0


async def test_a_handler_that_answers_when_cancelled_gives_its_answer() -> None:
    async with platform_with(deaf) as core:
        assert await call(core, 0.05) == b"late"
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0)
