"""`flame-async platform`: nodes in their own processes, also through the shared port as a proxy."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NODE = """
import asyncio, sys
from flame_async import FlameSDK

async def main():
    async with FlameSDK() as flame:
        peer = flame.get_participant_ids()[0]
        if flame.is_aggregator:
            message = await flame.await_message(peer, timeout=30)
            print("got", message.data["hello"], flush=True)
        else:
            data = {"hello": flame.node_id}
            report = await flame.send_message(peer, data, category="hi", timeout=30)
            print("acked" if report.ok else "missing", flush=True)

asyncio.run(main())
"""


def read_exports(process: subprocess.Popen[str]) -> tuple[str, dict[str, dict[str, str]]]:
    assert process.stdout is not None
    envs: dict[str, dict[str, str]] = {}
    shared, node = "", ""
    for line in process.stdout:
        if line.startswith("shared gateway"):
            shared = line.rsplit(" ", 1)[1].strip()
        elif match := re.match(r"# node (\S+)", line):
            node = match.group(1)
            envs[node] = {}
        elif match := re.match(r"export (\w+)='(.*)'", line):
            envs[node][match.group(1)] = match.group(2)
        elif line.startswith("serving"):
            return shared, envs
    raise AssertionError("the platform did not start")


@pytest.mark.parametrize("via_proxy", [False, True], ids=["base-url", "http-proxy"])
def test_processes_run_against_the_served_platform(tmp_path: Path, via_proxy: bool) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE)
    platform = subprocess.Popen(
        [sys.executable, "-m", "flame_async.cli", "platform", "--nodes", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        shared, envs = read_exports(platform)
        procs = []
        for env in envs.values():
            node_env = {**os.environ, **env}
            if via_proxy:  # as an unmodified container: nginx-{DEPLOYMENT_NAME} through a proxy
                for key in ("FLAME_BASE_URL", "FLAME_WEBHOOK_URL"):
                    node_env.pop(key, None)
                node_env.update(HTTP_PROXY=shared, http_proxy=shared, NO_PROXY="", no_proxy="")
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script)],
                    env=node_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outputs = [p.communicate(timeout=60) for p in procs]
        for (_, err), proc in zip(outputs, procs, strict=True):
            assert proc.returncode == 0, err
        assert outputs[0][0].strip() == "got node-2"
        assert outputs[1][0].strip() == "acked"
    finally:
        platform.send_signal(signal.SIGINT)
        code = platform.wait(timeout=30)
        assert platform.stdout is not None
        platform.stdout.close()
    assert code == 0
