"""Run an analysis on the local platform, in one process or one process per node.

``run_analysis(main, nodes=3)`` starts a :class:`~flame_async.local.LocalPlatform`, runs
``main()`` once per node in this event loop (each ``FlameSDK()`` inside it picks up its node's
configuration, so breakpoints work) and returns a :class:`RunResult`. ``run_script(path,
mode="processes")`` runs the file unmodified as ``python SCRIPT`` per node instead, with the
environment the FLAME platform gives a container.

Never hangs: when a node fails, its peers' waits on it end at once with
:class:`~flame_async.errors.PeerFailed`, and whatever still runs a few seconds later is stopped;
a timeout stops the run and records what each node was still waiting for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import ValidationError

from ._runrecord import build_run_record, write_outputs
from ._transport import Request, Transport
from ._wire import HealthAnswer
from .config import FlameConfig, use_environ, use_transport
from .errors import InvalidArgument
from .local import LocalNode, LocalPlatform, NodeUnreachable, TransportKind

__all__ = ["NodeOutcome", "RunResult", "load_main", "run_analysis", "run_script"]

log = logging.getLogger("flame_async.runner")

AnalysisMain = Callable[[], Awaitable[Any]]
Mode = Literal["inprocess", "processes"]
Observer = Callable[[LocalPlatform, "list[NodeOutcome]"], Awaitable[None]]

_ERROR_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|Exception|Failed|Timeout|Interrupt|Exit)\w*): ?(.*)$"
)


@dataclasses.dataclass(slots=True)
class NodeOutcome:
    """How one node's run ended.

    Attributes:
        node_id: The node.
        role: ``default`` or ``aggregator``.
        status: ``starting``/``running`` while it runs; then ``executed``, ``failed`` or
            ``stopped`` (cancelled because the run stopped or timed out).
        result: What ``main()`` returned on that node (in-process mode).
        error: The exception it raised (in-process mode).
        error_type: The exception's type name (both modes).
        error_message: The exception's message (both modes).
        traceback: The formatted traceback (both modes; from stderr for processes).
        started: When the node started (UTC).
        seconds: How long it ran.
        waiting_for: What the node was still waiting for when the run stopped.
        output: Lines the node's process printed (processes mode), ``(t, stream, text)``.
    """

    node_id: str
    role: str
    status: str = "starting"
    result: Any = None
    error: BaseException | None = None
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    started: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    waiting_for: list[str] = dataclasses.field(default_factory=list)
    output: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)
    failed_at: float | None = None

    @property
    def ok(self) -> bool:
        """True when the node finished without an error."""
        return self.status == "executed"

    @property
    def running(self) -> bool:
        """True until the node has ended."""
        return self.status in ("starting", "running")

    @property
    def consequential(self) -> bool:
        """True when the node failed only because a peer it waited on had failed."""
        return self.error_type == "PeerFailed"

    def fail(self, error_type: str, message: str, trace: str, at: float) -> None:
        """Record a failure."""
        self.status = "failed"
        self.error_type, self.error_message, self.traceback = error_type, message, trace
        self.failed_at = at


@dataclasses.dataclass(slots=True)
class RunResult:
    """The outcome of a whole local run.

    Attributes:
        outcomes: One entry per node, in node order.
        timed_out: True when the run hit its timeout.
        stop_reason: Why the run was stopped early, if it was.
        out_dir: Where the outputs were written, if anywhere.
        record: The run summary (the content of ``OUT/run.json``).
    """

    outcomes: list[NodeOutcome]
    timed_out: bool = False
    stop_reason: str | None = None
    out_dir: Path | None = None
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every node executed."""
        return not self.timed_out and all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> list[NodeOutcome]:
        """Nodes that did not execute."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def root_causes(self) -> list[NodeOutcome]:
        """Failed nodes whose failure was their own (not a reaction to a failed peer)."""
        own = [o for o in self.outcomes if o.status == "failed" and not o.consequential]
        return own or [o for o in self.outcomes if o.status == "failed"]

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
    folder = str(script.resolve().parent)
    if folder not in sys.path:  # as 'python SCRIPT' does: sibling modules import
        sys.path.insert(0, folder)
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


class _Run:
    """Supervises the nodes of one run: fail-fast, timeout, observers."""

    def __init__(
        self, platform: LocalPlatform, *, timeout: float | None, fail_fast_grace: float
    ) -> None:
        self.platform = platform
        self.timeout = timeout
        self.grace = fail_fast_grace
        self.outcomes = [NodeOutcome(n.node_id, n.role) for n in platform.nodes]
        self.t0 = time.monotonic()
        self.started = datetime.now(UTC)
        self.timed_out = False
        self.stop_reason: str | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def supervise(
        self, scope: anyio.CancelScope, observer: Observer | None, tick: float = 0.1
    ) -> None:
        """Stop the run on timeout, or a grace period after the first failure."""
        while True:
            if observer is not None:
                await observer(self.platform, self.outcomes)
            if not any(o.running for o in self.outcomes):
                return
            failures = [o.failed_at for o in self.outcomes if o.failed_at is not None]
            if failures and self.now() - min(failures) > self.grace:
                first = min(self.outcomes, key=lambda o: o.failed_at or float("inf"))
                self.stop_reason = f"node {first.node_id} failed"
                await self._record_waits()
                scope.cancel()
                return
            if self.timeout is not None and self.now() > self.timeout:
                self.timed_out = True
                self.stop_reason = f"timeout after {self.timeout:g} s"
                await self._record_waits()
                scope.cancel()
                return
            await anyio.sleep(tick)

    async def _record_waits(self) -> None:
        """Ask each running node's API what it waits for (its /healthz ``waiting_for``)."""
        for node, outcome in zip(self.platform.nodes, self.outcomes, strict=True):
            if not outcome.running:
                continue
            try:
                request = Request("GET", "/healthz", headers={"accept": "application/json"})
                async with self.platform.call_api(node.node_id, request, timeout=2) as answer:
                    health = HealthAnswer.model_validate_json(await answer.read())
                outcome.waiting_for = list(health.waiting_for or ["nothing it reports"])
            except (NodeUnreachable, TimeoutError, OSError, ValidationError):
                outcome.waiting_for = ["(its node API did not answer: still starting?)"]

    def result(self, out_dir: Path | None, mode: str, script: str) -> RunResult:
        for outcome in self.outcomes:
            if outcome.running:
                outcome.status = "stopped"
        record = build_run_record(
            self.platform,
            self.outcomes,
            started=self.started,
            t0=self.t0,
            mode=mode,
            script=script,
            timed_out=self.timed_out,
            stop_reason=self.stop_reason,
            out_dir=out_dir,
        )
        result = RunResult(
            self.outcomes,
            timed_out=self.timed_out,
            stop_reason=self.stop_reason,
            out_dir=out_dir,
            record=record,
        )
        if out_dir is not None:
            write_outputs(record, self.outcomes, self.platform, out_dir)
        return result


