"""``flame-async init NAME``: a new analysis project that runs and tests as generated."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from ._version import __version__
from .errors import InvalidArgument

__all__ = ["scaffold"]

_ANALYSIS = '''\
"""Federated mean: each node sends the count and sum of its local values; the aggregator
combines them and submits the mean. No raw value leaves a node.

Run it locally on three nodes:

    flame-async run analysis.py --nodes 3 --data data
"""

from __future__ import annotations

import asyncio
import csv
import io

from flame_async import FlameSDK


async def main() -> dict[str, float]:
    async with FlameSDK(aggregator_requires_data=True) as flame:
        # every node (the aggregator too) summarises its own data
        table = (await flame.get_s3_data(["values.csv"]))["values.csv"]
        values = [float(row["value"]) for row in csv.DictReader(io.StringIO(table.decode()))]
        summary = {"n": len(values), "sum": sum(values)}
        flame.logger.info("local summary: %s", summary)

        if not flame.is_aggregator:
            aggregator = flame.get_aggregator_id()
            assert aggregator is not None
            await flame.send_message(aggregator, summary, category="summary")
            await flame.wait_until_finished(timeout=120)
            return summary

        answers = await flame.await_messages(category="summary", timeout=120)
        missing = sorted(node for node, message in answers.items() if message is None)
        if missing:
            raise RuntimeError(f"no summary from {', '.join(missing)}")
        parts = [summary, *(m.data for m in answers.values() if m is not None)]
        n = sum(int(p["n"]) for p in parts)
        mean = sum(p["sum"] for p in parts) / n
        result = {"nodes": float(len(parts)), "n": float(n), "mean": mean}
        await flame.send_result(result, filename="mean.json")
        await flame.analysis_finished()
        return result


if __name__ == "__main__":
    asyncio.run(main())
'''

_TEST = '''\
"""The analysis, run on a local three-node FLAME platform (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

from analysis import main

DATA = Path(__file__).parent.parent / "data"


def test_federated_mean_matches_the_pooled_mean(flame_run, tmp_path: Path) -> None:
    result = flame_run(main, nodes=3, data=DATA, out_dir=tmp_path)
    assert result.ok, [(o.node_id, o.error_type, o.error_message) for o in result.failed]

    pooled = []
    for node in ("node-1", "node-2", "node-3"):
        rows = (DATA / node / "s3" / "values.csv").read_text().splitlines()[1:]
        pooled.extend(float(row) for row in rows)
    final = json.loads((tmp_path / "final" / "node-1" / "mean.json").read_text())
    assert final["n"] == len(pooled)
    assert abs(final["mean"] - sum(pooled) / len(pooled)) < 1e-9
    assert (tmp_path / "run.json").exists()
'''

_WHEEL = f"flame_async-{__version__}-py3-none-any.whl"

_REQUIREMENTS = """\
# What the analysis needs at run time; the Dockerfile installs exactly this. Add the extras its
# results use, e.g. flame-async[pandas].
# flame-async is not on PyPI yet: it is installed from its wheel in wheels/ (see README.md).
--find-links wheels
flame-async
"""

_REQUIREMENTS_DEV = """\
# For working on the analysis: its run-time requirements, pytest and the live view of
# `flame-async run`.
-r requirements.txt
flame-async[cli]
pytest>=8.2
"""

_DOCKERFILE = """\
# The image FLAME runs once per node; the platform sets the node's environment variables.
# Build it from this folder once wheels/ holds the flame-async wheel (see README.md).
FROM python:3.11-slim
WORKDIR /app
COPY wheels/ wheels/
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY analysis.py .
CMD ["python", "analysis.py"]
"""

_DOCKERIGNORE = """\
.venv/
.git/
__pycache__/
.pytest_cache/
flame-out*/
data/
tests/
"""

_README = """\
# {name}

A federated analysis for the FLAME platform, written with flame-async.

* `analysis.py`: the analysis (runs once per node).
* `data/<node>/s3/values.csv`: small sample data for local runs.
* `tests/test_analysis.py`: runs the analysis on a local three-node platform.
* `requirements.txt`: what the analysis needs at run time (the image installs it);
  `requirements-dev.txt` adds pytest and the live view of `flame-async run`.
* `wheels/`: the flame-async wheel both install from (you put it there, see below).
* `Dockerfile`: the image FLAME runs on every node.

## Set up

flame-async is not on PyPI yet, so `requirements.txt` installs it from `wheels/`, and the
`Dockerfile` copies that folder into the image. Build the wheel in your clone of flame-async
(replace `/path/to/flame-async` with where it is), copy it here and make a virtual
environment:

```bash
(cd /path/to/flame-async && python3 -m pip wheel --no-deps --wheel-dir dist .)
mkdir -p wheels && cp /path/to/flame-async/dist/{wheel} wheels/
python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt
```

Keep `wheels/` with the project (commit it): the image is built from it.

## Test and run

```bash
.venv/bin/pytest
.venv/bin/flame-async run analysis.py --data data
.venv/bin/flame-async run analysis.py --data data --mode processes --out flame-out-processes
```

`pytest` runs the test; `flame-async run` runs the analysis on a local platform (three nodes
unless `--nodes` says otherwise) with a live view and writes the outputs to `flame-out/` (or
`--out`); with `--mode processes` it runs `python analysis.py` once per node, as it ships.

## Build the image

```console
docker build -t {image} .
```
"""

_SAMPLES = {
    "node-1": [4.0, 8.0, 15.0, 16.0, 23.0, 42.0],
    "node-2": [1.5, 2.5, 3.5, 4.5],
    "node-3": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0],
}


# A project name in the style of a Python package: letters and digits, single '-' or '_' between.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*")


def _suggest(name: str) -> str:
    """A usable project name close to ``name`` (``My Analysis!`` -> ``my-analysis``)."""
    words = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not words:
        return "my-analysis"
    return words if words[0].isalpha() else f"analysis-{words}"


def _sibling(target: Path, name: str) -> Path:
    """``target`` renamed to ``name`` (made absolute first if it ends in ``.`` or ``..``)."""
    absolute = Path(os.path.abspath(target))
    if not absolute.name:  # the file system's root
        return absolute / name
    return (target if target.name == absolute.name else absolute).with_name(name)


def _check_target(target: Path) -> None:
    name = Path(os.path.abspath(target)).name
    if not _NAME.fullmatch(name):
        instead = _sibling(target, _suggest(name))
        raise InvalidArgument(
            f"{name!r} is not a usable project name: use letters, digits and single '-' or '_' "
            f"between them, starting with a letter; e.g. flame-async init {instead}"
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidArgument(
                    f"cannot create {target}: {parent} is a file, not a folder; give a NAME in "
                    f"a folder, e.g. flame-async init {name}"
                )
            break
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        other = next(
            alternative
            for n in itertools.count(2)
            if not (alternative := _sibling(target, f"{name}-{n}")).exists()
        )
        raise InvalidArgument(
            f"{target} already exists and is not empty; choose a new NAME, e.g. "
            f"flame-async init {other}"
        )


def scaffold(target: Path) -> list[Path]:
    """Create an analysis project in the new folder ``target``.

    The last component of ``target`` is the project's name: letters, digits and single ``-``
    or ``_`` between them, starting with a letter (``demo``, ``my-analysis``,
    ``my_analysis2``).

    Returns:
        The files created, relative to ``target``.

    Raises:
        InvalidArgument: the name is not usable, a parent of ``target`` is a file, ``target``
            exists and is not an empty folder, or the folder cannot be created; nothing is
            created then, except when creating it fails part way.
    """
    target = Path(os.path.normpath(target))  # "new/.." is ".", not a new folder
    _check_target(target)
    name = Path(os.path.abspath(target)).name
    files: dict[str, str] = {
        "analysis.py": _ANALYSIS,
        "tests/test_analysis.py": _TEST,
        "pytest.ini": "[pytest]\npythonpath = .\ntestpaths = tests\n",
        "requirements.txt": _REQUIREMENTS,
        "requirements-dev.txt": _REQUIREMENTS_DEV,
        "Dockerfile": _DOCKERFILE,
        ".dockerignore": _DOCKERIGNORE,
        "README.md": _README.format(name=name, wheel=_WHEEL, image=name.lower()),
        ".gitignore": "__pycache__/\n.venv/\nflame-out*/\n.pytest_cache/\n",
    }
    for node, values in _SAMPLES.items():
        files[f"data/{node}/s3/values.csv"] = "value\n" + "".join(f"{v}\n" for v in values)
    try:
        for relative, text in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot create {target}: {exc.strerror or exc}") from exc
    return [Path(p) for p in files]
