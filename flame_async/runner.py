"""Run an analysis on the local platform: once per node, in one process and one event loop.

``run_analysis(main, nodes=3)`` starts a :class:`~flame_async.local.LocalPlatform`, runs
``main()`` once per node (each ``FlameSDK()`` inside it picks up its node's configuration) and
returns one :class:`NodeOutcome` per node. A node that raises ends with status ``failed``; its
peers' waits on it end at once with :class:`~flame_async.errors.PeerFailed`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from .config import use_environ
from .errors import InvalidArgument
from .local import LocalPlatform

__all__ = ["NodeOutcome", "RunResult", "load_main", "run_analysis"]

AnalysisMain = Callable[[], Awaitable[Any]]


@dataclasses.dataclass(slots=True)
class NodeOutcome:
    """How one node's run ended.

    Attributes:
        node_id: The node.
        role: ``default`` or ``aggregator``.
        status: ``executed``, ``failed`` or ``stopped`` (cancelled or timed out).
        result: What ``main()`` returned on that node.
        error: The exception it raised, if any.
        traceback: The formatted traceback of ``error``.
        started: When the node started (UTC).
        seconds: How long it ran.
    """

    node_id: str
    role: str
    status: str = "starting"
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""
    started: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the node finished without an error."""
        return self.status == "executed"


@dataclasses.dataclass(slots=True)
class RunResult:
    """The outcome of a whole local run.

    Attributes:
        outcomes: One entry per node, in node order.
        timed_out: True when the run hit its timeout.
        out_dir: Where the platform wrote its outputs (final results, logs), if anywhere.
    """

    outcomes: list[NodeOutcome]
    timed_out: bool = False
    out_dir: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every node executed."""
        return not self.timed_out and all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> list[NodeOutcome]:
        """Nodes that did not execute."""
        return [o for o in self.outcomes if not o.ok]

    def __getitem__(self, node_id: str) -> NodeOutcome:
        for outcome in self.outcomes:
            if outcome.node_id == node_id:
                return outcome
        raise KeyError(node_id)


def load_main(script: Path) -> AnalysisMain:
    """Import ``script`` as a module and return its ``async def main()``.

    Raises:
        InvalidArgument: The file does not exist, or has no ``async def main()``.
    """
    if not script.is_file():
        raise InvalidArgument(f"analysis script {script} does not exist")
    name = f"flame_analysis_{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot import {script} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None or not inspect.iscoroutinefunction(main):
        raise InvalidArgument(
            f"{script} must define 'async def main()' (called once per node); found "
            f"{type(main).__name__ if main is not None else 'nothing'}"
        )
    return main  # type: ignore[no-any-return]


async def run_analysis(
    main: AnalysisMain,
    *,
    nodes: int | Sequence[str] = 3,
    aggregator: str | None = None,
    data: Path | None = None,
    out_dir: Path | None = None,
    timeout: float | None = None,
    **platform_options: Any,
) -> RunResult:
    """Run ``main()`` once per node on a fresh local platform.

    Args:
        main: The analysis entry point; each call creates its own ``FlameSDK()``.
        nodes: Number of nodes, or their ids.
        aggregator: Id of the aggregator (default: the first node).
        data: Data folder (``DATA/<node>/fhir/``, ``DATA/<node>/s3/``).
        out_dir: Folder for the platform's outputs.
        timeout: Seconds after which still-running nodes are cancelled (status ``stopped``).
        **platform_options: Passed to :class:`~flame_async.local.LocalPlatform`.

    Returns:
        One outcome per node; node errors are captured there, not raised.

    Raises:
        ValueError: Bad node ids or aggregator (from the platform).

    Cancellation:
        Cancels every node and stops the platform.
    """
    if data is not None:
        platform_options["data_dir"] = data
    async with LocalPlatform(
        nodes, aggregator=aggregator, out_dir=out_dir, **platform_options
    ) as platform:
        outcomes = [NodeOutcome(n.node_id, n.role) for n in platform.nodes]

        async def run_node(index: int) -> None:
            node = platform.nodes[index]
            outcome = outcomes[index]
            began = time.monotonic()
            outcome.started = datetime.now(UTC)
            try:
                with use_environ(node.env):
                    outcome.result = await main()
                outcome.status = "executed"
            except anyio.get_cancelled_exc_class():
                outcome.status = "stopped"
                raise
            except Exception as exc:  # noqa: BLE001 - a node's failure is its outcome
                outcome.status = "failed"
                outcome.error = exc
                outcome.traceback = "".join(traceback.format_exception(exc))
            finally:
                outcome.seconds = time.monotonic() - began

        timed_out = False
        with anyio.CancelScope() as scope:
            if timeout is not None:
                scope.deadline = anyio.current_time() + timeout
            async with anyio.create_task_group() as tg:
                for index in range(len(platform.nodes)):
                    tg.start_soon(run_node, index)
        timed_out = scope.cancelled_caught
        return RunResult(outcomes, timed_out=timed_out, out_dir=out_dir)
