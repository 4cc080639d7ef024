"""A user's error shown as the user's: their frames, their line, one report for many nodes.

A failing analysis raises somewhere in the user's code, but its traceback runs through asyncio,
anyio and flame-async frames first. :func:`from_exception` (in-process runs) and
:func:`from_stderr` (one process per node) keep the frames of the user's files and the error
line, and find the innermost user frame (``analysis.py:12``). :func:`group` folds identical
failures of many nodes into one entry, so 100 nodes failing the same way read as one.
"""

from __future__ import annotations

import dataclasses
import re
import sysconfig
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = [
    "Failure",
    "FailureGroup",
    "describe",
    "from_exception",
    "from_stderr",
    "group",
    "is_user_file",
    "user_location",
]

_PACKAGE_DIR: Final = str(Path(__file__).resolve().parent)
_LIBRARY_DIRS: Final = tuple(
    {
        str(Path(p).resolve())
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
)
_FRAME_LINE: Final = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')
_ERROR_LINE: Final = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")

_EXTRAS: Final = {
    "numpy": "numpy",
    "pandas": "pandas",
    "pyarrow": "pandas",
    "safetensors": "torch",
    "rich": "cli",
}


def is_user_file(filename: str) -> bool:
    """True for a file of the analysis, not of Python, an installed library or flame-async."""
    if filename.startswith("<"):
        return False
    path = str(Path(filename).resolve()) if filename else ""
    if path.startswith(_PACKAGE_DIR):
        return False
    return not any(path.startswith(d) for d in _LIBRARY_DIRS)


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """How one node failed, as its user needs to see it.

    Attributes:
        error_type: The exception's class name (``ZeroDivisionError``).
        message: Its message (first line).
        location: ``file.py:LINE`` of the innermost frame in the user's code, or ``""``.
        traceback: The traceback with the user's frames only (the error line last).
    """

    error_type: str
    message: str
    location: str
    traceback: str

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two failures the same."""
        return (self.error_type, self.message, self.location)

    def headline(self) -> str:
        """``ZeroDivisionError at analysis.py:12: division by zero``."""
        where = f" at {self.location}" if self.location else ""
        text = f": {self.message}" if self.message else ""
        return f"{self.error_type}{where}{text}"


def user_location(tb: TracebackType | None) -> str:
    """``file.py:LINE`` of the innermost traceback frame in the user's code (or ``""``)."""
    found = ""
    for frame in traceback.extract_tb(tb):
        if is_user_file(frame.filename):
            found = f"{Path(frame.filename).name}:{frame.lineno}"
    return found


def _hint(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in _EXTRAS:
            extra = _EXTRAS[top]
            return f" (install flame-async's '{extra}' extra: flame-async[{extra}])"
        if top == "torch":
            return " (install torch as you usually do, and flame-async's 'torch' extra)"
    return ""


def describe(exc: BaseException) -> str:
    """The exception's first message line, with an install hint for a missing extra."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, SyntaxError):
        text = exc.msg
    return text + _hint(exc)


def from_exception(exc: BaseException) -> Failure:
    """A node's exception as its user needs to see it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if is_user_file(f.filename)]
    location = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        location = f"{Path(exc.filename).name}:{exc.lineno}"
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return Failure(type(exc).__name__, describe(exc), location, "".join(lines).rstrip())


def from_stderr(lines: Sequence[str], *, exit_code: int) -> Failure:
    """A node process's failure from what it printed on stderr (its last traceback)."""
    start = max(
        (i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")),
        default=None,
    )
    body = list(lines[start:]) if start is not None else list(lines)
    kept: list[str] = []
    location = ""
    index = 0
    while index < len(body):
        line = body[index]
        match = _FRAME_LINE.match(line)
        if match is None:
            kept.append(line)
            index += 1
            continue
        # a frame is its "File ..." line and the indented source lines under it
        block = [line]
        index += 1
        while index < len(body) and body[index].startswith("    "):
            block.append(body[index])
            index += 1
        if is_user_file(match["file"]):
            kept.extend(block)
            location = f"{Path(match['file']).name}:{match['line']}"
    error_type, message = f"exit code {exit_code}", ""
    for line in reversed(body):
        match = _ERROR_LINE.match(line.strip())
        if match and not line.startswith(" ") and _looks_like_error(match["type"]):
            error_type = match["type"].rsplit(".", 1)[-1]
            message = (match["message"] or "").strip()
            break
    else:
        message = next((line.strip() for line in reversed(body) if line.strip()), "")
    return Failure(error_type, message, location, "\n".join(kept).rstrip())


def _looks_like_error(name: str) -> bool:
    base = name.rsplit(".", 1)[-1]
    return base.endswith(("Error", "Exception", "Failed", "Timeout", "Interrupt", "Exit")) or (
        base in {"KeyboardInterrupt", "StopIteration", "PeerFailed", "MessageTimeout"}
    )


@dataclasses.dataclass(frozen=True, slots=True)
class FailureGroup:
    """Nodes that failed the same way."""

    nodes: tuple[str, ...]
    failure: Failure

    def who(self) -> str:
        """``node-2``, or ``node-2 … node-100 (99 nodes)``."""
        return nodes_label(self.nodes)


def nodes_label(nodes: Sequence[str]) -> str:
    """Name a set of nodes in one short phrase: ``node-2``, ``node-1 and node-3``, or
    ``node-2 … node-100 (99 nodes)`` (first and last as given, and how many)."""
    if len(nodes) == 1:
        return nodes[0]
    if len(nodes) == 2:
        return f"{nodes[0]} and {nodes[1]}"
    return f"{nodes[0]} … {nodes[-1]} ({len(nodes)} nodes)"


def group(failures: Iterable[tuple[str, Failure]]) -> list[FailureGroup]:
    """Fold identical failures (same type, message and location), first seen first."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    first: dict[tuple[str, str, str], Failure] = {}
    for node, failure in failures:
        groups.setdefault(failure.key, []).append(node)
        first.setdefault(failure.key, failure)
    return [FailureGroup(tuple(nodes), first[key]) for key, nodes in groups.items()]
