"""A compat node that raises ends the run at once (flamesdk: a 1000 s sleep), naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "analyses" / "raises_on_node_2.py"


@pytest.mark.parametrize(
    ("mode", "switch"),
    [("inprocess", "flag"), ("processes", "environment")],
)
def test_a_raising_node_ends_the_run_and_is_named(tmp_path: Path, mode: str, switch: str) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flag = ["--flamesdk-compat"] if switch == "flag" else []
    if switch == "environment":  # what a container sets instead of the flag
        env["FLAME_ASYNC_FLAMESDK_COMPAT"] = "1"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "flame_async", "run", *flag, "--plain"),
            *("--mode", mode, "--out", str(out), "--timeout", "50", str(SCRIPT)),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=58,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "node-2 failed: RuntimeError" in done.stdout
    assert "a bug in the analysis, on purpose" in done.stdout
    record = json.loads((out / "run.json").read_text())
    assert not record.get("timed_out")
    statuses = {n["node_id"]: n["status"] for n in record["nodes"]}
    assert statuses["node-2"] == "failed"
    assert statuses["node-3"] in ("stopped", "failed")  # its busy loop was ended
