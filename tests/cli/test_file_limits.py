"""`flame-async run` under a low limit on open files: it runs, or refuses in one line; it never
floods the output with "Too many open files"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE"),
]

LIMIT = 256

TINY = """\
import asyncio
from flame_async import FlameSDK

async def main():
    async with FlameSDK() as flame:
        return flame.node_id

if __name__ == "__main__":
    asyncio.run(main())
"""

# the limit is set, soft and hard, in the process that then becomes the command
UNDER_LIMIT = (
    "import os, resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT}))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'flame_async', *sys.argv[1:]])\n"
)


def run_limited(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", UNDER_LIMIT, *args],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def assert_ran_or_refused(done: subprocess.CompletedProcess[str]) -> str:
    """Either every node executed, or one line said the limit and the need; never a flood."""
    output = done.stdout + done.stderr
    assert "Too many open files" not in output, output[-3000:]
    if done.returncode == 0:
        assert "ok: 100 of 100 nodes executed" in done.stdout, output[-3000:]
        return "ran"
    assert done.returncode == 2, output[-3000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("flame-async: error: 100 in-process nodes"), line
    assert f"this process may open {LIMIT} (ulimit -n)" in line, line
    assert "file descriptors" in line and "ulimit -n " in line, line
    assert "running" not in done.stdout  # nothing was started
    return "refused"


@pytest.mark.timeout(240)
def test_a_hundred_http_nodes_under_256_files_run_or_are_refused_in_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "analysis.py").write_text(TINY)
    done = run_limited(
        "run", "analysis.py", "--nodes", "100", "--plain", "--out", "out", cwd=tmp_path
    )
    assert assert_ran_or_refused(done) == "refused"  # 100 HTTP nodes need ~1,400: refused
    line = done.stderr.strip()
    assert "over HTTP need about" in line and "or use --transport memory." in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(240)
def test_a_hundred_memory_nodes_under_256_files_run(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(TINY)
    done = run_limited(
        "run",
        "analysis.py",
        "--nodes",
        "100",
        "--transport",
        "memory",
        "--plain",
        "--out",
        "out",
        cwd=tmp_path,
    )
    assert assert_ran_or_refused(done) == "ran"
