"""Shared set-up of the flamesdk compatibility tests.

python-sdk-patterns and flamesdk 0.6 are not on the package index: their sources sit in
``../shared/flame-ecosystem/`` beside the project. Tests that need them skip, saying so, where
that folder is absent. The real-flamesdk tests need a virtual environment with flamesdk's
pinned dependencies; it is made once per machine (cached in ``/tmp/flame-async-cache``),
before the first test runs, outside the per-test timeout.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ECOSYSTEM = ROOT.parent / "shared" / "flame-ecosystem"
FLAMESDK_SRC = ECOSYSTEM / "flamesdk-0.6.0"
PATTERNS = ECOSYSTEM / "python-sdk-patterns-0.6.4"
EXAMPLES = PATTERNS / "examples"

needs_ecosystem = pytest.mark.skipif(
    not PATTERNS.is_dir(),
    reason=f"python-sdk-patterns sources not found at {PATTERNS} (../shared/ is absent)",
)

FLAMESDK_PINS = ("httpx==0.27.0", "fastapi==0.110.0", "uvicorn==0.27.1", "opendp>=0.12")
"""flamesdk 0.6.0's requirements.txt, plus what python-sdk-patterns' mock SDK imports."""

CACHE = Path(os.environ.get("FLAME_ASYNC_TEST_CACHE", "/tmp/flame-async-cache"))

SITECUSTOMIZE = """\
# flame-async tests: flamesdk hard-codes uvicorn.run(app, host="0.0.0.0", port=8000). With
# FLAMESDK_API_FD set, serve on that inherited socket instead (the test's platform bound it on
# 127.0.0.1 and knows its port).
import os

if os.environ.get("FLAMESDK_API_FD"):
    import socket

    import uvicorn

    def run(app, *args, **kwargs):
        sock = socket.socket(fileno=int(os.environ["FLAMESDK_API_FD"]))  # family detected
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])

    uvicorn.run = run
"""


@dataclass(frozen=True)
class FlamesdkVenv:
    """The cached environment for real flamesdk nodes (``python`` is None when it could not be
    made; ``reason`` says why)."""

    python: Path | None
    reason: str = ""


_VENV: FlamesdkVenv | None = None


def _make_flamesdk_venv() -> FlamesdkVenv:
    key = hashlib.sha256(
        json.dumps([sys.version, FLAMESDK_PINS, SITECUSTOMIZE]).encode()
    ).hexdigest()[:12]
    folder = CACHE / f"flamesdk-venv-{key}"
    python = folder / "bin" / "python"
    ready = folder / ".ready"
    if ready.is_file():
        return FlamesdkVenv(python)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be making it right now
        if ready.is_file():
            return FlamesdkVenv(python)
        return _build_venv(folder, python, ready)


def _build_venv(folder: Path, python: Path, ready: Path) -> FlamesdkVenv:
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *FLAMESDK_PINS],
            check=True,
            capture_output=True,
            timeout=600,
        )
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "sitecustomize.py").write_text(SITECUSTOMIZE)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        text = detail.decode(errors="replace")[-300:] if isinstance(detail, bytes) else ""
        return FlamesdkVenv(None, f"cannot make the flamesdk venv in {folder}: {exc} {text}")
    ready.write_text("ok")
    return FlamesdkVenv(python)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "flamesdk_venv: needs the cached venv with real flamesdk 0.6's dependencies"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make the flamesdk venv once, before any test runs (outside the per-test timeout), and
    only when a selected test needs it."""
    global _VENV  # noqa: PLW0603 - once per session
    if any(item.get_closest_marker("flamesdk_venv") for item in items) and PATTERNS.is_dir():
        _VENV = _make_flamesdk_venv()


@pytest.fixture(scope="session")
def flamesdk_python() -> Path:
    """The python of the flamesdk venv (the test skips, saying why, when there is none)."""
    if not FLAMESDK_SRC.is_dir():
        pytest.skip(f"flamesdk 0.6.0 sources not found at {FLAMESDK_SRC} (../shared/ is absent)")
    made = _VENV or _make_flamesdk_venv()
    if made.python is None:
        pytest.skip(made.reason)
    return made.python


# -- data ----------------------------------------------------------------------------------------

PATIENTS = {"node-2": 7, "node-3": 11}
"""Patients per analyzer node in the star examples (node-1 is the aggregator)."""


def star_data(folder: Path) -> float:
    """FHIR Patients per analyzer; returns the pooled count."""
    for node, count in PATIENTS.items():
        (folder / node / "fhir").mkdir(parents=True)
        entries = [
            {"resource": {"resourceType": "Patient", "id": f"{node}-p{i}"}} for i in range(count)
        ]
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        (folder / node / "fhir" / "patients.json").write_text(json.dumps(bundle))
    return float(sum(PATIENTS.values()))


@dataclass(frozen=True)
class Pooled:
    """HALTA's pooled statistics of the generated CSVs."""

    rows: int
    sex: dict[str, int]
    pasc: dict[str, int]


def halta_data(folder: Path) -> Pooled:
    """One labelled CSV per analyzer (seeded); returns what pooling all rows gives."""
    rng = random.Random(12)
    rows, sex, pasc = 0, {"male": 0, "female": 0}, {"0": 0, "1": 0}
    for node, count in (("node-2", 40), ("node-3", 55)):
        lines = ["id,fatigue,cough,headache,age,sex,pasc"]
        for i in range(count):
            f, c, h = (rng.random() < 0.4 for _ in range(3))
            label = int(f + c + h + rng.random() > 1.8)
            who = rng.choice(["male", "female"])
            lines.append(f"{i},{int(f)},{int(c)},{int(h)},{rng.randint(18, 90)},{who},{label}")
            rows, sex[who], pasc[str(label)] = rows + 1, sex[who] + 1, pasc[str(label)] + 1
        (folder / node / "s3").mkdir(parents=True)
        (folder / node / "s3" / f"synthetic_{node}_labeled.csv").write_text("\n".join(lines))
    return Pooled(rows, sex, pasc)


def node_pythonpath() -> str:
    """What the nodes need on their path: this project and the pattern library."""
    return os.pathsep.join([str(ROOT), str(PATTERNS)])
