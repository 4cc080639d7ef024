"""A user's error shown as the user's: their frames, their line, one entry for many nodes."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from pathlib import Path

from flame_async._failures import Failure, from_exception, from_stderr, group
from flame_async._watchdog import Block, LoopWatchdog, blocking_site


def _raise_in_user_file(tmp_path: Path) -> BaseException:
    script = tmp_path / "analysis.py"
    script.write_text("def compute():\n    return 1 / 0\n")
    namespace: dict[str, object] = {}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    try:
        namespace["compute"]()  # type: ignore[operator]
    except ZeroDivisionError as exc:
        return exc
    raise AssertionError("no error")


def test_an_exception_keeps_the_users_frames_and_names_the_line(tmp_path: Path) -> None:
    failure = from_exception(_raise_in_user_file(tmp_path))
    assert failure.error_type == "ZeroDivisionError"
    assert failure.location == "analysis.py:2"
    assert failure.headline() == "ZeroDivisionError at analysis.py:2: division by zero"
    assert failure.traceback.splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert "asyncio" not in failure.traceback and "flame_async" not in failure.traceback


def test_a_missing_extra_comes_with_the_command_that_installs_it() -> None:
    exc = ModuleNotFoundError("No module named 'pandas'", name="pandas")
    assert (
        "install flame-async's 'pandas' extra: flame-async[pandas]" in from_exception(exc).message
    )


def test_a_process_traceback_is_trimmed_to_the_users_frames() -> None:
    library = str(Path(asyncio.__file__))
    stderr = textwrap.dedent(
        f"""\
        some output first
        Traceback (most recent call last):
          File "/work/analysis.py", line 20, in <module>
            asyncio.run(main())
          File "{library}", line 190, in run
            return runner.run(main)
                   ^^^^^^^^^^^^^^^^
          File "/work/analysis.py", line 12, in main
            1 / 0
        ZeroDivisionError: division by zero"""
    ).splitlines()
    failure = from_stderr(stderr, exit_code=1)
    assert failure.key == ("ZeroDivisionError", "division by zero", "analysis.py:12")
    assert library not in failure.traceback
    assert 'File "/work/analysis.py", line 12, in main' in failure.traceback


def test_a_syntax_error_without_a_traceback_header_is_still_read() -> None:
    stderr = [
        '  File "/work/analysis.py", line 5',
        "    async def main(",
        "                  ^",
        "SyntaxError: '(' was never closed",
    ]
    failure = from_stderr(stderr, exit_code=1)
    assert (failure.error_type, failure.message) == ("SyntaxError", "'(' was never closed")
    assert failure.location == "analysis.py:5"


def test_identical_failures_of_many_nodes_are_one_group() -> None:
    same = Failure("ZeroDivisionError", "division by zero", "analysis.py:12", "...")
    other = Failure("KeyError", "'x'", "analysis.py:30", "...")
    nodes = [(f"node-{i}", same) for i in range(2, 101)] + [("node-1", other)]
    groups = group(nodes)
    assert [len(g.nodes) for g in groups] == [99, 1]
    assert groups[0].who() == "node-2 … node-100 (99 nodes)"
    assert groups[1].who() == "node-1"


async def test_a_blocked_loop_is_reported_with_the_blocking_line() -> None:
    watchdog = LoopWatchdog(asyncio.get_running_loop(), threshold=0.2)
    ended = asyncio.Event()
    seen: list[Block] = []

    def listener(block: Block) -> None:
        seen.append(block)
        ended.set()

    token = watchdog.subscribe(listener)
    try:
        await asyncio.sleep(0.15)  # a beat or two first: the loop is running
        _block_for(0.6)
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        watchdog.unsubscribe(token)
    [block] = seen
    assert 0.4 <= block.seconds < 5 and not block.ongoing
    assert block.location.startswith("test_failures.py:")
    assert "(in _block_for)" in block.location
    assert block.describe().startswith("was blocked for ")


def _block_for(seconds: float) -> None:
    time.sleep(seconds)  # stands in for computing on the event loop


def test_the_blocking_site_is_the_innermost_frame_of_the_analysis() -> None:
    assert blocking_site(sys._getframe()).startswith("test_failures.py:")