async def run_analysis(
    main: AnalysisMain,
    *,
    nodes: int | Sequence[str] = 3,
    aggregator: str | None = None,
    data: Path | None = None,
    out_dir: Path | None = None,
    timeout: float | None = None,
    fail_fast_grace: float = 3.0,
    observer: Observer | None = None,
    script: str = "",
    transport: TransportKind = "http",
    **platform_options: Any,
) -> RunResult:
    """Run ``main()`` once per node, in this event loop, on a fresh local platform.

    Each node's ``FlameSDK()`` gets its configuration and its transport from the runner: over
    HTTP an API socket the platform has bound for it, or the in-memory transport.

    Args:
        main: The analysis entry point; each call creates its own ``FlameSDK()``.
        transport: ``"http"`` (real HTTP on 127.0.0.1, the faithful default) or ``"memory"``
            (no sockets: the same services, called in this event loop).
        nodes: Number of nodes, or their ids.
        aggregator: Id of the aggregator (default: the first node).
        data: Data folder (``DATA/<node>/fhir/``, ``DATA/<node>/s3/``).
        out_dir: Where final results, ``run.json``, ``logs/`` and ``report.html`` go.
        timeout: Seconds after which still-running nodes are stopped.
        fail_fast_grace: Seconds the other nodes get to end after the first failure.
        observer: Called about ten times a second with the platform and the outcomes (the
            CLI's live view).
        script: Name of the analysis, for the run summary.
        **platform_options: Passed to :class:`~flame_async.local.LocalPlatform`.

    Returns:
        The outcomes; node errors are captured there, not raised.

    Raises:
        ValueError: Bad node ids or aggregator (from the platform).

    Cancellation:
        Stops every node and the platform.
    """

    async def start(node: LocalNode, outcome: NodeOutcome, run: _Run) -> None:
        outcome.status = "running"
        platform = run.platform

        def node_transport(config: FlameConfig) -> Transport:
            return platform.transport_for(node, config)

        try:
            with use_environ(node.env), use_transport(node_transport):
                outcome.result = await main()
            outcome.status = "executed"
        except Exception as exc:  # noqa: BLE001 - a node's failure is its outcome
            outcome.error = exc
            outcome.fail(
                type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)), run.now()
            )

    return await _run_nodes(
        start,
        nodes=nodes,
        aggregator=aggregator,
        data=data,
        out_dir=out_dir,
        timeout=timeout,
        fail_fast_grace=fail_fast_grace,
        observer=observer,
        mode="inprocess",
        script=script or getattr(main, "__module__", ""),
        platform_options={**platform_options, "transport": transport},
    )


