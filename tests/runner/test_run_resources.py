"""What an in-process run changes in its process, and gives back: the limit on open files is
raised as far as allowed (and stays), the garbage collector is tuned while nodes run (and
restored, even when runs overlap)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import anyio
import pytest

from flame_async import FlameSDK
from flame_async.runner import run_analysis


@pytest.fixture
def collector() -> Iterator[tuple[int, int, int]]:
    """Python's default collector settings for the test, whatever ran before it."""
    saved, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(700, 10, 10)
    gc.enable()
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*saved)
        if not enabled:
            gc.disable()


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
async def test_a_run_raises_the_soft_limit_on_open_files_to_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 128:
        pytest.skip(f"hard limit {hard}: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))
    try:

        async def main() -> None:
            async with FlameSDK():
                pass

        result = await run_analysis(main, nodes=2, timeout=60)
        assert result.ok, [(o.error_type, o.error_message) for o in result.failed]
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_collector_is_tuned_while_nodes_run_and_restored_after(
    collector: tuple[int, int, int],
) -> None:
    assert gc.get_freeze_count() == 0
    seen: list[tuple[tuple[int, int, int], int]] = []

    async def main() -> None:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))

    result = await run_analysis(main, nodes=2, transport="memory", timeout=60)

    assert result.ok
    for threshold, frozen in seen:
        assert threshold[0] > collector[0]  # the young generation is collected less often
        assert frozen > 0  # the start-up heap is out of the collector's way
    assert gc.get_threshold() == collector
    assert gc.get_freeze_count() == 0


async def test_overlapping_runs_restore_the_collector_when_the_last_ends(
    collector: tuple[int, int, int],
) -> None:
    first_done, second_may_end = anyio.Event(), anyio.Event()
    during: list[tuple[int, int, int]] = []

    async def short() -> None:
        pass

    async def long() -> None:
        await second_may_end.wait()
        during.append(gc.get_threshold())

    async def first() -> None:
        await run_analysis(short, nodes=2, transport="memory", timeout=60)
        first_done.set()

    async def second() -> None:
        await run_analysis(long, nodes=2, transport="memory", timeout=60)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        tg.start_soon(first)
        await first_done.wait()
        assert gc.get_threshold() != collector  # the second run still runs
        second_may_end.set()
    assert during and during[0] != collector
    assert gc.get_threshold() == collector
    assert gc.get_freeze_count() == 0


async def test_a_disabled_collector_is_left_alone(collector: tuple[int, int, int]) -> None:
    seen: list[tuple[int, int, int]] = []

    async def main() -> None:
        seen.append(gc.get_threshold())

    gc.disable()
    try:
        result = await run_analysis(main, nodes=2, transport="memory", timeout=60)
    finally:
        gc.enable()
    assert result.ok
    assert seen == [collector, collector]
    assert gc.get_freeze_count() == 0
