"""``flame-async hub ...``: the Hub client on the command line.

Configuration comes from flags or, where a flag is absent, the ``FLAME_HUB_*`` variables that
:meth:`HubClient.from_env` reads. Tables are drawn with rich (the ``cli`` extra); ``--json``
prints exactly the models' JSON instead, for scripts. Exit codes: 0 ok, 1 the Hub (or the
connection to it) failed, 2 a usage error (bad flags, missing configuration, a filter the Hub
would misread); every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import pydantic

from ..errors import ConfigError, FlameError, InvalidArgument, MissingExtra
from ._client import HubClient
from ._query import F, FilterValue, Scalar
from ._resource import ReadResource
from ._storage import UploadFile

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["add_parser", "glue_dashed_values", "run"]

EXIT_OK: Final = 0
EXIT_HUB: Final = 1
EXIT_USAGE: Final = 2

_P = TypeVar("_P", bound=argparse.ArgumentParser)
_Group = Callable[[HubClient], ReadResource[Any]]

RESOURCES: Final[Mapping[str, tuple[_Group, tuple[str, ...]]]] = {
    "nodes": (lambda h: h.core.nodes, ("id", "name", "type", "online", "realm_id", "created_at")),
    "projects": (lambda h: h.core.projects, ("id", "name", "analyses", "nodes", "created_at")),
    "project-nodes": (
        lambda h: h.core.project_nodes,
        ("id", "project_id", "node_id", "approval_status", "created_at"),
    ),
    "analyses": (
        lambda h: h.core.analyses,
        (
            "id",
            "name",
            "project_id",
            "configuration_locked",
            "build_status",
            "execution_status",
            "created_at",
        ),
    ),
    "analysis-nodes": (
        lambda h: h.core.analysis_nodes,
        ("id", "analysis_id", "node_id", "approval_status", "execution_status", "created_at"),
    ),
    "analysis-node-logs": (
        lambda h: h.core.analysis_node_logs,
        ("created_at", "node_id", "level", "status", "message"),
    ),
    "analysis-logs": (
        lambda h: h.core.analysis_logs,
        ("created_at", "analysis_id", "component", "event", "status", "status_message"),
    ),
    "analysis-buckets": (
        lambda h: h.core.analysis_buckets,
        ("id", "analysis_id", "type", "external_id", "created_at"),
    ),
    "analysis-bucket-files": (
        lambda h: h.core.analysis_bucket_files,
        ("id", "name", "root", "bucket_id", "external_id", "created_at"),
    ),
    "registries": (lambda h: h.core.registries, ("id", "name", "host", "created_at")),
    "registry-projects": (
        lambda h: h.core.registry_projects,
        ("id", "name", "type", "registry_id", "created_at"),
    ),
    "master-images": (
        lambda h: h.core.master_images,
        ("id", "name", "virtual_path", "command", "created_at"),
    ),
    "master-image-groups": (
        lambda h: h.core.master_image_groups,
        ("id", "name", "virtual_path", "created_at"),
    ),
    "buckets": (lambda h: h.storage.buckets, ("id", "name", "region", "created_at")),
    "bucket-files": (
        lambda h: h.storage.bucket_files,
        ("id", "name", "path", "size", "bucket_id", "created_at"),
    ),
    "realms": (lambda h: h.auth.realms, ("id", "name", "built_in", "created_at")),
    "users": (lambda h: h.auth.users, ("id", "name", "email", "realm_id", "created_at")),
    "robots": (lambda h: h.auth.robots, ("id", "name", "realm_id", "created_at")),
    "clients": (lambda h: h.auth.clients, ("id", "name", "realm_id", "created_at")),
    "roles": (lambda h: h.auth.roles, ("id", "name", "realm_id", "created_at")),
    "permissions": (lambda h: h.auth.permissions, ("id", "name", "realm_id", "created_at")),
}
"""The resources ``ls`` and ``get`` know, with the columns of their table."""

_TERMINAL: Final = frozenset({"executed", "finished", "failed", "stopped"})
"""Execution statuses after which ``analysis status --watch`` stops (both Hub lines)."""

_FILTER: Final = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_.]*)(?P<op>!~=|~=|!=|>=|<=|=|>|<)(?P<v>.*)"
)
_NUMBER: Final = re.compile(r"[+-]?\d+(\.\d+)?")


class UsageError(FlameError, ValueError):
    """A command-line argument is not usable (exit code 2)."""


# -- arguments ------------------------------------------------------------------------------

_DASHED_VALUES: Final = ("--sort",)
"""Options whose value may start with ``-`` (``--sort -created_at``)."""


def glue_dashed_values(argv: Sequence[str]) -> list[str]:
    """``--sort -created_at`` as ``--sort=-created_at``: argparse would take the value for an
    unknown option otherwise."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in _DASHED_VALUES:
            value = next(args, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def _resource(value: str) -> str:
    name = value.strip().lower().replace("_", "-")
    if name not in RESOURCES:
        raise argparse.ArgumentTypeError(
            f"unknown resource {value!r}; one of: {', '.join(sorted(RESOURCES))}"
        )
    return name


def _scalar(text: str) -> Scalar:
    """A filter operand as the Hub would read it anyway (numbers, booleans, null)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if _NUMBER.fullmatch(text.strip()):
        return float(text) if "." in text else int(text)
    return text


def parse_filter(text: str) -> tuple[str, FilterValue]:
    """``KEY=V`` (``a,b`` is IN, ``null`` IS NULL), ``KEY!=V`` (``a,b`` NOT IN),
    ``KEY~=PREFIX``, ``KEY!~=PREFIX``, ``KEY<V``, ``KEY<=V``, ``KEY>V``, ``KEY>=V``.

    Raises:
        argparse.ArgumentTypeError: ``text`` is none of these.
    """
    match = _FILTER.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"a filter is KEY=VALUE (or !=, ~= prefix, !~=, <, <=, >, >=), got {text!r}"
        )
    key, op, raw = match["key"], match["op"], match["v"]
    values = [_scalar(v) for v in raw.split(",")] if "," in raw else None
    value = _scalar(raw)
    operators: dict[str, Callable[[], FilterValue]] = {
        "=": lambda: F.in_(*values) if values else value,
        "!=": lambda: F.not_in(*values) if values else F.ne(value),
        "~=": lambda: F.like(raw),
        "!~=": lambda: F.not_like(raw),
        "<": lambda: F.lt(value),
        "<=": lambda: F.le(value),
        ">": lambda: F.gt(value),
        ">=": lambda: F.ge(value),
    }
    return key, operators[op]()


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one comma-separated value")
    return items


def add_parser(
    sub: argparse._SubParsersAction[_P],
    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter,
) -> _P:
    """Add the ``hub`` command with its subcommands to ``sub``."""
    hub = sub.add_parser(
        "hub",
        help="list, read and start analyses on a FLAME Hub",
        description="Talk to a FLAME Hub. Flags override the FLAME_HUB_* variables: "
        "FLAME_HUB_AUTH_URL, FLAME_HUB_CORE_URL, FLAME_HUB_STORAGE_URL, and FLAME_HUB_USER/"
        "FLAME_HUB_PASSWORD or FLAME_HUB_ROBOT_ID/FLAME_HUB_ROBOT_SECRET. Exit codes: 0 ok, "
        "1 Hub error, 2 usage error.",
        formatter_class=formatter_class,
    )
    hub.add_argument("--auth-url", help="authup's URL (FLAME_HUB_AUTH_URL)")
    hub.add_argument("--core-url", help="Hub core's URL (FLAME_HUB_CORE_URL)")
    hub.add_argument("--storage-url", help="Hub storage's URL (FLAME_HUB_STORAGE_URL)")
    hub.add_argument("--user", help="log in as this user (FLAME_HUB_USER)")
    hub.add_argument("--password", help="the user's password (FLAME_HUB_PASSWORD)")
    hub.add_argument("--robot-id", help="log in as this robot (FLAME_HUB_ROBOT_ID)")
    hub.add_argument("--robot-secret", help="the robot's secret (FLAME_HUB_ROBOT_SECRET)")
    hub.add_argument(
        "--wire-case",
        choices=("auto", "snake", "camel"),
        help="the Hub's key casing (FLAME_HUB_WIRE_CASE; default: auto, asked once)",
    )
    hub.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    verbs = hub.add_subparsers(dest="hub_command", required=True)

    ls = verbs.add_parser(
        "ls", help="list the records of RESOURCE", formatter_class=formatter_class
    )
    ls.add_argument("resource", type=_resource, help=", ".join(sorted(RESOURCES)))
    ls.add_argument(
        "--filter",
        dest="filters",
        type=parse_filter,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="KEY=V (a,b: any of; null: unset), KEY!=V, KEY~=PREFIX, KEY!~=PREFIX, KEY<V, "
        "KEY<=V, KEY>V, KEY>=V; repeat for AND",
    )
    ls.add_argument("--sort", help="e.g. -created_at (descending) or name,-updated_at")
    ls.add_argument("--include", help="relations to fill, e.g. project")
    ls.add_argument("--limit", type=int, default=50, help="records of one page (at most 50)")
    ls.add_argument("--offset", type=int, default=0, help="records to skip")
    ls.add_argument("--all", action="store_true", help="every page, not only the first")
    ls.add_argument("--json", action="store_true", help="print the records as JSON")

    get = verbs.add_parser("get", help="read one record", formatter_class=formatter_class)
    get.add_argument("resource", type=_resource, help=", ".join(sorted(RESOURCES)))
    get.add_argument("id", help="the record's id")
    get.add_argument("--include", help="relations to fill, e.g. project")
    get.add_argument("--json", action="store_true", help="print the record as JSON")

    analysis = verbs.add_parser("analysis", help="start and follow analyses")
    actions = analysis.add_subparsers(dest="analysis_command", required=True)
    start = actions.add_parser(
        "start",
        help="create an analysis with its nodes and code (and lock its configuration)",
        formatter_class=formatter_class,
    )
    start.add_argument("project", help="the project's id or name")
    start.add_argument(
        "--nodes", type=_csv, required=True, help="node ids or names, comma-separated"
    )
    start.add_argument("--code", type=Path, required=True, help="folder with the analysis code")
    start.add_argument(
        "--entrypoint", required=True, help="the file (relative to --code) that runs"
    )
    start.add_argument("--name", help="the analysis' name")
    start.add_argument("--master-image", help="the master image's id or virtual path")
    start.add_argument("--no-lock", action="store_true", help="leave the configuration unlocked")
    start.add_argument("--json", action="store_true", help="print the analysis as JSON")

    status = actions.add_parser(
        "status", help="the analysis and its nodes' status", formatter_class=formatter_class
    )
    status.add_argument("id", help="the analysis' id")
    status.add_argument("--watch", action="store_true", help="follow until the execution has ended")
    status.add_argument("--interval", type=float, default=5.0, help="seconds between reads")
    status.add_argument("--json", action="store_true", help="print the analysis as JSON")

    logs = actions.add_parser(
        "logs", help="the log lines the nodes reported", formatter_class=formatter_class
    )
    logs.add_argument("id", help="the analysis' id")
    logs.add_argument("--node", help="only this node (id or name)")
    logs.add_argument("--json", action="store_true", help="print the log lines as JSON")

    download = verbs.add_parser(
        "download",
        help="download and unpack the analysis' result bucket",
        formatter_class=formatter_class,
    )
    download.add_argument("analysis", help="the analysis' id")
    download.add_argument("--out", type=Path, required=True, help="folder to unpack into")
    return hub


# -- running --------------------------------------------------------------------------------


def _environ(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the flags given on the command line written over it."""
    env = dict(environ)
    flags = {
        "FLAME_HUB_AUTH_URL": args.auth_url,
        "FLAME_HUB_CORE_URL": args.core_url,
        "FLAME_HUB_STORAGE_URL": args.storage_url,
        "FLAME_HUB_WIRE_CASE": args.wire_case,
    }
    if args.user is not None or args.password is not None:
        # credentials from the flags replace every kind from the environment
        for name in ("ROBOT_ID", "ROBOT_SECRET", "CLIENT_ID", "CLIENT_SECRET", "TOKEN"):
            env.pop(f"FLAME_HUB_{name}", None)
        flags |= {"FLAME_HUB_USER": args.user, "FLAME_HUB_PASSWORD": args.password}
    elif args.robot_id is not None or args.robot_secret is not None:
        for name in ("USER", "PASSWORD", "CLIENT_ID", "CLIENT_SECRET", "TOKEN"):
            env.pop(f"FLAME_HUB_{name}", None)
        flags |= {"FLAME_HUB_ROBOT_ID": args.robot_id, "FLAME_HUB_ROBOT_SECRET": args.robot_secret}
    env |= {k: v for k, v in flags.items() if v is not None}
    return env


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run a parsed ``hub`` command; returns the exit code (errors are printed on one line)."""
    try:
        client = HubClient.from_env(
            _environ(args, os.environ if environ is None else environ), timeout=args.timeout
        )
        return anyio.run(_dispatch, client, args)
    except (ConfigError, InvalidArgument, UsageError, MissingExtra) as exc:
        _fail(exc)
        return EXIT_USAGE
    except FlameError as exc:
        _fail(exc)
        return EXIT_HUB
    except KeyboardInterrupt:
        return 130


def _fail(exc: BaseException) -> None:
    text = (
        " ".join(str(exc).split()) if not isinstance(exc, ConfigError) else "; ".join(exc.problems)
    )
    sys.stderr.write(f"flame-async hub: error: {text}\n")


async def _dispatch(client: HubClient, args: argparse.Namespace) -> int:
    async with client as hub:
        command = args.hub_command
        if command == "ls":
            return await _ls(hub, args)
        if command == "get":
            return await _get(hub, args)
        if command == "download":
            files = await hub.download_results(_uuid(args.analysis, "the analysis id"), args.out)
            _print(f"{len(files)} file(s) in {args.out}")
            for path in files:
                _print(f"  {path}")
            return EXIT_OK
        sub = args.analysis_command
        if sub == "start":
            return await _start(hub, args)
        if sub == "status":
            return await _status(hub, args)
        return await _logs(hub, args)


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _json_of(models: Sequence[pydantic.BaseModel] | pydantic.BaseModel) -> str:
    if isinstance(models, pydantic.BaseModel):
        return models.model_dump_json(indent=2)
    return "[" + ",\n".join(m.model_dump_json(indent=2) for m in models) + "]"


def _console() -> Console:
    try:
        from rich.console import Console
    except ImportError as exc:
        raise MissingExtra("rich", "cli") from exc
    # piped output is not cut to 80 columns (ids would fold over three lines)
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 240)


def _new_table(title: str, *, show_header: bool = True) -> Table:
    try:
        from rich.table import Table
    except ImportError as exc:
        raise MissingExtra("rich", "cli") from exc
    return Table(title=title, show_header=show_header)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, pydantic.BaseModel):
        return str(getattr(value, "name", None) or getattr(value, "id", ""))
    return str(value)


def _table(title: str, columns: Sequence[str], rows: Sequence[pydantic.BaseModel]) -> None:
    table = _new_table(title)
    for column in columns:
        ident = column == "id" or column.endswith("_id")
        table.add_column(column, overflow="fold", no_wrap=ident, min_width=36 if ident else None)
    for row in rows:
        table.add_row(*(_cell(getattr(row, c, None)) for c in columns))
    _console().print(table)


async def _ls(hub: HubClient, args: argparse.Namespace) -> int:
    group, columns = RESOURCES[args.resource]
    resource = group(hub)
    query: dict[str, Any] = {
        "filter": dict(args.filters) or None,
        "sort": args.sort.split(",") if args.sort else None,
        "include": args.include.split(",") if args.include else None,
    }
    if args.all:
        items = await resource.find_all(**query)
        total = len(items)
    else:
        page = await resource.find(**query, limit=args.limit, offset=args.offset)
        items, total = page.items, page.total
    if args.json:
        _print(_json_of(items))
        return EXIT_OK
    shown = f"{len(items)} of {total}" if len(items) < total else f"{total}"
    _table(f"{args.resource} ({shown})", columns, items)
    if len(items) < total:
        sys.stderr.write(f"{total - len(items)} more: use --all, or --offset\n")
    return EXIT_OK


async def _get(hub: HubClient, args: argparse.Namespace) -> int:
    group, _ = RESOURCES[args.resource]
    include = args.include.split(",") if args.include else None
    record = await group(hub).get(_uuid(args.id, "id"), include=include)
    if args.json:
        _print(_json_of(record))
        return EXIT_OK
    fields = record.model_dump(mode="json")
    table = _new_table(f"{args.resource} {record.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in fields.items():
        table.add_row(key, "" if value is None else str(value))
    _console().print(table)
    return EXIT_OK


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise UsageError(f"{what} must be a UUID, got {value!r}") from None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _by_name(resource: ReadResource[Any], value: str, what: str) -> Any:
    """The record whose id or (unique) name is ``value``."""
    if _is_uuid(value):
        return await resource.get(value)
    found = await resource.find(filter={"name": value}, limit=2)
    if not found.items:
        raise UsageError(f"no {what} is called {value!r}")
    if found.total > 1:
        raise UsageError(f"{found.total} {what}s are called {value!r}; give the id")
    return found.items[0]


def _code_files(folder: Path, entrypoint: str) -> list[UploadFile]:
    if not folder.is_dir():
        raise UsageError(f"--code {folder} is not a folder")
    files = [
        UploadFile(path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(folder).parts)
    ]
    if not files:
        raise UsageError(f"--code {folder} holds no files")
    if entrypoint not in {f.name for f in files}:
        raise UsageError(f"--entrypoint {entrypoint!r} is not a file in {folder}")
    return files


async def _start(hub: HubClient, args: argparse.Namespace) -> int:
    files = _code_files(args.code, args.entrypoint)
    project = await _by_name(hub.core.projects, args.project, "project")
    nodes = [await _by_name(hub.core.nodes, n, "node") for n in args.nodes]
    fields: dict[str, Any] = {}
    if args.master_image:
        if _is_uuid(args.master_image):
            fields["master_image_id"] = args.master_image
        else:
            images = await hub.core.master_images.find(
                filter={"virtual_path": args.master_image}, limit=1
            )
            if not images.items:
                raise UsageError(f"no master image at {args.master_image!r}")
            fields["master_image_id"] = images.items[0].id
    analysis = await hub.start_analysis(
        project,
        nodes,
        files,
        entrypoint=args.entrypoint,
        name=args.name,
        lock=not args.no_lock,
        **fields,
    )
    if args.json:
        _print(_json_of(analysis))
    else:
        locked = "locked" if analysis.configuration_locked else "not locked"
        _print(
            f"analysis {analysis.id} created on {len(nodes)} node(s) with {len(files)} file(s); "
            f"configuration {locked}"
        )
    return EXIT_OK


async def _status(hub: HubClient, args: argparse.Namespace) -> int:
    aid = _uuid(args.id, "the analysis id")
    last: tuple[Any, ...] | None = None
    while True:
        analysis = await hub.core.analyses.get(aid)
        nodes = await hub.core.analysis_nodes.find_all(
            filter={"analysis_id": aid}, include=["node"]
        )
        state = (
            analysis.configuration_locked,
            analysis.build_status,
            analysis.execution_status,
            tuple((n.node_id, n.approval_status, n.execution_status) for n in nodes),
        )
        if args.json:
            if state != last:
                _print(_json_of(analysis))
        elif state != last:
            _table(
                f"analysis {analysis.id} ({analysis.name or 'unnamed'}): configuration "
                f"{'locked' if analysis.configuration_locked else 'unlocked'}, build "
                f"{analysis.build_status or '-'}, execution {analysis.execution_status or '-'} "
                f"at {time.strftime('%H:%M:%S')}",
                ("node", "node_id", "approval_status", "execution_status", "execution_progress"),
                nodes,
            )
        last = state
        if not args.watch or analysis.execution_status in _TERMINAL:
            return EXIT_OK
        await anyio.sleep(args.interval)


async def _logs(hub: HubClient, args: argparse.Namespace) -> int:
    aid = _uuid(args.id, "the analysis id")
    if args.node:
        node_ids = [(await _by_name(hub.core.nodes, args.node, "node")).id]
    else:  # the 0.8 line answers 400 unless both the analysis and the node are filtered on
        members = await hub.core.analysis_nodes.find_all(filter={"analysis_id": aid})
        node_ids = [m.node_id for m in members if m.node_id is not None]
    lines: list[Any] = []
    for node_id in node_ids:
        query = {"analysis_id": aid, "node_id": node_id}
        lines += await hub.core.analysis_node_logs.find_all(filter=query)
    lines.sort(key=lambda line: (line.created_at is None, line.created_at))
    if args.json:
        _print(_json_of(lines))
        return EXIT_OK
    for line in lines:
        when = _cell(line.created_at) or "-"
        text = " ".join(str(p) for p in (line.level, line.status, line.message) if p)
        _print(f"{when} [{line.node_id}] {text}")
    if not lines:
        sys.stderr.write(f"no log lines for analysis {aid}\n")
    return EXIT_OK
