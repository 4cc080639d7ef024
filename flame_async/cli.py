"""The ``flame-async`` command: run an analysis locally, serve the platform, scaffold a project."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import anyio

from ._failures import Failure, nodes_label
from ._failures import group as group_failures
from ._live import LiveView
from ._version import __version__
from .errors import FlameError, InvalidArgument
from .local import Faults
from .runner import NodeOutcome, RunResult, run_script

__all__ = ["main"]


def _nodes(value: str) -> int | list[str]:
    if value.isdigit():
        count = int(value)
        if count < 2:
            raise argparse.ArgumentTypeError("an analysis needs at least 2 nodes")
        return count
    names = [n.strip() for n in value.split(",") if n.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError("give a node count or at least 2 comma-separated names")
    return names


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {value}")
    return seconds


def _faults(value: str) -> Faults:
    try:
        return Faults.parse(value)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_FAULTS_HELP = (
    "chaos mode: inject faults, e.g. 'drop=0.1,dup=0.1,delay=0-50ms,5xx=0.05,"
    "broker-restart=5s,seed=42' (see docs/concepts/faults.md); the spec with its seed goes "
    "into run.json, to replay a run"
)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default (where it has one worth showing)."""


class _Parser(argparse.ArgumentParser):
    """A parser whose mistakes are one line: what was wrong, and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"flame-async: error: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flame-async",
        description="Run FLAME analyses on a local multi-node platform.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"flame-async {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run SCRIPT once per node on a local platform", formatter_class=_Help
    )
    run.add_argument("script", type=Path, help="analysis file defining 'async def main()'")
    run.add_argument("--nodes", type=_nodes, default=3, help="node count or names a,b,c")
    run.add_argument("--aggregator", help="id of the aggregator node (default: the first)")
    run.add_argument("--data", type=Path, help="data folder: DATA/<node>/fhir/, DATA/<node>/s3/")
    run.add_argument(
        "--out",
        type=Path,
        default=Path("flame-out"),
        help="output folder: new or empty (or holding an earlier run, with --force)",
    )
    run.add_argument(
        "--force", action="store_true", help="replace the earlier run's outputs in --out"
    )
    run.add_argument(
        "--timeout", type=_seconds, default=600.0, help="seconds before the run is stopped"
    )
    run.add_argument(
        "--mode",
        choices=("inprocess", "processes"),
        default="inprocess",
        help="inprocess: one event loop, breakpoints work; processes: 'python SCRIPT' per node, "
        "exactly what ships in the container",
    )
    run.add_argument(
        "--transport",
        choices=("http", "memory"),
        default="http",
        help="http: real HTTP on 127.0.0.1, the faithful one; memory: the same services called "
        "in one event loop, no sockets (fast with many nodes; --mode inprocess only)",
    )
    run.add_argument("--faults", type=_faults, metavar="SPEC", help=_FAULTS_HELP)
    run.add_argument(
        "--flamesdk-compat",
        action="store_true",
        help="SCRIPT is a flamesdk analysis ('from flamesdk import FlameCoreSDK'): run it "
        "unchanged on flame-async's compatibility layer (also: FLAME_ASYNC_FLAMESDK_COMPAT=1)",
    )
    run.add_argument("--plain", action="store_true", help="plain line output even on a terminal")

    platform = sub.add_parser(
        "platform", help="serve the local platform for your own processes", formatter_class=_Help
    )
    platform.add_argument("--nodes", type=_nodes, default=3, help="node count or names a,b,c")
    platform.add_argument("--aggregator", help="id of the aggregator node (default: the first)")
    platform.add_argument(
        "--data", type=Path, help="data folder: DATA/<node>/fhir/, DATA/<node>/s3/"
    )
    platform.add_argument(
        "--port", type=int, default=0, help="shared Host-routed port (0: any free one)"
    )
    platform.add_argument("--out", type=Path, default=None, help="output folder")
    platform.add_argument("--faults", type=_faults, metavar="SPEC", help=_FAULTS_HELP)

    init = sub.add_parser("init", help="scaffold an analysis project in a new folder NAME")
    init.add_argument("name", type=Path, help="folder to create")

    from .hub._cli import add_parser as add_hub_parser

    add_hub_parser(sub, _Help)
    return parser


_TABLE_ROWS = 20
"""Runs with more nodes show counts and failure groups instead of a row per node."""


def _summary(result: RunResult) -> None:
    print()
    outcomes = result.outcomes
    if len(outcomes) <= _TABLE_ROWS:
        print(f"{'node':<16} {'role':<11} {'status':<9} {'seconds':>8}  result / error")
        for o in outcomes:
            shown = "" if o.result is None else repr(o.result)
            if o.status == "failed":
                shown = o.failure.headline()
            if len(shown) > 70:
                shown = shown[:67] + "..."
            print(f"{o.node_id:<16} {o.role:<11} {o.status:<9} {o.seconds:>8.2f}  {shown}")
    else:
        counts = Counter(o.status for o in outcomes)
        print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    _print_chaos(result.record.get("faults"))
    if result.stop_reason:
        print(f"\nthe run was stopped: {result.stop_reason}")
    for o in outcomes:
        for line in o.blocked:
            print(f"  {line}: run blocking or CPU-heavy work with 'await asyncio.to_thread(...)'")
    waiting = [o for o in outcomes if o.waiting_for and (result.timed_out or o.status == "stopped")]
    for group in _group_waits(waiting):
        print(f"  {group}")
    roots = result.root_causes
    for failures in group_failures((o.node_id, o.failure) for o in roots):
        print(f"\n--- {failures.who()} failed: {failures.failure.headline()}")
        if failures.failure.traceback:
            print(failures.failure.traceback)
    others = [o for o in outcomes if o.status == "failed" and o not in roots]
    # consequences differ only in where each node waited: one line per distinct message
    same = ((o.node_id, Failure(o.error_type, o.error_message, "", "")) for o in others)
    for failures in group_failures(same):
        print(f"\n--- {failures.who()} failed in consequence: {failures.failure.message}")


def _print_chaos(record: dict[str, Any] | None) -> None:
    """What chaos mode injected, and the spec that replays the run."""
    if record is not None:
        injected = ", ".join(f"{kind} {n}" for kind, n in record["injected"].items()) or "nothing"
        print(f"\nchaos mode: {record['spec']}\n  injected: {injected}")


def _group_waits(outcomes: list[NodeOutcome]) -> list[str]:
    by_wait: dict[str, list[str]] = {}
    for o in outcomes:
        by_wait.setdefault("; ".join(o.waiting_for), []).append(o.node_id)
    lines = []
    for what, nodes in by_wait.items():
        who = nodes_label(nodes)
        lines.append(f"{who} {'was' if len(nodes) == 1 else 'were'} waiting for: {what}")
    return lines


def _compat_from_env() -> bool:
    from .compat.flamesdk import COMPAT_ENV

    return os.environ.get(COMPAT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


async def _run(args: argparse.Namespace) -> int:
    count = args.nodes if isinstance(args.nodes, int) else len(args.nodes)

    def started() -> None:  # printed once every check passed
        print(
            f"running {args.script} on {count} nodes ({args.mode}, {args.transport}); outputs "
            f"in {args.out}",
            flush=True,
        )

    view = LiveView(rich=False if args.plain else None)
    try:
        result = await run_script(
            args.script,
            mode=args.mode,
            transport=args.transport,
            nodes=args.nodes,
            aggregator=args.aggregator,
            data=args.data,
            out_dir=args.out,
            timeout=args.timeout,
            observer=view,
            force=args.force,
            on_start=started,
            faults=args.faults,
            flamesdk_compat=args.flamesdk_compat or _compat_from_env(),
        )
    finally:
        view.close()
    _summary(result)
    done = len(result.outcomes) - len(result.failed)
    print(f"\n{'ok' if result.ok else 'FAILED'}: {done} of {len(result.outcomes)} nodes executed")
    finals = result.record.get("final_results") or []
    if finals:
        print("final results: " + ", ".join(str(args.out / f) for f in finals))
    print(f"run summary: {args.out / 'run.json'}; report: {args.out / 'report.html'}")
    return 0 if result.ok else 1


async def _platform(args: argparse.Namespace) -> int:
    from .local import LocalPlatform

    options: dict[str, Any] = {"data_dir": args.data} if args.data else {}
    if args.faults is not None:
        options["faults"] = args.faults
    async with LocalPlatform(
        args.nodes,
        aggregator=args.aggregator,
        shared_port=args.port,
        out_dir=args.out,
        partner_status_grace=100.0,
        **options,
    ) as platform:
        print(f"local FLAME platform for analysis {platform.analysis_id}")
        print(f"shared gateway (Host-routed, usable as HTTP_PROXY): {platform.shared_url}")
        if platform.faults is not None:
            print(f"chaos mode: {platform.faults.faults.spec()}")
        for node in platform.nodes:
            print(f"\n# node {node.node_id} ({node.role}); gateway {node.gateway_url}")
            for key, value in sorted(node.env.items()):
                print(f"export {key}='{value}'")
        print("\nserving; press Ctrl-C to stop", flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
    return 0


class _LineFormat(logging.Formatter):
    """flame-async's own log lines in the live view's layout: ``[source] level text``."""

    _LEVELS: ClassVar[dict[str, str]] = {"WARNING": "warn", "CRITICAL": "crit"}

    def format(self, record: logging.LogRecord) -> str:
        level = self._LEVELS.get(record.levelname, record.levelname.lower())
        source = record.name.removeprefix("flame_async.")
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"[{source}] {level:<5} {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flame-async`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hub"]:
        from .hub._cli import glue_dashed_values

        argv = glue_dashed_values(argv)  # `hub ls --sort -created_at`
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    handler = logging.StreamHandler()
    handler.setFormatter(_LineFormat())
    # a node's analysis log reaches the view through the platform (as [node-1] ...): not twice
    handler.addFilter(lambda record: not record.name.startswith("flame_async.analysis"))
    # analysis loggers have their own level (INFO, for the PO); the live view shows those
    handler.setLevel(level)
    logging.basicConfig(level=level, handlers=[handler])
    try:
        if args.command == "init":
            from ._scaffold import scaffold

            created = scaffold(args.name)
            print(f"created {args.name}/ with: " + ", ".join(sorted(str(p) for p in created)))
            print(
                f"next: cd {args.name} and follow its README (a flame-async wheel into wheels/, "
                "a venv with requirements-dev.txt, then pytest)"
            )
            return 0
        if args.command == "hub":
            from .hub._cli import run as run_hub

            return run_hub(args)  # its own exit codes: 1 for a Hub error, 2 for usage
        if args.command == "run":
            return anyio.run(_run, args)
        return anyio.run(_platform, args)
    except FlameError as exc:
        print(f"flame-async: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "run" and args.out is not None and (args.out / "run.json").is_file():
            print(f"interrupted; what the run saw: {args.out / 'run.json'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
