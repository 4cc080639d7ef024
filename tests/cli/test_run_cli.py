"""`flame-async run` end to end: both modes, fail-fast, timeouts, outputs; `flame-async init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flame_async.runner import run_script

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# every example is an analysis but the Hub client's, which runs against a Hub
# (tests/hub/test_hub_example.py)
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("hub_"))
ANALYSES = Path(__file__).parent / "analyses"
CLI = [sys.executable, "-m", "flame_async.cli"]


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


@pytest.mark.parametrize(
    ("mode", "transport"),
    [("inprocess", "http"), ("processes", "http"), ("inprocess", "memory")],
    ids=["inprocess", "processes", "inprocess-memory"],
)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_runs_under_flame_async_run_in_both_modes(
    example: Path, mode: str, transport: str, tmp_path: Path
) -> None:
    done = cli(
        "run",
        str(example),
        "--nodes",
        "3",
        "--mode",
        mode,
        "--transport",
        transport,
        "--data",
        str(ROOT / "examples" / "data"),
        "--out",
        str(tmp_path),
        "--plain",
        "--timeout",
        "120",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok: 3 of 3 nodes executed" in done.stdout
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["ok"] and (record["mode"], record["transport"]) == (mode, transport)
    assert {n["status"] for n in record["nodes"]} == {"executed"}
    assert record["messages"], "the broker carried messages"
    for node in ("node-1", "node-2", "node-3"):
        assert (tmp_path / "logs" / f"{node}.log").stat().st_size > 0
    assert (tmp_path / "report.html").exists()


@pytest.mark.parametrize("mode", ["inprocess", "processes"])
def test_a_failing_node_stops_the_run_fast_and_is_named(mode: str, tmp_path: Path) -> None:
    started = time.monotonic()
    done = cli(
        "run",
        str(ANALYSES / "raise_after_first.py"),
        "--nodes",
        "3",
        "--mode",
        mode,
        "--out",
        str(tmp_path),
        "--plain",
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert elapsed < 45, "the run must end well before the nodes' 60 s waits"
    out = done.stdout
    assert (
        "--- node-3 failed: ValueError at raise_after_first.py:22: "
        "node-3 broke after its first message" in out
    )
    assert out.count("Traceback (most recent call last)") == 1  # shown once, the user's frames
    assert "FAILED" in out
    record = json.loads((tmp_path / "run.json").read_text())
    statuses = {n["node_id"]: n["status"] for n in record["nodes"]}
    assert statuses["node-3"] == "failed"
    assert record["nodes"][2]["error"]["type"] == "ValueError"
    assert statuses["node-1"] in ("failed", "stopped")  # PeerFailed, not a 60 s timeout


def test_timeout_names_the_waiting_nodes_and_their_waits(tmp_path: Path) -> None:
    done = cli(
        "run",
        str(ANALYSES / "stuck.py"),
        "--nodes",
        "2",
        "--timeout",
        "3",
        "--out",
        str(tmp_path),
        "--plain",
    )
    assert done.returncode == 1
    assert "the run was stopped: timeout after 3 s" in done.stdout
    assert "node-1 was waiting for: a 'never' message from any node" in done.stdout
    assert "node-2 was waiting for: the end of the analysis" in done.stdout
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["timed_out"] and record["nodes"][0]["waiting_for"]


def test_bad_script_is_a_clear_error(tmp_path: Path) -> None:
    missing = cli("run", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "sync.py").write_text("def main():\n    pass\n")
    wrong = cli("run", str(tmp_path / "sync.py"))
    assert wrong.returncode == 2 and "async def main()" in wrong.stderr


def test_init_scaffolds_a_project_whose_test_passes(tmp_path: Path) -> None:
    made = cli("init", "demo", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    demo = tmp_path / "demo"
    for name in (
        "analysis.py",
        "Dockerfile",
        "tests/test_analysis.py",
        "data/node-2/s3/values.csv",
    ):
        assert (demo / name).exists()
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=demo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    again = cli("init", "demo", cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr


@pytest.mark.parametrize("mode", ["inprocess", "processes"])
async def test_a_script_can_import_its_sibling_modules(mode: str, tmp_path: Path) -> None:
    (tmp_path / "helper_numbers.py").write_text("VALUE = 41\n")
    (tmp_path / "analysis.py").write_text(
        "import asyncio\nfrom helper_numbers import VALUE\nfrom flame_async import FlameSDK\n\n"
        "async def main() -> int:\n    async with FlameSDK():\n        return VALUE + 1\n\n"
        "if __name__ == '__main__':\n    asyncio.run(main())\n"
    )
    result = await run_script(tmp_path / "analysis.py", mode=mode, nodes=2, timeout=60)  # type: ignore[arg-type]
    assert result.ok, [(o.error_type, o.error_message) for o in result.failed]
