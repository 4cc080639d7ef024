"""What README.md, docs/install.md, .ci/run and pyproject.toml tell a user agrees with what exists:
every install command installs from a clone, a wheel built from it, or a scaffolded project's
requirements, never from an index that does not have flame-async."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from flame_async._scaffold import scaffold
from flame_async._version import __version__

from .helpers import REPO, ROOT, console_commands, fences, lines, section

README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALL = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
WHEEL = f"flame_async-{__version__}-py3-none-any.whl"


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def pip_installs(text: str) -> list[str]:
    """What follows ``pip install`` in every command of ``text``, without quotes."""
    return [args.replace("'", "").strip() for args in re.findall(r"pip install ([^\n&`]*)", text)]


# A clone (editable), the wheel built from it, or a scaffolded project's requirements.
FROM_WHAT_A_USER_HAS = re.compile(
    r"(?:-e \.|dist/(?P<wheel>[^\s\[]+))(?:\[(?P<extras>[\w,-]+)\])?"
    r"|(?:--no-cache-dir )?-r requirements(?:-dev)?\.txt"
)


@pytest.mark.parametrize("page", ["README.md", "docs/install.md"])
def test_every_documented_install_is_from_a_clone_a_wheel_or_requirements(page: str) -> None:
    installs = pip_installs((ROOT / page).read_text(encoding="utf-8"))
    assert installs, f"{page} shows no install command"
    extras = set(pyproject()["project"]["optional-dependencies"])
    for args in installs:
        match = FROM_WHAT_A_USER_HAS.fullmatch(args)
        assert match, f"{page}: 'pip install {args}' does not install from a clone or a wheel"
        if match["wheel"]:
            assert match["wheel"] == WHEEL, f"{page}: {match['wheel']} is not what a build makes"
        if match["extras"]:
            assert set(match["extras"].split(",")) <= extras, f"{page}: pip install {args}"


def test_the_docs_say_flame_async_is_not_on_pypi_yet() -> None:
    assert "not on PyPI yet" in README
    assert "not on PyPI yet" in INSTALL


def test_ci_runs_exactly_the_readme_test_command() -> None:
    (command,) = [
        line for block in fences(README, "bash") for line in lines(block) if line.endswith("pytest")
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip().splitlines()[-1]
    assert ci == command
    assert "test-torch" in command, "CI covers the tensor codecs with torch"


def test_the_test_extra_does_not_pin_torch_and_test_torch_pins_the_cpu_build() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    assert not any(r.startswith("torch") for r in extras["test"]), extras["test"]
    assert "torch==2.13.0" in extras["test-torch"]
    for name in ("dev", "all", "torch"):
        assert not any(r.startswith("torch") for r in extras[name]), name


def test_readme_links_are_absolute() -> None:
    targets = re.findall(r"\]\(([^)]+)\)", README)
    assert targets
    for target in targets:
        assert target.startswith("https://"), target
    assert f"{REPO}/blob/main/docs/install.md" in targets


def test_install_docs_show_the_scaffold_steps_and_files(tmp_path: Path) -> None:
    scaffold(tmp_path / "demo")
    readme = (tmp_path / "demo" / "README.md").read_text(encoding="utf-8")
    setup = lines(fences(section(readme, "Set up"), "bash")[0])
    documented = console_commands(section(INSTALL, "In a project made by `flame-async init`"))
    assert documented == ["cd NAME", *setup, ".venv/bin/pytest"]
    texts = fences(section(INSTALL, "In a project made by `flame-async init`"), "text")
    for name, shown in zip(("requirements.txt", "requirements-dev.txt"), texts, strict=True):
        real = (tmp_path / "demo" / name).read_text(encoding="utf-8")
        assert lines(shown) == [line for line in lines(real) if not line.startswith("#")]
    (dockerfile,) = fences(section(INSTALL, "In the analysis image"), "dockerfile")
    generated = (tmp_path / "demo" / "Dockerfile").read_text(encoding="utf-8")
    assert lines(dockerfile) == [line for line in lines(generated) if not line.startswith("#")]
