"""``_timeouts.timeout``: long waits share a loop timer per time slot and behave as
``asyncio.timeout`` does. The slot's timer is fired by hand where the test is about what
happens then, so no test waits for a deadline."""

from __future__ import annotations

import asyncio

import pytest

from flame_async import _timeouts
from flame_async._timeouts import COARSE_FROM, RESOLUTION, timeout


def grid(loop: asyncio.AbstractEventLoop) -> _timeouts._Grid:
    return _timeouts._grids[loop]


def fire_all(loop: asyncio.AbstractEventLoop) -> None:
    """What the slots' timers do when their time comes."""
    slots = grid(loop)._slots
    for index in sorted(slots):
        grid(loop)._end(index)


async def test_short_waits_get_asyncio_timeout_itself() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(timeout(loop, COARSE_FROM / 2), asyncio.Timeout)
    assert isinstance(timeout(loop, float("inf")), asyncio.Timeout)
    assert not isinstance(timeout(loop, COARSE_FROM), asyncio.Timeout)


async def test_waits_ending_in_the_same_slot_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def wait() -> None:
        async with timeout(loop, 3600.0):
            entered.set()
            await release.wait()

    tasks = [asyncio.create_task(wait()) for _ in range(50)]
    await entered.wait()
    await asyncio.sleep(0)  # every task has entered its block
    slots = grid(loop)._slots
    waiting = sum(len(slot.waits) for slot in slots.values())
    assert waiting == 50
    assert len(slots) <= 2  # a slot boundary may fall between the entries
    release.set()
    await asyncio.gather(*tasks)
    assert sum(len(slot.waits) for slot in slots.values()) == 0  # ended in time: left


async def test_a_wait_past_its_slot_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    inside = asyncio.Event()
    deadline: _timeouts.Deadline | None = None

    async def wait() -> None:
        nonlocal deadline
        async with timeout(loop, 60.0) as deadline:
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(wait())
    await inside.wait()
    fire_all(loop)
    with pytest.raises(TimeoutError):
        await task
    assert deadline is not None and deadline.expired()
    assert task.cancelling() == 0  # the grid's cancel was taken back


async def test_a_block_that_ended_in_time_is_not_cancelled_by_its_slot() -> None:
    loop = asyncio.get_running_loop()
    async with timeout(loop, 60.0) as deadline:
        pass
    fire_all(loop)
    await asyncio.sleep(0)  # a cancel, had there been one, would land here
    assert not deadline.expired()


async def test_a_cancellation_from_elsewhere_wins_over_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    inside = asyncio.Event()

    async def wait() -> None:
        async with timeout(loop, 60.0):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(wait())
    await inside.wait()
    task.cancel()  # somebody else's cancel, then the deadline in the same iteration
    fire_all(loop)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_long_wait_never_ends_before_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_timeouts, "COARSE_FROM", 0.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        async with timeout(loop, 2 * RESOLUTION):
            await asyncio.Event().wait()
    assert loop.time() - began >= 2 * RESOLUTION
