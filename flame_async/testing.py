"""Test helpers for analysis authors, and a pytest plugin (registered by entry point).

Fixtures (available in any project that has flame-async installed):

* ``flame_run``: run an analysis on a fresh local platform from a test::

      def test_my_analysis(flame_run, tmp_path):
          result = flame_run(main, nodes=3, data=Path("data"), out_dir=tmp_path)
          assert result.ok, result.failed

  It is a plain function (no async test plugin needed); inside an ``async def`` test use
  ``await flame_run.arun(main, ...)``.
* ``flame_nodes``: :func:`local_nodes`, to drive ``FlameSDK`` instances yourself in an async
  test: ``async with flame_nodes(3) as (platform, flames): ...``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from .local import LocalPlatform
from .runner import AnalysisMain, RunResult, run_analysis
from .sdk import FlameSDK

__all__ = ["FlameRunner", "flame_nodes", "flame_run", "local_nodes"]


class FlameRunner:
    """Runs analyses on fresh local platforms (the ``flame_run`` fixture).

    Args:
        defaults: Options applied to every run (e.g. a short ``timeout``).
    """

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults

    def __call__(
        self,
        main: AnalysisMain,
        *,
        nodes: int | Sequence[str] = 3,
        data: Path | None = None,
        out_dir: Path | None = None,
        **options: Any,
    ) -> RunResult:
        """Run ``main()`` once per node and return the outcomes (from synchronous tests).

        Raises:
            RuntimeError: Called inside a running event loop; use :meth:`arun` there.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "flame_run() was called inside an event loop; in an async test use "
                "'await flame_run.arun(main, ...)'"
            )
        return anyio.run(
            lambda: self.arun(main, nodes=nodes, data=data, out_dir=out_dir, **options)
        )

    async def arun(
        self,
        main: AnalysisMain,
        *,
        nodes: int | Sequence[str] = 3,
        data: Path | None = None,
        out_dir: Path | None = None,
        **options: Any,
    ) -> RunResult:
        """Like calling the runner, from an ``async def`` test."""
        merged = {**self.defaults, **options}
        return await run_analysis(main, nodes=nodes, data=data, out_dir=out_dir, **merged)


@asynccontextmanager
async def local_nodes(
    nodes: int | Sequence[str] = 2, *, start: int | None = None, **platform_options: Any
) -> AsyncIterator[tuple[LocalPlatform, list[FlameSDK]]]:
    """A local platform and an entered ``FlameSDK`` for each of its first ``start`` nodes.

    The other nodes (``platform.nodes[start:]``) are free for the test to play, e.g. with
    ``FlameSDK(platform.nodes[2].config(), transport=platform.transport_for(platform.nodes[2]))``
    in a task. ``transport="memory"`` (a platform option) runs them without sockets.

    Cancellation:
        Closes the SDKs, then the platform.
    """
    platform_options.setdefault("webhook_retry_initial", 0.05)
    async with LocalPlatform(nodes, **platform_options) as platform, AsyncExitStack() as stack:
        count = len(platform.nodes) if start is None else start
        flames = [
            await stack.enter_async_context(
                FlameSDK(node.config(), transport=platform.transport_for(node))
            )
            for node in platform.nodes[:count]
        ]
        yield platform, flames


@pytest.fixture
def flame_run() -> FlameRunner:
    """Run an analysis on a fresh local platform: ``flame_run(main, nodes=3, data=...)``."""
    return FlameRunner(timeout=120.0)


@pytest.fixture
def flame_nodes() -> Any:
    """:func:`local_nodes`: ``async with flame_nodes(3) as (platform, flames): ...``."""
    return local_nodes
