"""`flame-async init NAME`: usable names only, a one-line error otherwise, nothing created; and a
project that installs flame-async from its own wheels/ folder, not from an index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flame_async._scaffold import scaffold
from flame_async._version import __version__
from flame_async.errors import InvalidArgument

from .helpers import fences, lines, section


def init(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flame_async.cli", "init", name],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_refused(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("flame-async: error: "), line
    for text in expected:
        assert text in line, line


@pytest.mark.parametrize("name", ["demo", "my-analysis", "my_analysis2", "Study2024", "a"])
def test_package_style_names_are_accepted(name: str, tmp_path: Path) -> None:
    created = scaffold(tmp_path / "sub" / name)
    assert Path("analysis.py") in created
    readme = (tmp_path / "sub" / name / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(f"# {name}\n")
    assert f"docker build -t {name.lower()} ." in readme


def test_an_empty_existing_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    scaffold(tmp_path / "demo")
    assert (tmp_path / "demo" / "analysis.py").exists()


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("My Analysis!", "flame-async init my-analysis"),
        ("2024 study", "flame-async init analysis-2024-study"),
        ("my..analysis", "flame-async init my-analysis"),
        ("_demo", "flame-async init demo"),
        ("demo_", "flame-async init demo"),
        ("dé mo", "flame-async init d-mo"),
        (f"sub{os.sep}bad name", f"flame-async init sub{os.sep}bad-name"),
    ],
)
def test_a_name_that_is_not_package_style_is_refused_saying_what_to_use(
    name: str, instead: str, tmp_path: Path
) -> None:
    before = tree(tmp_path)
    done = init(name, tmp_path)
    assert_refused(done, "is not a usable project name", instead)
    assert tree(tmp_path) == before


def test_a_target_under_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file\n")
    before = tree(tmp_path)
    for name in ("notes.txt/demo", "notes.txt/deeper/demo"):
        done = init(name, tmp_path)
        assert_refused(done, f"cannot create {name}: notes.txt is a file, not a folder")
        assert "Traceback" not in done.stderr
    assert tree(tmp_path) == before


def test_an_existing_target_is_refused_with_a_free_name(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine\n")
    (tmp_path / "demo-2").mkdir()
    (tmp_path / "demo-2" / "keep.txt").write_text("mine\n")
    (tmp_path / "afile").write_text("mine\n")
    before = tree(tmp_path)
    assert_refused(init("demo", tmp_path), "not empty", "flame-async init demo-3")
    assert_refused(init("afile", tmp_path), "not empty", "flame-async init afile-2")
    assert_refused(init(".", tmp_path / "demo"), "not empty")
    assert_refused(init("new/..", tmp_path / "demo"), "not empty")
    assert tree(tmp_path) == before


def test_refusals_are_invalid_argument(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "bad name", tmp_path / "file" / "demo", tmp_path / "file"):
        with pytest.raises(InvalidArgument):
            scaffold(target)


def test_the_project_installs_flame_async_from_its_wheels_folder(tmp_path: Path) -> None:
    scaffold(tmp_path / "demo")
    demo = tmp_path / "demo"
    requirements = [
        line
        for line in lines((demo / "requirements.txt").read_text(encoding="utf-8"))
        if not line.startswith("#")
    ]
    assert requirements == ["--find-links wheels", "flame-async"]
    assert "==" not in (demo / "requirements.txt").read_text(encoding="utf-8")
    dev = lines((demo / "requirements-dev.txt").read_text(encoding="utf-8"))
    assert "-r requirements.txt" in dev and "flame-async[cli]" in dev
    dockerfile = lines((demo / "Dockerfile").read_text(encoding="utf-8"))
    copy_wheels = dockerfile.index("COPY wheels/ wheels/")
    assert copy_wheels < dockerfile.index("RUN pip install --no-cache-dir -r requirements.txt")
    assert ".venv/" in (demo / ".dockerignore").read_text(encoding="utf-8")
    readme = (demo / "README.md").read_text(encoding="utf-8")
    assert "not on PyPI yet" in readme
    setup = lines(fences(section(readme, "Set up"), "bash")[0])
    wheel = f"flame_async-{__version__}-py3-none-any.whl"
    assert setup == [
        "(cd /path/to/flame-async && python3 -m pip wheel --no-deps --wheel-dir dist .)",
        f"mkdir -p wheels && cp /path/to/flame-async/dist/{wheel} wheels/",
        "python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt",
    ]
