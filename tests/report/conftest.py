"""Fixtures for the report tests: a sample run and, for the browser test, headless Chromium.

Chromium comes from the Debian packages ``chromium`` and ``chromium-driver``. When
``/usr/bin/chromium`` is missing, the ``chromium`` fixture installs them with apt-get (as root
only); it skips the browser tests, saying why, only when that is impossible or fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .helpers import sample_run

CHROMIUM = Path("/usr/bin/chromium")
PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT = 900  # seconds per apt-get call; a cold mirror and ~100 MB of packages


def _install_chromium() -> str | None:
    """Install Chromium with apt-get; the reason it cannot be done, or None when it worked."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get on this machine to install Chromium with"
    if os.geteuid() != 0:
        return f"installing {' '.join(PACKAGES)} needs root; run the tests as root or install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (
        [apt, "update"],
        [apt, "install", "-y", "--no-install-recommends", *PACKAGES],
    )
    for step in steps:
        try:
            subprocess.run(
                step, check=True, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT
            )
        except subprocess.CalledProcessError as exc:
            return f"{' '.join(step)} failed ({exc.returncode}): {exc.stderr.strip()[-500:]}"
        except subprocess.TimeoutExpired:
            return f"{' '.join(step)} took longer than {APT_TIMEOUT} s"
    if not CHROMIUM.exists():
        return f"apt-get installed {' '.join(PACKAGES)} but {CHROMIUM} is still missing"
    return None


@pytest.fixture(scope="session")
def chromium() -> Path:
    """``/usr/bin/chromium``, installed first when it is missing."""
    if not CHROMIUM.exists():
        reason = _install_chromium()
        if reason is not None:
            pytest.skip(f"headless Chromium unavailable: {reason}")
    return CHROMIUM


@pytest.fixture
def run() -> dict[str, Any]:
    """A realistic 4-node run summary (see :func:`.helpers.sample_run`)."""
    return sample_run()
