"""The star example with one node on the real flamesdk 0.6 and two on the compat layer.

flamesdk runs in its own venv (its pinned httpx, fastapi and uvicorn; see conftest.py). It
reaches its node's gateway as on FLAME, at ``http://nginx-{DEPLOYMENT_NAME}``, through the
platform's shared port as ``HTTP_PROXY``; its API serves on a socket the platform bound on
127.0.0.1 and passed down (a ``sitecustomize`` in the venv replaces ``uvicorn.run``'s
``0.0.0.0:8000``). As on FLAME, the platform ends the flamesdk node (its ``StarModel`` ends in
``while True: pass``) once it reports ``executed``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from flame_async.local import LocalPlatform
from flame_async.runner import _COMPAT_MAIN

from .conftest import EXAMPLES, FLAMESDK_SRC, PATTERNS, needs_ecosystem, node_pythonpath, star_data

pytestmark = [pytest.mark.slow, pytest.mark.flamesdk_venv, needs_ecosystem]

SCRIPT = EXAMPLES / "run_star_model.py"


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition the platform's state shows (it offers no event for these)."""
    while not condition():  # noqa: ASYNC110 - the platform keeps node status, not an event
        await anyio.sleep(0.05)


@pytest.mark.parametrize("flamesdk_node", ["node-1", "node-2"], ids=["aggregator", "analyzer"])
async def test_star_with_one_flamesdk_node_gives_the_same_result(
    tmp_path: Path, flamesdk_python: Path, flamesdk_node: str
) -> None:
    pooled = star_data(tmp_path / "data")
    logs = tmp_path / "logs"
    logs.mkdir()
    async with LocalPlatform(
        3, data_dir=tmp_path / "data", out_dir=tmp_path / "out", shared_port=0, po_interval=0.2
    ) as platform:
        compat: dict[str, Process] = {}
        for node in platform.nodes:
            if node.node_id == flamesdk_node:
                continue
            env = {**os.environ, **node.env, "PYTHONPATH": node_pythonpath()}
            with (logs / f"{node.node_id}.txt").open("w") as log:
                compat[node.node_id] = await anyio.open_process(
                    [sys.executable, "-c", _COMPAT_MAIN, str(SCRIPT)],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
        # flamesdk re-sends a ready check only after 30 s: its partners listen first
        for node_id in compat:
            await until(partial(lambda n: platform.status(n) == "executing", node_id))
        node = platform.node(flamesdk_node)
        api = platform.bind_api(flamesdk_node)
        env = {
            **node.env,
            "HTTP_PROXY": platform.shared_url,
            "http_proxy": platform.shared_url,
            "NO_PROXY": "",
            "no_proxy": "",
            "FLAMESDK_API_FD": str(api.fileno()),
            "PYTHONPATH": os.pathsep.join([str(FLAMESDK_SRC), str(PATTERNS)]),
        }
        with (logs / f"{flamesdk_node}.txt").open("w") as log:
            legacy = await anyio.open_process(
                [str(flamesdk_python), str(SCRIPT)],
                env=env,
                stdout=log,
                stderr=log,
                pass_fds=(api.fileno(),),
            )
        api.close()
        try:
            for node_id, process in compat.items():
                code = await process.wait()
                assert code == 0, (logs / f"{node_id}.txt").read_text()[-3000:]
            await until(lambda: platform.status(flamesdk_node) == "executed")
        finally:
            legacy.kill()  # what the PO does to an executed node
            await legacy.wait()
            for process in compat.values():
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        [result] = platform.final_results()
        assert float(result.read_text()) == pooled
        for node_id in compat:
            assert platform.status(node_id) == "executed"
