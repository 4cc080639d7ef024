"""The documentation builds without warnings, and what it shows runs as shown.

* ``mkdocs build --strict`` succeeds and documents every public name of ``flame_async``.
* The tutorial's files and ``bash`` commands, run in order in an empty folder, produce the
  outputs the tutorial promises.
* Every complete analysis on the other pages (a ``python`` block with a ``title`` that defines
  ``async def main``) runs on three local nodes.
* Every ``python`` block compiles, imports only names that exist, and uses only ``flame.<name>``
  attributes that ``FlameSDK`` has.

Conventions the pages follow for this: files are fenced as ```` ```python title="NAME" ````,
commands the reader runs as ```` ```bash ````; output and commands that are not part of the
walk-through use ```` ```console ```` or ```` ```text ````.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import flame_async
from flame_async import FlameSDK
from flame_async.runner import load_main, run_analysis

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLE_DATA = ROOT / "examples" / "data"
VENV_BIN = Path(sys.executable).parent

FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    language: str
    title: str | None
    body: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)} ({self.title or self.language})"


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks in order (also indented ones, e.g. in tabs, dedented)."""
    found = []
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        info = match["info"].strip()
        language = info.split(" ", 1)[0] if info else ""
        title = TITLE.search(info)
        body = textwrap.dedent(match["body"])
        found.append(Block(page, language, title["title"] if title else None, body))
    return found


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def python_blocks() -> list[Block]:
    """Every flame-async ``python`` block (the flamesdk and python-sdk-patterns side of a
    comparison excluded)."""
    return [
        b
        for page in pages()
        for b in blocks(page)
        if b.language == "python"
        and "import flamesdk" not in b.body
        and "from flamesdk" not in b.body
        and "from flame.star" not in b.body
    ]


def analysis_blocks() -> list[Block]:
    """Complete analyses outside the tutorial (which has its own test)."""
    return [
        b
        for b in python_blocks()
        if b.title and "async def main" in b.body and b.page.name != "tutorial.md"
    ]


def tool_env(tmp_path: Path) -> dict[str, str]:
    """The environment for documented commands: this venv's ``bin`` first on PATH."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # local results stay out of $HOME
        "NO_MKDOCS_2_WARNING": "1",
    }


# ------------------------------------------------------------------------------------ the build


@pytest.mark.timeout(300)
def test_docs_build_strictly_and_document_every_public_name(tmp_path: Path) -> None:
    tools = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
    missing = [name for name in tools if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(
            f"the docs tools are not installed ({', '.join(missing)}); "
            "pip install mkdocs-material mkdocstrings mkdocstrings-python"
        )
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    build = subprocess.run(
        [*command, "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=tool_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, log
    assert "WARNING" not in log, log

    anchors = set()
    for html in site.rglob("*.html"):
        anchors.update(re.findall(r'id="(flame_async[\w.]*)"', html.read_text(encoding="utf-8")))
    undocumented = [
        name
        for name in flame_async.__all__
        if not name.startswith("_") and not any(a.endswith(f".{name}") for a in anchors)
    ]
    assert not undocumented, f"public names missing from the API reference: {undocumented}"


# ---------------------------------------------------------------------------------- the tutorial


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tutorial_runs_as_written_in_an_empty_folder(tmp_path: Path) -> None:
    steps = [b for b in blocks(DOCS / "tutorial.md") if b.title or b.language == "bash"]
    assert any(b.title == "analysis.py" for b in steps), "the tutorial shows no analysis.py"
    assert any(b.language == "bash" for b in steps), "the tutorial shows no commands"
    env = tool_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for step in steps:
        if step.title:
            target = work / step.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.body, encoding="utf-8")
            continue
        done = subprocess.run(
            step.body,
            shell=True,
            executable="/bin/bash",
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, (
            f"tutorial command failed ({done.returncode}):\n{step.body}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )

    # what the tutorial promises
    final = json.loads((work / "out" / "final" / "node-1" / "mean.json").read_text())
    assert final == {"mean": 5.0, "n": 9}
    processes = json.loads((work / "out-processes" / "final" / "node-1" / "mean.json").read_text())
    assert processes == final
    assert sorted(p.name for p in (work / "out" / "logs").iterdir()) == [
        "node-1.log",
        "node-2.log",
        "node-3.log",
    ]
    summary = json.loads((work / "out" / "run.json").read_text())
    assert summary["ok"] is True
    assert [n["status"] for n in summary["nodes"]] == ["executed"] * 3
    assert (work / "out" / "report.html").is_file()


# ------------------------------------------------------------------------ the other pages' code


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", analysis_blocks(), ids=lambda b: b.where)
async def test_documented_analysis_runs_on_three_nodes(block: Block, tmp_path: Path) -> None:
    script = tmp_path / block.title if block.title else tmp_path / "analysis.py"
    script.write_text(block.body, encoding="utf-8")
    data = EXAMPLE_DATA if block.page.name == "data.md" else None
    if data is not None and not data.is_dir():
        pytest.skip(f"{data} is missing; run examples/data/generate.py")
    result = await run_analysis(
        load_main(script), nodes=3, data=data, timeout=60, state_dir=tmp_path / "state"
    )
    assert result.ok, "\n".join(o.traceback or o.status for o in result.failed)


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.where)
def test_python_block_uses_only_the_real_api(block: Block) -> None:
    tree = compile(
        block.body,
        block.where,
        "exec",
        flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
    )
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module_name = node.module
        if module_name and module_name.split(".")[0] == "flame_async":
            module = importlib.import_module(module_name)
            absent = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not absent, f"{block.where}: {module_name} has no {absent}"
    attributes = set(dir(FlameSDK()))  # not entered; dir() evaluates no property
    used = set(re.findall(r"(?<![\w.])flame\.(\w+)", block.body))
    unknown = sorted(used - attributes)
    assert not unknown, f"{block.where}: FlameSDK has no {unknown}"
