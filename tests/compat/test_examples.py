"""python-sdk-patterns' three examples, unmodified, on the compatibility layer: 3 nodes, both
run modes, final results equal to the pooled computation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import EXAMPLES, halta_data, needs_ecosystem, node_pythonpath, star_data

pytestmark = [pytest.mark.slow, needs_ecosystem]

MODES = ["inprocess", "processes"]


def run_cli(script: Path, mode: str, data: Path, out: Path, cwd: Path) -> str:
    """``flame-async run --flamesdk-compat SCRIPT`` on 3 nodes; its output (asserting 0)."""
    env = {**os.environ, "PYTHONPATH": node_pythonpath(), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "flame_async", "run", "--flamesdk-compat", "--plain"),
            *("--mode", mode, "--nodes", "3", "--data", str(data), "--out", str(out)),
            *("--timeout", "50", str(script)),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=58,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def finals(out: Path) -> list[Path]:
    return sorted((out / "final" / "node-1").iterdir())


@pytest.mark.parametrize("mode", MODES)
def test_star_model_gives_the_pooled_patient_count(tmp_path: Path, mode: str) -> None:
    pooled = star_data(tmp_path / "data")
    run_cli(EXAMPLES / "run_star_model.py", mode, tmp_path / "data", tmp_path / "out", tmp_path)
    [result] = finals(tmp_path / "out")
    assert result.suffix == ".txt"
    assert float(result.read_text()) == pooled


@pytest.mark.parametrize("mode", MODES)
def test_star_model_with_local_dp_is_within_the_noise_bound(tmp_path: Path, mode: str) -> None:
    pooled = star_data(tmp_path / "data")
    run_cli(EXAMPLES / "run_star_model_dp.py", mode, tmp_path / "data", tmp_path / "out", tmp_path)
    [result] = finals(tmp_path / "out")
    # Laplace noise with scale sensitivity/epsilon = 1: |noise| > 25 has probability e^-25
    noisy = float(result.read_text())
    assert abs(noisy - pooled) <= 25
    assert noisy != pooled  # the storage service added noise


@pytest.mark.parametrize("mode", MODES)
def test_halta_over_s3_csvs_gives_the_pooled_description(tmp_path: Path, mode: str) -> None:
    pooled = halta_data(tmp_path / "data")
    run_cli(EXAMPLES / "run_e2e.py", mode, tmp_path / "data", tmp_path / "out", tmp_path)
    files = finals(tmp_path / "out")
    texts = [f for f in files if f.suffix == ".txt"]
    images = [f for f in files if f.suffix == ".bin"]
    assert len(texts) == 1
    assert len(images) == 3
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in images)
    text = texts[0].read_text()
    assert re.search(r"Nodes:\s+2\b", text)
    assert re.search(rf"Total rows:\s+{pooled.rows}\b", text)
    for sex, count in pooled.sex.items():
        assert re.search(rf"{sex}: {count}\b", text), (sex, text)
    for label, count in pooled.pasc.items():
        assert f"PASC={label}: {count}" in text
