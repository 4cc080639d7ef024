"""``flame-async init NAME``: a new analysis project that runs and tests as generated."""

from __future__ import annotations

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

_DOCKERFILE = """\
# The image FLAME runs once per node; the platform sets the node's environment variables.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY analysis.py .
CMD ["python", "analysis.py"]
"""

_README = """\
# {name}

A federated analysis for the FLAME platform, written with flame-async.

* `analysis.py`: the analysis (runs once per node).
* `data/<node>/s3/values.csv`: small sample data for local runs.
* `tests/test_analysis.py`: runs the analysis on a local three-node platform.

```bash
pytest                                                   # test it
flame-async run analysis.py --nodes 3 --data data        # run it, with a live view
flame-async run analysis.py --nodes 3 --data data --mode processes   # as it ships
```

`Dockerfile` builds the image FLAME runs on every node.
"""

_SAMPLES = {
    "node-1": [4.0, 8.0, 15.0, 16.0, 23.0, 42.0],
    "node-2": [1.5, 2.5, 3.5, 4.5],
    "node-3": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0],
}


def scaffold(target: Path) -> list[Path]:
    """Create an analysis project in the new folder ``target``.

    Returns:
        The files created, relative to ``target``.

    Raises:
        InvalidArgument: ``target`` exists and is not an empty folder.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidArgument(f"{target} already exists and is not empty; choose a new name")
    files: dict[str, str] = {
        "analysis.py": _ANALYSIS,
        "tests/test_analysis.py": _TEST,
        "pytest.ini": "[pytest]\npythonpath = .\ntestpaths = tests\n",
        "requirements.txt": f"flame-async=={__version__}\n",
        "Dockerfile": _DOCKERFILE,
        "README.md": _README.format(name=target.name),
        ".gitignore": "__pycache__/\nflame-out/\n.pytest_cache/\n",
    }
    for node, values in _SAMPLES.items():
        files[f"data/{node}/s3/values.csv"] = "value\n" + "".join(f"{v}\n" for v in values)
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return [Path(p) for p in files]
