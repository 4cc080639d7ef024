"""Session fixtures for the packaging tests: the wheel built as docs/install.md says, and a
fresh virtual environment with that wheel installed, as a user without an index entry has them.

Nothing is built or cached inside the checkout: the sources are copied to a temporary folder
first (pip's wheel cache and download cache are reused as usual).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import ROOT, console_commands, section, shell

# What a clone has that a build does not need (caches, environments, earlier builds).
_NOT_COPIED = {
    ".git",
    ".venv",
    ".nox",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "build",
    "dist",
    "site",
    "out",
    "flame-out",
}


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skipped |= _NOT_COPIED & set(names)
    return skipped


def tool_env(bin_dir: Path) -> dict[str, str]:
    """The environment with ``bin_dir`` first on PATH, so ``python3`` and ``pip`` are its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass(frozen=True)
class Built:
    """A copy of the checkout and the wheel built in it."""

    clone: Path
    wheel: Path
    log: str


@dataclass(frozen=True)
class CliVenv:
    """A fresh virtual environment with the wheel and its ``cli`` extra installed."""

    path: Path
    bin: Path
    env: Mapping[str, str]


def _wheel_commands() -> list[str]:
    """The commands of docs/install.md "From a wheel": build it, then install it."""
    text = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    commands = console_commands(section(text, "From a wheel"))
    assert len(commands) == 2, commands
    assert commands[0].startswith("python3 -m pip wheel "), commands
    assert commands[1].startswith("pip install 'dist/"), commands
    return commands


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The wheel, built by docs/install.md's command in a copy of this checkout."""
    clone = tmp_path_factory.mktemp("clone") / "flame-async"
    shutil.copytree(ROOT, clone, ignore=_ignore)
    build = _wheel_commands()[0]
    # PIP_VERBOSE shows the build backend's output (its warnings), the command stays as written.
    env = {**tool_env(Path(sys.executable).parent), "PIP_VERBOSE": "1"}
    done = shell(build, cwd=clone, env=env, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    (wheel,) = (clone / "dist").glob("*.whl")
    return Built(clone=clone, wheel=wheel, log=log)


@pytest.fixture(scope="session")
def cli_venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> CliVenv:
    """A new virtual environment with docs/install.md's wheel install command run in it."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    env = tool_env(path / "bin")
    install = _wheel_commands()[1]
    done = shell(install, cwd=built.clone, env=env, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    listed = subprocess.run(
        [path / "bin" / "python", "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    ).stdout
    assert "flame-async==" in listed and "rich==" in listed, listed
    return CliVenv(path=path, bin=path / "bin", env=env)