async def run_script(
    script: Path,
    *,
    mode: Mode = "inprocess",
    transport: TransportKind = "http",
    nodes: int | Sequence[str] = 3,
    aggregator: str | None = None,
    data: Path | None = None,
    out_dir: Path | None = None,
    timeout: float | None = None,
    fail_fast_grace: float = 3.0,
    observer: Observer | None = None,
    **platform_options: Any,
) -> RunResult:
    """Run an analysis file: its ``main()`` in this loop, or ``python SCRIPT`` per node.

    In ``processes`` mode each node is ``python SCRIPT`` (the file calls
    ``asyncio.run(main())`` itself) with the variables the FLAME platform gives a container
    plus the local overrides (``FLAME_BASE_URL`` and the API port): what passes here is what
    ships.

    With ``transport="memory"`` (in-process only) the nodes reach the platform by calls in this
    event loop instead of HTTP: much faster for many nodes, the same services underneath.

    Raises:
        InvalidArgument: The script does not exist (or, in-process, has no ``async def main()``),
            or the in-memory transport was asked for processes.

    Cancellation:
        Stops every node (terminating processes) and the platform.
    """
    if transport == "memory" and mode != "inprocess":
        raise InvalidArgument(
            "the memory transport runs every node in this process; use --mode inprocess "
            "(or --transport http for processes)"
        )
    if mode == "inprocess":
        return await run_analysis(
            load_main(script),
            transport=transport,
            nodes=nodes,
            aggregator=aggregator,
            data=data,
            out_dir=out_dir,
            timeout=timeout,
            fail_fast_grace=fail_fast_grace,
            observer=observer,
            script=str(script),
            **platform_options,
        )
    if not await anyio.Path(script).is_file():
        raise InvalidArgument(f"analysis script {script} does not exist")

    async def start(node: LocalNode, outcome: NodeOutcome, run: _Run) -> None:
        await _run_process(script, node, outcome, run)

    return await _run_nodes(
        start,
        nodes=nodes,
        aggregator=aggregator,
        data=data,
        out_dir=out_dir,
        timeout=timeout,
        fail_fast_grace=fail_fast_grace,
        observer=observer,
        mode="processes",
        script=str(script),
        platform_options=platform_options,
    )


async def _run_nodes(
    start: Callable[[LocalNode, NodeOutcome, _Run], Awaitable[None]],
    *,
    nodes: int | Sequence[str],
    aggregator: str | None,
    data: Path | None,
    out_dir: Path | None,
    timeout: float | None,
    fail_fast_grace: float,
    observer: Observer | None,
    mode: str,
    script: str,
    platform_options: dict[str, Any],
) -> RunResult:
    if data is not None:
        platform_options["data_dir"] = data
    platform_options.setdefault("po_interval", 1.0)
    async with LocalPlatform(
        nodes, aggregator=aggregator, out_dir=out_dir, **platform_options
    ) as platform:
        run = _Run(platform, timeout=timeout, fail_fast_grace=fail_fast_grace)

        async def one(index: int) -> None:
            node, outcome = platform.nodes[index], run.outcomes[index]
            began = time.monotonic()
            outcome.started = datetime.now(UTC)
            try:
                await start(node, outcome, run)
            finally:
                outcome.seconds = time.monotonic() - began
                if outcome.running:
                    outcome.status = "stopped"

        with anyio.CancelScope() as nodes_scope:
            async with anyio.create_task_group() as tg:
                for index in range(len(platform.nodes)):
                    tg.start_soon(one, index)
                tg.start_soon(run.supervise, nodes_scope, observer)
        if observer is not None:
            await observer(platform, run.outcomes)
        return run.result(out_dir, mode, script)


async def _run_process(script: Path, node: LocalNode, outcome: NodeOutcome, run: _Run) -> None:
    env = {**os.environ, **node.env, "PYTHONUNBUFFERED": "1"}
    outcome.status = "running"
    process = await anyio.open_process(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stderr_lines: list[str] = []

    async def pump(stream: Any, name: str) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                outcome.output.append((run.now(), name, text))
                if name == "stderr":
                    stderr_lines.append(text)
        if buffer:
            outcome.output.append((run.now(), name, buffer.decode("utf-8", "replace")))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, process.stdout, "stdout")
            tg.start_soon(pump, process.stderr, "stderr")
            code = await process.wait()
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            process.terminate()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
        raise
    await process.aclose()
    if code == 0:
        outcome.status = "executed"
        return
    trace = "\n".join(_last_traceback(stderr_lines))
    error_type, message = f"exit code {code}", "\n".join(stderr_lines[-3:])
    for line in reversed(trace.splitlines()):
        if match := _ERROR_LINE.match(line.strip()):
            error_type, message = match.group(1).rsplit(".", 1)[-1], match.group(2)
            break
    outcome.fail(error_type, message, trace or "\n".join(stderr_lines[-40:]), run.now())


def _last_traceback(lines: list[str]) -> list[str]:
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback (most recent call last)"):
            return lines[index:]
    return []
