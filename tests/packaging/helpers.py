"""Reading the commands that the docs and the scaffold's README show, and running them."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPO = "https://github.com/PrivateAIM/flame-async"

_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def section(markdown: str, heading: str) -> str:
    """The text under the ``##`` heading that starts with ``heading``, up to the next one."""
    match = re.search(
        rf"^## {re.escape(heading)}[^\n]*\n(?P<body>.*?)(?=^## |\Z)", markdown, re.M | re.S
    )
    assert match, f"no section {heading!r}"
    return match["body"]


def fences(markdown: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of ``language`` (the first word of the info string)."""
    return [
        m["body"] for m in _FENCE.finditer(markdown) if (m["info"].split() or [""])[0] == language
    ]


def lines(block: str) -> list[str]:
    """The non-empty lines of a block."""
    return [line.strip() for line in block.splitlines() if line.strip()]


def console_commands(markdown: str) -> list[str]:
    """The ``$ `` commands of the ``console`` blocks, in order."""
    return [
        line.removeprefix("$ ")
        for block in fences(markdown, "console")
        for line in lines(block)
        if line.startswith("$ ")
    ]


def shell(
    command: str, *, cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``command`` as bash runs it, stopping at the first failure."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
