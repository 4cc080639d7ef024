"""Losing the platform: a node whose gateway stops answering ends its waits with
``ServiceUnavailable`` after ``unreachable_grace`` seconds, instead of running to their own
timeouts, and works again once the gateway answers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from flame_async import ServiceUnavailable
from flame_async._transport import Request, Response, Transport
from flame_async.local import LocalNode

from .conftest import running
from .faults import WrappedTransport, unreachable


class Cuttable(WrappedTransport):
    """A node's transport whose line to the gateway can be cut (as a dead platform cuts it);
    its own API keeps serving."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.cut = False

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Response]:
        if self.cut:
            raise unreachable(request, "connection refused")
        async with self.inner.open(request) as response:
            yield response


async def test_waits_and_sends_end_once_the_gateway_is_gone_and_work_when_it_is_back(
    transport: str,
) -> None:
    lines: dict[str, Cuttable] = {}

    def cuttable(node: LocalNode, inner: Transport) -> Transport:
        lines[node.node_id] = Cuttable(inner)
        return lines[node.node_id]

    sdk = {"unreachable_grace": 1.0}
    async with running(2, transport=transport, sdk=sdk, wrap=cuttable) as (_, (a, b)):
        health = b._require()._gateway.health
        back = asyncio.Event()
        health.listen(lambda error: back.set() if error is None else None)

        async def wait_for_a() -> BaseException | None:
            try:
                await b.await_message("node-1", timeout=60)
            except BaseException as exc:  # the outcome is what is checked
                return exc
            return None

        with anyio.fail_after(20):  # a guard, far above the 1 s grace; no speed is asserted
            waiting = asyncio.create_task(wait_for_a())
            await asyncio.sleep(0)  # the task runs first: its wait is registered
            assert b.waiting_for() == ["a message from node-1"]
            lines["node-2"].cut = True
            ended = await waiting
            assert isinstance(ended, ServiceUnavailable), ended
            assert "has not answered for 1 s" in str(ended)
            with pytest.raises(ServiceUnavailable):
                await b.send_message("node-1", {"n": 1}, category="data")
            with pytest.raises(ServiceUnavailable):
                await b.wait_until_finished(timeout=60)

            lines["node-2"].cut = False
            await back.wait()  # the next probe finds the gateway
            await a.send_message("node-2", {"n": 2}, category="data")
            message = await b.await_message("node-1", timeout=30)
            report = await b.send_message("node-1", {"n": 3}, category="data")
    assert message.data == {"n": 2}
    assert report.ok


NODE = """
import asyncio, sys, time
from flame_async import FlameSDK

async def main():
    async with FlameSDK() as flame:
        peer = flame.get_participant_ids()[0]
        print("waiting", flush=True)
        started = time.monotonic()
        try:
            await flame.await_message(peer, timeout=120)
        except Exception as exc:
            print(f"ended {type(exc).__name__} after {time.monotonic() - started:.1f} s: {exc}",
                  flush=True)
            raise

asyncio.run(main())
"""


def _read_exports(process: subprocess.Popen[str]) -> dict[str, dict[str, str]]:
    assert process.stdout is not None
    envs: dict[str, dict[str, str]] = {}
    node = ""
    for line in process.stdout:
        if match := re.match(r"# node (\S+)", line):
            node = match.group(1)
            envs[node] = {}
        elif match := re.match(r"export (\w+)='(.*)'", line):
            envs[node][match.group(1)] = match.group(2)
        elif line.startswith("serving"):
            return envs
    raise AssertionError("the platform did not start")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill_9_of_the_platform_ends_every_nodes_wait_within_15_s(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE)
    platform = subprocess.Popen(
        [sys.executable, "-m", "flame_async", "platform", "--nodes", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    nodes: list[subprocess.Popen[str]] = []
    try:
        nodes.extend(
            subprocess.Popen(
                [sys.executable, str(script)],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for env in _read_exports(platform).values()
        )
        for node in nodes:
            assert node.stdout is not None
            assert node.stdout.readline().strip() == "waiting"
        platform.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        for node in nodes:
            assert node.stdout is not None
            line = node.stdout.readline()
            elapsed = time.monotonic() - killed
            assert line.startswith("ended ServiceUnavailable"), line
            assert "the node's gateway has not answered for 10 s" in line, line
            assert elapsed < 15, f"the wait ended {elapsed:.1f} s after the kill: {line}"
    finally:
        for process in (*nodes, platform):
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)  # reaps it and closes its pipes
