"""The first day, as a user without an index entry for flame-async has it: install the wheel
built from the clone, `flame-async init demo`, follow the project's README literally, and its
test passes; the Dockerfile's install step takes flame-async from the copied wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Built, CliVenv
from .helpers import fences, lines, section, shell

pytestmark = pytest.mark.slow

PLACEHOLDER = "/path/to/flame-async"


def init_demo(cli_venv: CliVenv, where: Path) -> Path:
    made = subprocess.run(
        [cli_venv.bin / "flame-async", "init", "demo"],
        cwd=where,
        env=dict(cli_venv.env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return where / "demo"


# The wheel and both venvs take ~30-60 s here with pip's cache warm; a cold cache downloads the
# dependencies (aiohttp, pydantic, ...) twice.
@pytest.mark.timeout(900)
def test_a_project_set_up_as_its_readme_says_passes_its_tests(
    built: Built, cli_venv: CliVenv, tmp_path: Path
) -> None:
    demo = init_demo(cli_venv, tmp_path)
    readme = (demo / "README.md").read_text(encoding="utf-8")
    setup = lines(fences(section(readme, "Set up"), "bash")[0])
    use = lines(fences(section(readme, "Test and run"), "bash")[0])
    assert any(PLACEHOLDER in line for line in setup), setup
    assert use[0] == ".venv/bin/pytest", use

    for command in setup:
        started = time.monotonic()
        done = shell(
            command.replace(PLACEHOLDER, str(built.clone)),
            cwd=demo,
            env=cli_venv.env,
            timeout=600,
        )
        assert done.returncode == 0, f"{command}\n{(done.stdout + done.stderr)[-5000:]}"
        print(f"{time.monotonic() - started:6.1f} s  {command}")
    assert (demo / "wheels" / built.wheel.name).read_bytes() == built.wheel.read_bytes()
    installed = subprocess.run(
        [demo / ".venv" / "bin" / "python", "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    versions = {p["name"]: p["version"] for p in json.loads(installed.stdout)}
    assert "flame-async" in versions and "pytest" in versions and "rich" in versions
    assert "torch" not in versions

    for command in use:
        started = time.monotonic()
        done = shell(command, cwd=demo, env=cli_venv.env, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}\n{output[-5000:]}"
        print(f"{time.monotonic() - started:6.1f} s  {command}")
        if command == ".venv/bin/pytest":
            assert "1 passed" in output, output
        else:
            assert "ok: 3 of 3 nodes executed" in output, output
    assert json.loads((demo / "flame-out" / "final" / "node-1" / "mean.json").read_text())


@pytest.mark.timeout(900)  # may pay for the wheel and the venv, see above
def test_the_dockerfile_installs_flame_async_from_the_copied_wheel(
    built: Built, cli_venv: CliVenv, tmp_path: Path
) -> None:
    """No Docker engine here: lay out /app as the Dockerfile's COPY lines do, then resolve its
    `pip install` line (as a dry run) and check where flame-async comes from."""
    demo = init_demo(cli_venv, tmp_path)
    (demo / "wheels").mkdir()
    shutil.copy(built.wheel, demo / "wheels")
    app = tmp_path / "app"
    app.mkdir()
    pip_lines = []
    for line in lines((demo / "Dockerfile").read_text(encoding="utf-8")):
        if line.startswith("COPY "):
            source, target = line.split()[1:]
            if (demo / source).is_dir():
                shutil.copytree(demo / source, app / target)
            else:
                shutil.copy(demo / source, app / target)
        elif line.startswith("RUN pip install "):
            pip_lines.append(line.removeprefix("RUN "))
    assert sorted(p.name for p in app.iterdir()) == ["analysis.py", "requirements.txt", "wheels"]
    (command,) = pip_lines
    report = tmp_path / "report.json"
    done = shell(
        f"{cli_venv.bin}/{command} --dry-run --ignore-installed --report {report}",
        cwd=app,
        env=cli_venv.env,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    chosen = {
        item["metadata"]["name"]: item["download_info"]["url"]
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen["flame-async"] == (app / "wheels" / built.wheel.name).as_uri()
    assert "torch" not in chosen
