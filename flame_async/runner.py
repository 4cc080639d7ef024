"""Run an analysis on the local platform, in one process or one process per node.

``run_analysis(main, nodes=3)`` starts a :class:`~flame_async.local.LocalPlatform`, runs
``main()`` once per node in this event loop (each ``FlameSDK()`` inside it picks up its node's
configuration, so breakpoints work) and returns a :class:`RunResult`. ``run_script(path,
mode="processes")`` runs the file unmodified as ``python SCRIPT`` per node instead, with the
environment the FLAME platform gives a container (forked from a fork server on Linux, see
``_forkserver``).

Never hangs: when a node fails, its peers' waits on it end at once with
:class:`~flame_async.errors.PeerFailed`, and whatever still runs a few seconds later is stopped;
a timeout stops the run and records what each node was still waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import importlib.util
import inspect
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import orjson
from anyio.from_thread import BlockingPortal
from pydantic import ValidationError

from ._failures import Failure, describe, from_exception, from_stderr, user_location
from ._forkserver import Launcher, open_launcher
from ._runrecord import build_run_record, write_outputs
from ._transport import Request, Transport
from ._watchdog import Block, LoopWatchdog
from ._wire import HealthAnswer
from .config import FlameConfig, use_environ, use_transport
from .errors import InvalidArgument
from .local import LocalNode, LocalPlatform, NodeUnreachable, TransportKind

__all__ = [
    "NodeOutcome",
    "RunResult",
    "ScriptError",
    "check_out_dir",
    "load_main",
    "run_analysis",
    "run_script",
    "tuned_collector",
]

log = logging.getLogger("flame_async.runner")

AnalysisMain = Callable[[], Awaitable[Any]]
Mode = Literal["inprocess", "processes"]
Observer = Callable[[LocalPlatform, "list[NodeOutcome]"], Awaitable[None]]

_RUN_ARTEFACTS: Final = ("final", "logs", "run.json", "report.html")
"""What a run writes into its output folder (and ``--force`` removes)."""

_FDS_BASE: Final = 64
"""File descriptors a run needs besides its nodes' (the event loop, the platform's shared
port, session and files, the outputs, a fork server): 9 to 12 measured, with a margin."""

_FDS_PER_NODE: Final[Mapping[tuple[Mode, TransportKind], int]] = {
    # the node's API socket, its connections to its gateway and the gateway's ends of them,
    # the PO's and the broker's connections to its API: at most 14 per node measured
    # (/proc/self/fd, 10 to 100 nodes of a star analysis, platform included; 100 nodes ran
    # at a limit of 1,450, not at 1,300)
    ("inprocess", "http"): 20,
    ("inprocess", "memory"): 1,  # no socket, no file: 0 measured
    # the runner's side of a node process: its gateway's sockets and the node's two pipes
    # (7.4 measured; 100 node processes ran at 800, not at 700)
    ("processes", "http"): 10,
}
"""File descriptors this process needs per node, by mode and transport (with a margin)."""

_GC_THRESHOLD: Final = (50_000, 20, 100)
"""The collector's thresholds while in-process nodes run (Python's default: 700, 10, 10).
Nodes allocate many short-lived objects per message; a young generation this large is
collected about 70 times less often, and the start-up heap is frozen out of it."""


class ScriptError(InvalidArgument):
    """The analysis script cannot start: it does not exist, does not compile or import, or
    has no ``async def main()``. The message names the file and line."""


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
        traceback: The traceback, with the analysis' own frames only (both modes; from stderr
            for processes).
        location: ``file.py:LINE`` of the innermost frame of the analysis' code that failed.
        full_traceback: The whole traceback, every frame (what ``logs/`` keep).
        started: When the node started (UTC).
        seconds: How long it ran.
        waiting_for: What the node was still waiting for when the run stopped.
        blocked: When the node's event loop was blocked by code that did not await
            (``was blocked for 19.8 s at analysis.py:7 (in main)``), one line each.
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
    location: str = ""
    full_traceback: str = ""
    started: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    waiting_for: list[str] = dataclasses.field(default_factory=list)
    blocked: list[str] = dataclasses.field(default_factory=list)
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

    def fail(self, failure: Failure, at: float, *, full_traceback: str = "") -> None:
        """Record a failure."""
        self.status = "failed"
        self.error_type, self.error_message = failure.error_type, failure.message
        self.traceback, self.location = failure.traceback, failure.location
        self.full_traceback = full_traceback or failure.traceback
        self.failed_at = at

    @property
    def failure(self) -> Failure:
        """The failure as its user needs to see it."""
        return Failure(self.error_type, self.error_message, self.location, self.traceback)


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


def _check_file(script: Path) -> str:
    """The script's source, once it is known to exist and compile.

    Raises:
        ScriptError: No such file, not readable, or a syntax error (file and line named).
    """
    if not script.is_file():
        raise ScriptError(f"analysis script {script} does not exist (or is not a file)")
    try:
        source = script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"cannot read the analysis script {script}: {exc}") from exc
    try:
        compile(source, str(script), "exec")
    except SyntaxError as exc:
        raise ScriptError(f"{script.name}:{exc.lineno}: {type(exc).__name__}: {exc.msg}") from None
    return source


def load_main(script: Path) -> AnalysisMain:
    """Import ``script`` as a module and return its ``async def main()``.

    Raises:
        ScriptError: The file does not exist, does not compile, fails while it is imported
            (the message names the line: ``analysis.py:3: ModuleNotFoundError: ...``), or has
            no ``async def main()``.
    """
    _check_file(script)
    folder = str(script.resolve().parent)
    if folder not in sys.path:  # as 'python SCRIPT' does: sibling modules import
        sys.path.insert(0, folder)
    name = f"flame_analysis_{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ScriptError(f"cannot import {script} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's import error is the message
        sys.modules.pop(name, None)
        where = user_location(exc.__traceback__) or script.name
        raise ScriptError(f"{where}: {type(exc).__name__}: {describe(exc)}") from None
    return _main_of(module, script)


def _main_of(module: Any, script: Path) -> AnalysisMain:
    main = getattr(module, "main", None)
    if main is None or not inspect.iscoroutinefunction(main):
        raise ScriptError(
            f"{script.name} must define 'async def main()' (called once per node); found "
            f"{'a ' + type(main).__name__ if main is not None else 'no main'}"
        )
    return main  # type: ignore[no-any-return]


_IMPORT_CHECK: Final = """
import importlib.util, inspect, json, sys, traceback
path = sys.argv[1]
sys.path.insert(0, sys.argv[2])
spec = importlib.util.spec_from_file_location("flame_analysis_check", path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module  # as an import does: dataclasses and others look it up
try:
    spec.loader.exec_module(module)
except Exception as exc:
    print(json.dumps({"exception": True}))
    raise
main = getattr(module, "main", None)
print(json.dumps({"main": type(main).__name__ if main is not None else None,
                  "async": inspect.iscoroutinefunction(main)}))
"""


async def _check_import_in_subprocess(script: Path, launcher: Launcher) -> None:
    """Import ``script`` in a child process (what ``python SCRIPT`` would do, minus running
    ``main``) and check its ``main``.

    Raises:
        ScriptError: It fails to import or has no ``async def main()``.
        OSError: The child process could not be started.
    """
    folder = (await anyio.Path(script).resolve()).parent
    process = await launcher.start(
        ["-c", _IMPORT_CHECK, str(script), str(folder)], env=dict(os.environ)
    )
    output: dict[str, bytes] = {}

    async def read(stream: Any, name: str) -> None:
        output[name] = b"".join([chunk async for chunk in stream])

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, process.stdout, "stdout")
            tg.start_soon(read, process.stderr, "stderr")
            code = await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()
    lines = output["stdout"].decode("utf-8", "replace").splitlines()
    answer = orjson.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if code != 0 or answer.get("exception"):
        failure = from_stderr(
            output["stderr"].decode("utf-8", "replace").splitlines(), exit_code=code
        )
        where = failure.location or script.name
        raise ScriptError(f"{where}: {failure.error_type}: {failure.message}")
    if not answer.get("async"):
        found = f"a {answer['main']}" if answer.get("main") else "no main"
        raise ScriptError(
            f"{script.name} must define 'async def main()' (called once per node); found {found}"
        )


def check_out_dir(out: Path, *, force: bool = False) -> None:
    """Check that ``out`` can take a run's outputs, without writing anything.

    It must be a folder that is new, empty, or (with ``force``) holds an earlier run, which
    the run then replaces.

    Raises:
        InvalidArgument: ``out`` is a file, lies under a file, cannot be written, or is not
            empty (what to do instead is part of the message).
    """
    if out.exists() and not out.is_dir():
        raise InvalidArgument(f"--out {out} is a file; give a folder (a new or an empty one)")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidArgument(f"--out {out} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgument(f"--out {out}: {existing} is not writable; give another folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "run.json").is_file():
            raise InvalidArgument(
                f"--out {out} is not empty and holds no earlier run; give a new or empty folder"
            )
        if not force:
            raise InvalidArgument(
                f"--out {out} holds an earlier run; pass --force to replace it, or give a new "
                "folder"
            )


def _clear_earlier_run(out: Path) -> None:
    for name in _RUN_ARTEFACTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _check_data_dir(data: Path, node_ids: Sequence[str]) -> None:
    if not data.is_dir():
        raise InvalidArgument(f"--data {data} does not exist or is not a folder")
    if not any((data / node).is_dir() for node in node_ids):
        found = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise InvalidArgument(
            f"--data {data} has no folder for any node: expected {data}/{node_ids[0]}/ ... "
            f"(with fhir/ or s3/ inside); found {', '.join(found) or 'no folders'}"
        )


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
        self.watchdog = LoopWatchdog.for_loop()

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

    def record_blocks(self) -> None:
        """Note, per node, when its event loop was blocked (the watchdog saw it in-process;
        nodes in their own processes report it to the platform)."""
        watchdog = self.watchdog
        for outcome in self.outcomes:
            node = outcome.node_id
            found = [b for b in watchdog.blocks if b.node == node and b.started >= self.t0]
            if (current := watchdog.current()) is not None and current.node == node:
                found.append(current)
            lines = [f"{node}'s event loop {b.describe()}" for b in found]
            report = self.platform.blocked(node)
            if report is not None and not found:  # in-process, the watchdog here knows best
                block = Block(0.0, report.seconds, report.location, "", node, report.ongoing)
                lines.append(f"{node}'s event loop {block.describe()}")
            outcome.blocked = lines

    async def _record_waits(self) -> None:
        """Ask each running node's API what it waits for (its /healthz ``waiting_for``); a node
        whose loop is blocked right now cannot answer, and is not asked."""
        self.record_blocks()
        report = self.platform.blocked

        async def ask(node: LocalNode, outcome: NodeOutcome) -> None:
            stuck = (r := report(node.node_id)) is not None and r.ongoing
            if stuck:
                outcome.waiting_for = ["(nothing: its event loop is blocked)"]
                return
            try:
                request = Request("GET", "/healthz", headers={"accept": "application/json"})
                async with self.platform.call_api(node.node_id, request, timeout=2) as answer:
                    health = HealthAnswer.model_validate_json(await answer.read())
                outcome.waiting_for = list(health.waiting_for or ["nothing it reports"])
            except (NodeUnreachable, TimeoutError, OSError, ValidationError):
                outcome.waiting_for = [
                    "(its node API did not answer: its event loop is blocked)"
                    if outcome.blocked
                    else "(its node API did not answer: still starting?)"
                ]

        async with anyio.create_task_group() as tg:  # all at once: a stop is not delayed
            for node, outcome in zip(self.platform.nodes, self.outcomes, strict=True):
                if outcome.running:
                    tg.start_soon(ask, node, outcome)

    def result(self, out_dir: Path | None, mode: str, script: str) -> RunResult:
        self.record_blocks()
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
    force: bool = False,
    on_start: Callable[[], None] | None = None,
    **platform_options: Any,
) -> RunResult:
    """Run ``main()`` once per node, in this event loop, on a fresh local platform.

    Each node's ``FlameSDK()`` gets its configuration and its transport from the runner: over
    HTTP an API socket the platform has bound for it, or the in-memory transport. Everything
    that can be checked is checked before anything runs.

    What the run does to this process: on POSIX it raises the soft limit on open files
    (``RLIMIT_NOFILE``) to the hard limit and leaves it there; while the nodes run, the
    garbage collector's start-up heap is frozen (``gc.freeze()``) and its thresholds raised,
    both restored when the last overlapping run ends (a disabled collector is left alone).

    Args:
        main: The analysis entry point; each call creates its own ``FlameSDK()``.
        nodes: Number of nodes, or their ids.
        aggregator: Id of the aggregator (default: the first node).
        data: Data folder (``DATA/<node>/fhir/``, ``DATA/<node>/s3/``).
        out_dir: Where final results, ``run.json``, ``logs/`` and ``report.html`` go: a new or
            empty folder, or one with an earlier run when ``force`` is set.
        timeout: Seconds after which still-running nodes are stopped (> 0).
        fail_fast_grace: Seconds the other nodes get to end after the first failure.
        observer: Called about ten times a second with the platform and the outcomes (the
            CLI's live view).
        script: Name of the analysis, for the run summary.
        transport: ``"http"`` (real HTTP on 127.0.0.1, the faithful default) or ``"memory"``
            (no sockets: the same services, called in this event loop).
        force: Replace an earlier run's outputs in ``out_dir``.
        on_start: Called once every check passed, just before the platform starts.
        **platform_options: Passed to :class:`~flame_async.local.LocalPlatform`.

    Returns:
        The outcomes; node errors are captured there, not raised.

    Raises:
        InvalidArgument: Bad node ids, aggregator, data folder, output folder or timeout, or
            the nodes need more file descriptors than this process may open (the message
            names the limit and the need); all before anything runs.

    Cancellation:
        Stops every node and the platform; with ``out_dir``, what the run saw so far is
        still written there (``run.json`` with ``stop_reason`` ``"interrupted"``, logs, report).
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
            full = "".join(traceback.format_exception(exc))
            outcome.fail(from_exception(exc), run.now(), full_traceback=full)

    platform = _platform(
        nodes=nodes,
        aggregator=aggregator,
        data=data,
        out_dir=out_dir,
        timeout=timeout,
        options={**platform_options, "transport": transport},
    )
    _check_file_limit(len(platform.node_ids), mode="inprocess", transport=transport)
    _prepare(platform, data=data, out_dir=out_dir, force=force)
    if on_start is not None:
        on_start()
    return await _run_nodes(
        start,
        platform,
        out_dir=out_dir,
        timeout=timeout,
        fail_fast_grace=fail_fast_grace,
        observer=observer,
        mode="inprocess",
        script=script or getattr(main, "__module__", ""),
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
    force: bool = False,
    on_start: Callable[[], None] | None = None,
    flamesdk_compat: bool = False,
    **platform_options: Any,
) -> RunResult:
    """Run an analysis file: its ``main()`` in this loop, or ``python SCRIPT`` per node.

    With ``flamesdk_compat`` the file is a flamesdk analysis (``from flamesdk import
    FlameCoreSDK``, no ``main()``): every node runs it as ``__main__`` with ``import flamesdk``
    resolving to :mod:`flame_async.compat.flamesdk`, in processes mode as its own process, in
    in-process mode in a thread of its own (with its own module); a node whose analysis
    finished is ended as the PO would (see :class:`~flame_async.compat.flamesdk.FlameCoreSDK`).

    In ``processes`` mode each node is ``python SCRIPT`` (the file calls
    ``asyncio.run(main())`` itself) with the variables the FLAME platform gives a container
    plus the local overrides (``FLAME_BASE_URL`` and the API port): what passes here is what
    ships. On Linux the nodes are forked from a fork server that has imported flame-async
    once, and behave as ``python SCRIPT`` (``FLAME_ASYNC_FORKSERVER=0`` starts new
    interpreters instead).

    With ``transport="memory"`` (in-process only) the nodes reach the platform by calls in this
    event loop instead of HTTP: much faster for many nodes, the same services underneath.

    Before anything runs, the script must compile and import and define ``async def main()``
    (in ``processes`` mode it is imported once in a child process to check), and the options
    must make sense (see :func:`run_analysis`).

    Raises:
        ScriptError: The script does not exist, compile or import, or has no
            ``async def main()`` (the message names the file and line).
        InvalidArgument: A bad option, the in-memory transport asked for processes, or the
            nodes need more file descriptors than this process may open.
        OSError: A node process could not be started.

    Cancellation:
        Stops every node (terminating processes) and the platform; with ``out_dir``, what the
        run saw so far is still written there (``run.json`` with ``stop_reason``
        ``"interrupted"``, logs, report).
    """
    if transport == "memory" and mode != "inprocess":
        raise InvalidArgument(
            "the memory transport runs every node in this process; use --mode inprocess "
            "(or --transport http for processes)"
        )
    if flamesdk_compat and transport != "http":
        raise InvalidArgument(
            "flamesdk analyses run over HTTP (each node's event loop is its own); drop "
            "--transport memory"
        )
    if flamesdk_compat and mode == "inprocess":
        return await _run_compat_threads(
            script,
            nodes=nodes,
            aggregator=aggregator,
            data=data,
            out_dir=out_dir,
            timeout=timeout,
            fail_fast_grace=fail_fast_grace,
            observer=observer,
            force=force,
            on_start=on_start,
            platform_options=platform_options,
        )
    if mode == "inprocess":
        # the cheap checks of the options first, then the import (which runs the user's code)
        checked = _platform(
            nodes=nodes, aggregator=aggregator, data=data, out_dir=out_dir, timeout=timeout
        )
        _check_file_limit(len(checked.node_ids), mode="inprocess", transport=transport)
        return await run_analysis(
            load_main(script),
            nodes=nodes,
            aggregator=aggregator,
            data=data,
            out_dir=out_dir,
            transport=transport,
            timeout=timeout,
            fail_fast_grace=fail_fast_grace,
            observer=observer,
            script=str(script),
            force=force,
            on_start=on_start,
            **platform_options,
        )
    platform = _platform(
        nodes=nodes,
        aggregator=aggregator,
        data=data,
        out_dir=out_dir,
        timeout=timeout,
        options=platform_options,
    )
    _check_file_limit(len(platform.node_ids), mode="processes", transport="http")
    _check_file(script)
    _prepare(platform, data=data, out_dir=out_dir, force=False)  # before the slow check
    async with open_launcher() as launcher:
        if not flamesdk_compat:  # a flamesdk analysis runs when imported: not checked so
            await _check_import_in_subprocess(script, launcher)
        _prepare(platform, data=data, out_dir=out_dir, force=force)
        if on_start is not None:
            on_start()

        async def start(node: LocalNode, outcome: NodeOutcome, run: _Run) -> None:
            await _run_process(script, node, outcome, run, launcher, compat=flamesdk_compat)

        return await _run_nodes(
            start,
            platform,
            out_dir=out_dir,
            timeout=timeout,
            fail_fast_grace=fail_fast_grace,
            observer=observer,
            mode="processes",
            script=str(script),
        )


def _raise_file_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit (POSIX only; it is
    left raised). The soft limit now, or None where there is none or it is unknown."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    unlimited = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == unlimited:
        return None
    # macOS refuses a soft limit above OPEN_MAX (10240), an unlimited hard limit included
    for target in (hard, 10240 if hard == unlimited else min(hard, 10240)):
        if target != unlimited and target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return None if target == unlimited else target
    return soft


def _open_files() -> int:
    """How many file descriptors this process has open (0 where that cannot be listed)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(len(os.listdir(folder)) - 1, 0)  # less the listing's own
        except OSError:
            continue
    return 0


def _check_file_limit(nodes: int, *, mode: Mode, transport: TransportKind) -> None:
    """Raise the limit on open files as far as allowed, and refuse a run that needs more.

    Raises:
        InvalidArgument: The run needs more file descriptors than this process may open
            (the message names both, and what to do).
    """
    limit = _raise_file_limit()
    if limit is None:
        return
    in_use = _open_files()
    need = _FDS_BASE + _FDS_PER_NODE[(mode, transport)] * nodes
    if in_use + need <= limit:
        return
    about = -(-need // 100) * 100  # rounded up to a hundred
    suggest = max(1024, 1 << (in_use + need - 1).bit_length())
    if mode == "processes":
        what = f"{nodes} node processes need about {about:,} file descriptors in the runner"
    elif transport == "http":
        what = f"{nodes} in-process nodes over HTTP need about {about:,} file descriptors"
    else:
        what = f"{nodes} in-process nodes in memory need about {about:,} file descriptors"
    has = f" and has {in_use:,} open" if in_use > _FDS_BASE // 2 else ""
    instead = " or use --transport memory" if (mode, transport) == ("inprocess", "http") else ""
    raise InvalidArgument(
        f"{what}; this process may open {limit:,} (ulimit -n){has}. Raise the limit "
        f"(ulimit -n {suggest}){instead}."
    )


class _Collector:
    """Tunes the cyclic garbage collector while in-process runs last: the first run to begin
    tunes it, the last to end restores it (runs may be embedded in a program, and overlap).

    Tuning freezes what exists when the nodes start (imports, the platform, the analysis
    module: it lives as long as the run, so no collection needs to scan it again) and raises
    the thresholds to :data:`_GC_THRESHOLD`. A program that disabled the collector is left
    alone; one that froze objects itself keeps them frozen.
    """

    def __init__(self) -> None:
        self._runs = 0
        self._saved: tuple[int, int, int] | None = None
        self._froze = False

    @contextlib.contextmanager
    def tuned(self) -> Iterator[None]:
        """Tune the collector for as long as the block runs."""
        if self._runs == 0 and gc.isenabled():
            self._saved = gc.get_threshold()
            self._froze = gc.get_freeze_count() == 0
            if self._froze:
                gc.collect()
                gc.freeze()
            gc.set_threshold(*_GC_THRESHOLD)
        self._runs += 1
        try:
            yield
        finally:
            self._runs -= 1
            if self._runs == 0 and self._saved is not None:
                gc.set_threshold(*self._saved)
                if self._froze:
                    gc.unfreeze()
                self._saved, self._froze = None, False


_COLLECTOR: Final = _Collector()


def tuned_collector() -> contextlib.AbstractContextManager[None]:
    """The garbage-collector tuning of an in-process run, for programs that start their own
    nodes (``LocalPlatform`` and ``FlameSDK``): enter it once the nodes are up. It freezes
    the heap that exists then (``gc.freeze()``) and raises the collector's thresholds, and
    restores both on exit; nested or overlapping uses tune once. A collector that is off
    stays off.
    """
    return _COLLECTOR.tuned()


def _platform(
    *,
    nodes: int | Sequence[str],
    aggregator: str | None,
    data: Path | None,
    out_dir: Path | None,
    timeout: float | None,
    options: dict[str, Any] | None = None,
) -> LocalPlatform:
    """The run's platform, not started yet (its constructor checks ids and options)."""
    if timeout is not None and not timeout > 0:
        raise InvalidArgument(f"the timeout must be a positive number of seconds, got {timeout}")
    options = {"po_interval": 1.0, **(options or {})}
    if data is not None:
        options["data_dir"] = data
    return LocalPlatform(nodes, aggregator=aggregator, out_dir=out_dir, **options)


def _prepare(
    platform: LocalPlatform, *, data: Path | None, out_dir: Path | None, force: bool
) -> None:
    """Check the data and output folders; with ``force``, clear an earlier run's outputs.

    Raises:
        InvalidArgument: A folder cannot be used (the message says why and what to do).
    """
    if data is not None:
        _check_data_dir(data, platform.node_ids)
    if out_dir is not None:
        check_out_dir(out_dir, force=force)
        if force and (out_dir / "run.json").is_file():
            _clear_earlier_run(out_dir)


async def _run_nodes(
    start: Callable[[LocalNode, NodeOutcome, _Run], Awaitable[None]],
    platform: LocalPlatform,
    *,
    out_dir: Path | None,
    timeout: float | None,
    fail_fast_grace: float,
    observer: Observer | None,
    mode: str,
    script: str,
) -> RunResult:
    async with platform:
        run = _Run(platform, timeout=timeout, fail_fast_grace=fail_fast_grace)
        watching = run.watchdog.subscribe(lambda block: None)  # watch from the first line

        async def one(index: int) -> None:
            node, outcome = platform.nodes[index], run.outcomes[index]
            task = asyncio.current_task()
            if task is not None:  # a blocked loop is blamed on the node whose task blocked it
                run.watchdog.task_labels[task] = node.node_id
            began = time.monotonic()
            outcome.started = datetime.now(UTC)
            try:
                await start(node, outcome, run)
            finally:
                outcome.seconds = time.monotonic() - began
                if outcome.running:
                    outcome.status = "stopped"

        # in-process, the start-up heap is frozen and collections are rarer while nodes run
        tuned = _COLLECTOR.tuned() if mode == "inprocess" else contextlib.nullcontext()
        try:
            with tuned, anyio.CancelScope() as nodes_scope:
                async with anyio.create_task_group() as tg:
                    for index in range(len(platform.nodes)):
                        tg.start_soon(one, index)
                    tg.start_soon(run.supervise, nodes_scope, observer)
            if observer is not None:
                await observer(platform, run.outcomes)
            return run.result(out_dir, mode, script)
        except anyio.get_cancelled_exc_class():
            # interrupted (Ctrl-C, or the caller cancelled): keep what the run saw so far
            if out_dir is not None:
                run.stop_reason = run.stop_reason or "interrupted"
                run.record_blocks()
                try:
                    run.result(out_dir, mode, script)
                except OSError as exc:  # never hide the interruption behind this
                    log.warning("could not write the outputs of the interrupted run: %s", exc)
            raise
        finally:
            run.watchdog.unsubscribe(watching)


_COMPAT_MAIN: Final = (
    "import sys; from flame_async.compat.flamesdk._launch import run_as_main; "
    "run_as_main(sys.argv[1])"
)
"""A node of a flamesdk analysis: ``python SCRIPT`` with ``import flamesdk`` on the compat
layer."""


async def _run_process(
    script: Path,
    node: LocalNode,
    outcome: NodeOutcome,
    run: _Run,
    launcher: Launcher,
    *,
    compat: bool = False,
) -> None:
    env = {**os.environ, **node.env, "PYTHONUNBUFFERED": "1"}
    outcome.status = "running"
    args = ["-c", _COMPAT_MAIN, str(script)] if compat else [str(script)]
    process = await launcher.start(args, env=env)
    stderr_lines: list[str] = []

    async def pump(stream: Any, name: str) -> None:
        buffer = b""
        in_traceback = False
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                if name == "stderr":
                    stderr_lines.append(text)
                    # a traceback is shown once, in the run's summary, not line by line here
                    in_traceback = in_traceback or text.startswith("Traceback (most recent")
                    if in_traceback:
                        continue
                outcome.output.append((run.now(), name, text))
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
    failure = from_stderr(stderr_lines, exit_code=code)
    outcome.fail(failure, run.now(), full_traceback="\n".join(stderr_lines[-200:]))


async def _run_compat_threads(
    script: Path,
    *,
    nodes: int | Sequence[str],
    aggregator: str | None,
    data: Path | None,
    out_dir: Path | None,
    timeout: float | None,
    fail_fast_grace: float,
    observer: Observer | None,
    force: bool,
    on_start: Callable[[], None] | None,
    platform_options: dict[str, Any],
) -> RunResult:
    """A flamesdk analysis in one process: each node runs the file in a thread of its own.

    flamesdk code blocks (its calls wait, ``StarModel`` ends in ``while True: pass``), so it
    cannot run in this event loop; each node's thread gets its node's environment and API
    socket (context variables copied into it) and its ``FlameCoreSDK`` runs its own loop in a
    portal thread. A thread still running when the run stops is ended with
    :class:`~flame_async.compat.flamesdk.AnalysisEnded`, and its node leaves the analysis.
    """
    from .compat.flamesdk._core import use_host_portal
    from .compat.flamesdk._launch import run_in_thread

    source = _check_file(script)
    platform = _platform(
        nodes=nodes,
        aggregator=aggregator,
        data=data,
        out_dir=out_dir,
        timeout=timeout,
        options=platform_options,
    )
    _check_file_limit(len(platform.node_ids), mode="inprocess", transport="http")
    _prepare(platform, data=data, out_dir=out_dir, force=force)
    folder = str((await anyio.Path(script).resolve()).parent)
    if folder not in sys.path:  # as 'python SCRIPT' does: sibling modules import
        sys.path.insert(0, folder)
    if on_start is not None:
        on_start()

    async def start(node: LocalNode, outcome: NodeOutcome, run: _Run) -> None:
        outcome.status = "running"
        transport = run.platform.transport_for(node)
        with (
            use_environ(node.env),
            use_transport(lambda config: transport),
            use_host_portal(portal),  # the node's FlameSDK runs in this loop, as native ones
        ):
            context = contextvars.copy_context()
        error = await _compat_thread(
            lambda: context.run(run_in_thread, script, source), f"flamesdk-{node.node_id}"
        )
        if error is None:
            outcome.status = "executed"
            return
        outcome.error = error
        full = "".join(traceback.format_exception(error))
        outcome.fail(from_exception(error), run.now(), full_traceback=full)

    async with BlockingPortal() as portal:
        try:
            result = await _run_nodes(
                start,
                platform,
                out_dir=out_dir,
                timeout=timeout,
                fail_fast_grace=fail_fast_grace,
                observer=observer,
                mode="inprocess",
                script=str(script),
            )
        finally:
            await portal.stop(cancel_remaining=True)  # a node that did not leave in time
    return result


async def _compat_thread(target: Callable[[], None], name: str) -> BaseException | None:
    """Run ``target`` (a node's flamesdk analysis) in a thread of its own; what it raised.

    Cancellation:
        The thread's analysis code is ended with
        :class:`~flame_async.compat.flamesdk.AnalysisEnded` and its node leaves the analysis
        before this returns (the node's own shutdown steps bound the wait).
    """
    from .compat.flamesdk._colocate import unpin_inherited
    from .compat.flamesdk._core import close_thread_instances
    from .compat.flamesdk._ending import AnalysisEnded, raise_in_thread

    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    lock = threading.Lock()
    state: dict[str, Any] = {"running": True, "error": None}

    def run() -> None:
        try:
            unpin_inherited()  # started while another node's call had the loop on one CPU
            target()
        except BaseException as exc:  # noqa: BLE001 - the node's failure is its outcome
            state["error"] = exc
        finally:
            with lock:
                state["running"] = False
            with contextlib.suppress(RuntimeError):  # the run's loop is gone
                anyio.from_thread.run_sync(done.set, token=token)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        await done.wait()
    except anyio.get_cancelled_exc_class():
        ident = thread.ident
        with lock:  # the run stopped: end the analysis code, leave the analysis
            if state["running"] and ident is not None:
                raise_in_thread(ident, AnalysisEnded)
        if ident is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close_thread_instances, ident)
        raise
    error: BaseException | None = state["error"]
    return error
