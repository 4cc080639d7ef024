"""A compat call keeps the analysis's thread and the node's loop thread on one CPU while it
runs, and gives both their CPU sets back afterwards (``_colocate.Colocation``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from flame_async.compat.flamesdk import _colocate
from flame_async.compat.flamesdk._colocate import COLOCATE_ENV, Colocation, unpin_inherited

from .test_api import call, compat_nodes

if not hasattr(os, "sched_setaffinity"):
    pytest.skip("CPU affinity is Linux-only (no os.sched_setaffinity)", allow_module_level=True)

CPUS = os.sched_getaffinity(0)
needs_two_cpus = pytest.mark.skipif(
    len(CPUS) < 2, reason=f"this process may use {len(CPUS)} CPU only: nothing to pin"
)


class LoopThread:
    """A thread standing in for an event loop's: it waits until told to stop."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.native_id = 0

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        self._started.set()
        self._stop.wait()

    def __enter__(self) -> LoopThread:
        self._thread.start()
        self._started.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpus(self) -> set[int]:
        return os.sched_getaffinity(self.native_id)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    with LoopThread() as thread:
        yield thread


@pytest.fixture(autouse=True)
def _mask_restored() -> Iterator[None]:
    yield
    os.sched_setaffinity(0, CPUS)


@needs_two_cpus
def test_a_call_pins_both_threads_to_one_cpu_and_gives_their_cpus_back(
    loop_thread: LoopThread,
) -> None:
    colocation = Colocation(loop_thread.native_id)
    assert colocation.enabled
    mine = colocation.enter()
    assert mine == CPUS
    pinned = os.sched_getaffinity(0)
    assert len(pinned) == 1
    assert loop_thread.cpus() == pinned
    colocation.leave(mine)
    assert os.sched_getaffinity(0) == CPUS
    assert loop_thread.cpus() == CPUS


@needs_two_cpus
def test_the_loop_stays_pinned_until_the_last_call_in_flight_returns(
    loop_thread: LoopThread,
) -> None:
    colocation = Colocation(loop_thread.native_id)
    first = colocation.enter()
    pinned = os.sched_getaffinity(0)
    got: list[set[int]] = []

    def second_caller() -> None:
        token = colocation.enter()
        got.append(os.sched_getaffinity(0))
        colocation.leave(token)

    other = threading.Thread(target=second_caller)
    other.start()
    other.join()
    assert got == [pinned]  # the same CPU for every caller of the loop
    assert loop_thread.cpus() == pinned  # the first call is still in flight
    colocation.leave(first)
    assert loop_thread.cpus() == CPUS


@needs_two_cpus
def test_a_caller_restricted_to_some_cpus_gets_exactly_those_back(
    loop_thread: LoopThread,
) -> None:
    some = set(sorted(CPUS)[:2])
    os.sched_setaffinity(0, some)
    colocation = Colocation(loop_thread.native_id)
    mine = colocation.enter()
    assert os.sched_getaffinity(0) <= some
    colocation.leave(mine)
    assert os.sched_getaffinity(0) == some


def test_the_environment_variable_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, loop_thread: LoopThread
) -> None:
    monkeypatch.setenv(COLOCATE_ENV, "0")
    colocation = Colocation(loop_thread.native_id)
    assert not colocation.enabled
    assert colocation.enter() is None
    assert os.sched_getaffinity(0) == CPUS
    colocation.leave(None)


@needs_two_cpus
def test_a_refused_affinity_call_turns_it_off_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_such_thread = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    colocation = Colocation(no_such_thread)  # the system refuses (ESRCH)
    with caplog.at_level("DEBUG", logger="flame_async.compat.flamesdk"):
        assert colocation.enter() is None
    assert not colocation.enabled
    assert os.sched_getaffinity(0) == CPUS
    assert "not pinning compat calls to one CPU" in caplog.text
    assert colocation.enter() is None  # once off, it stays off


@needs_two_cpus
def test_without_sched_getcpu_it_picks_a_cpu_of_the_caller(
    monkeypatch: pytest.MonkeyPatch, loop_thread: LoopThread
) -> None:
    monkeypatch.setattr(_colocate, "_current_cpu", None)
    colocation = Colocation(loop_thread.native_id)
    mine = colocation.enter()
    assert os.sched_getaffinity(0) == {min(CPUS)} == loop_thread.cpus()
    colocation.leave(mine)


@needs_two_cpus
@pytest.mark.slow
async def test_a_compat_call_runs_its_loop_on_the_callers_cpu_only_while_it_runs() -> None:
    async with compat_nodes(2) as flames:
        flame = flames["node-1"]
        loop_cpus_before = os.sched_getaffinity(0)  # this test's loop serves the nodes

        async def on_the_loop() -> set[int]:
            return os.sched_getaffinity(0)

        def in_the_analysis_thread() -> tuple[set[int], set[int], set[int]]:
            before = os.sched_getaffinity(0)
            during = flame.run(on_the_loop)
            return before, during, os.sched_getaffinity(0)

        before, during, after = await anyio.to_thread.run_sync(in_the_analysis_thread)
        assert len(during) == 1
        assert before == after == CPUS
        assert os.sched_getaffinity(0) == loop_cpus_before == CPUS
        # an ordinary call still works with its threads pinned
        assert await call(flame.get_id) == "node-1"


@needs_two_cpus
def test_a_thread_started_during_a_call_gets_the_process_cpus_back(
    loop_thread: LoopThread,
) -> None:
    colocation = Colocation(loop_thread.native_id)
    mine = colocation.enter()
    seen: list[set[int]] = []

    def started_while_pinned() -> None:  # as if the loop's thread had started it
        seen.append(os.sched_getaffinity(0))
        unpin_inherited()
        seen.append(os.sched_getaffinity(0))

    thread = threading.Thread(target=started_while_pinned)  # inherits this pinned thread's
    thread.start()
    thread.join()
    colocation.leave(mine)
    assert len(seen[0]) == 1
    assert seen[1] == CPUS


@needs_two_cpus
def test_a_thread_on_a_cpu_no_call_pinned_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_colocate, "_pinned_to", set())  # no call has pinned any CPU
    chosen = {max(CPUS)}
    os.sched_setaffinity(0, chosen)
    unpin_inherited()
    assert os.sched_getaffinity(0) == chosen
