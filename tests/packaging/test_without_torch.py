"""The codec tests pass where torch and safetensors are not installed: the `test` extra does not
need them, and their tests say why they are skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .helpers import ROOT

# Put on PYTHONPATH for one subprocess: `import torch` (or safetensors, or any submodule) fails
# with ModuleNotFoundError there, as where they are not installed.
BLOCKER = """\
import sys

for _name in ("torch", "safetensors"):
    sys.modules[_name] = None  # type: ignore[assignment]
"""

SKIP_REASON = "torch is not importable: pip install -e '.[test-torch]' to test the tensor codecs"


def test_the_codec_tests_pass_without_torch_and_safetensors(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr, probe.stderr

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_codecs.py",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed, \d+ skipped", summary), summary
    assert "failed" not in summary and "error" not in summary, summary
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    torch_skips = [line for line in skipped if SKIP_REASON in line]
    assert len(torch_skips) >= 6, skipped  # the round trips, the files, refusals
    assert any("safetensors is not importable" in line for line in skipped), skipped
    assert all("not importable" in line for line in skipped), skipped
