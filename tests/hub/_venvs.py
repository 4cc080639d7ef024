"""Cached virtual environments with other Hub clients, for comparisons (not our dependencies).

``flame-hub-client`` (PyPI) 0.2.0 is the release that reads the pinned real Hub's nodes and
analyses (1.1.0, 0.5.5 and 0.2.16 fail validation on nodes, 0.2.10 on analyses); it is synchronous
(httpx), so it runs in its own interpreter. The venvs live outside the clone, in
``$FLAME_ASYNC_TEST_CACHE`` (default ``/tmp/flame-async-cache``), and are built once per machine:
a venv counts as ready only once its marker file exists.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

__all__ = ["FLAME_HUB_VERSIONS", "VenvState", "cache_dir", "prepare_flame_hub_venv"]

FLAME_HUB_VERSIONS: Final = ("0.2.0",)
_PIP_TIMEOUT: Final = 15 * 60.0


def cache_dir() -> Path:
    """Where test venvs are cached (outside the clone)."""
    return Path(os.environ.get("FLAME_ASYNC_TEST_CACHE", "/tmp/flame-async-cache"))


@dataclasses.dataclass(frozen=True, slots=True)
class VenvState:
    """A ready venv's interpreter, or why there is none."""

    python: Path | None
    skip_reason: str | None
    seconds: float


def prepare_flame_hub_venv(version: str) -> VenvState:
    """A venv with ``flame-hub-client==version``: reused when ready, else built (pip).

    Never raises for an unreachable index: the reason comes back in ``skip_reason``.
    """
    began = time.monotonic()
    venv = cache_dir() / "venvs" / f"flame-hub-client-{version}"
    python = venv / "bin" / "python"
    ready = venv / ".flame-async-ready"
    if ready.exists() and python.exists():
        return VenvState(python, None, time.monotonic() - began)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)],
            check=True,
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"flame-hub-client=={version}"],
            capture_output=True,
            text=True,
            timeout=_PIP_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return VenvState(None, f"no venv for flame-hub-client {version}: {exc!r}", 0.0)
    if pip.returncode != 0:
        lines = [line for line in pip.stderr.splitlines() if line.strip()]
        return VenvState(
            None,
            f"pip could not install flame-hub-client=={version} (index unreachable?): "
            + " | ".join(lines[-3:]),
            time.monotonic() - began,
        )
    ready.touch()
    return VenvState(python, None, time.monotonic() - began)
