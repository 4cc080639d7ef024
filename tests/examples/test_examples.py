"""Every example in ``examples/`` runs on three local nodes and computes the right answer.

The federated results are checked against the same statistics computed centrally over all nodes'
raw files in ``examples/data`` (which the test may read; the analyses may not).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import numpy as np
import pandas as pd
import pytest

from flame_async.config import use_environ
from flame_async.local import LocalPlatform
from flame_async.runner import RunResult, load_main, run_analysis

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DATA = EXAMPLES / "data"
GENERATOR = DATA / "generate.py"
NODES = ("node-1", "node-2", "node-3")
AGGREGATOR = "node-1"
SIZE_BUDGET = 2_000_000  # bytes, everything under examples/data

EXAMPLE_FILES = (
    "fedavg_logreg.py",
    "fhir_mean_histogram.py",
    "hub_start_analysis.py",  # runs against a Hub: tests/hub/test_hub_example.py
    "request_response.py",
    "star.py",
)


def load_module(name: str) -> ModuleType:
    """Import an example as a module (for its helpers and constants)."""
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", EXAMPLES / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


async def run_example(name: str, out_dir: Path) -> RunResult:
    result = await run_analysis(
        load_main(EXAMPLES / name), nodes=3, data=DATA, out_dir=out_dir, timeout=45
    )
    report = "\n".join(
        f"{o.node_id} ({o.role}): {o.status} {o.result!r}\n{o.traceback}" for o in result.outcomes
    )
    assert result.ok, report
    assert [o.node_id for o in result.outcomes] == list(NODES)
    assert [o.node_id for o in result.outcomes if o.role == "aggregator"] == [AGGREGATOR]
    return result


def final_file(out_dir: Path, filename: str) -> Path:
    path = out_dir / "final" / AGGREGATOR / filename
    found = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert path.is_file(), f"no {path}; the run wrote {found}"
    return path


def data_files() -> Iterator[Path]:
    for path in sorted(DATA.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


# --------------------------------------------------------------------- raw data, pooled


def raw_fhir_resources(node: str) -> list[dict[str, Any]]:
    """Every FHIR resource in a node's files (Bundles unpacked)."""
    resources: list[dict[str, Any]] = []
    for path in sorted((DATA / node / "fhir").iterdir()):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ndjson":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = [json.loads(text)]
        for item in items:
            if item.get("resourceType") == "Bundle":
                resources.extend(entry["resource"] for entry in item.get("entry", []))
            else:
                resources.append(item)
    return resources


def raw_weights(node: str) -> list[float]:
    """Body weights (LOINC 29463-7, kg) of usable Observations: not entered in error."""
    return [
        float(r["valueQuantity"]["value"])
        for r in raw_fhir_resources(node)
        if r["resourceType"] == "Observation"
        and r["status"] in ("final", "amended", "corrected")
        and any(c["code"] == "29463-7" for c in r["code"]["coding"])
        and r["valueQuantity"]["code"] == "kg"
    ]


def raw_cohort() -> pd.DataFrame:
    """All nodes' training tables, pooled (read from the CSV files)."""
    return pd.concat(
        [pd.read_csv(DATA / node / "s3" / "cohort" / "train.csv") for node in NODES],
        ignore_index=True,
    )


# ------------------------------------------------------------------------------ tests


def test_every_example_is_covered_here() -> None:
    assert tuple(sorted(p.name for p in EXAMPLES.glob("*.py"))) == EXAMPLE_FILES


@pytest.mark.slow
async def test_star_adds_every_nodes_value(tmp_path: Path) -> None:
    star = load_module("star.py")
    result = await run_example("star.py", tmp_path)
    values = {node: star.local_value(node) for node in NODES}
    assert result[AGGREGATOR].result == sum(values.values())
    for node in NODES[1:]:
        assert result[node].result == values[node]


@pytest.mark.slow
async def test_request_response_combines_the_replies(tmp_path: Path) -> None:
    example = load_module("request_response.py")
    result = await run_example("request_response.py", tmp_path)
    samples = [example.local_sample(node) for node in NODES[1:]]  # analyzers only
    pooled = [x for sample in samples for x in sample]
    answer = result[AGGREGATOR].result
    assert answer["nodes"] == 2
    assert answer["n"] == len(pooled)
    assert answer["mean"] == pytest.approx(sum(pooled) / len(pooled))
    assert answer["max"] == max(pooled)


@pytest.mark.slow
async def test_fhir_mean_histogram_equals_the_pooled_statistics(tmp_path: Path) -> None:
    result = await run_example("fhir_mean_histogram.py", tmp_path)
    summary = json.loads(final_file(tmp_path, "body_weight_summary.json").read_text())

    per_node = {node: raw_weights(node) for node in NODES}
    pooled = np.array([w for node in NODES for w in per_node[node]])
    assert len(pooled) > 300
    assert summary["loinc_code"] == "29463-7"
    assert summary["unit"] == "kg"
    assert summary["count"] == len(pooled)
    assert summary["count_per_node"] == {node: len(per_node[node]) for node in NODES}
    assert summary["suppressed_nodes"] == []
    assert summary["mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert summary["std"] == pytest.approx(pooled.std(ddof=1), rel=1e-9)

    histogram = summary["histogram"]
    edges = histogram["bin_edges"]
    assert edges == [float(e) for e in range(30, 161, 10)]
    expected = [int(((pooled >= lo) & (pooled < hi)).sum()) for lo, hi in itertools.pairwise(edges)]
    assert histogram["counts"] == expected
    assert histogram["below"] == int((pooled < edges[0]).sum())
    assert histogram["above"] == int((pooled >= edges[-1]).sum())
    assert sum(expected) + histogram["below"] + histogram["above"] == len(pooled)

    # the nodes' own distributions differ, so no single node's answer would pass
    node_means = [float(np.mean(per_node[node])) for node in NODES]
    assert max(node_means) - min(node_means) > 10
    assert result[AGGREGATOR].result == {
        "count": len(pooled),
        "mean": round(float(pooled.mean()), 2),
        "std": round(float(pooled.std(ddof=1)), 2),
    }
    for node in NODES[1:]:
        assert result[node].result == {"count": len(per_node[node])}


def test_fhir_summary_skips_unusable_observations_and_lists_suppressed_nodes() -> None:
    example = load_module("fhir_mean_histogram.py")
    weight = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "valueQuantity": {"value": 81.5, "unit": "kg", "code": "kg"},
    }
    assert example.usable_weight(weight) == 81.5
    assert example.usable_weight({**weight, "status": "entered-in-error"}) is None
    assert (
        example.usable_weight({**weight, "valueQuantity": {"value": 180, "code": "[lb_av]"}})
        is None
    )
    assert example.usable_weight({**weight, "code": {"coding": [{"code": "8302-2"}]}}) is None

    summary = example.Summary()
    for value in (20.0, 30.0, 39.9, 40.0, 159.9, 160.0):
        summary.add(value)
    assert (summary.below, summary.above) == (1, 1)
    assert summary.bins[0] == 2
    assert summary.bins[1] == 1
    assert summary.bins[-1] == 1
    result = example.final_result(
        {"a": example.Summary.from_message(summary.to_message()), "b": example.Summary()}
    )
    assert result["count"] == 6
    assert result["suppressed_nodes"] == ["b"]
    assert result["count_per_node"] == {"a": 6, "b": 0}


def centralised_fit(x: np.ndarray, y: np.ndarray, steps: int = 3000) -> np.ndarray:
    """Plain gradient descent on the pooled rows: the optimum FedAvg should approach."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        w -= x.T @ (1 / (1 + np.exp(-(x @ w))) - y) / len(y)
    return w


def log_loss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    z = x @ w
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


@pytest.mark.slow
async def test_fedavg_logreg_learns_the_pooled_model(tmp_path: Path) -> None:
    fedavg = load_module("fedavg_logreg.py")
    result = await run_example("fedavg_logreg.py", tmp_path)
    model = pd.read_parquet(final_file(tmp_path, "logreg_coefficients.parquet"))
    assert list(model.index) == ["intercept", "age", "bmi", "glucose", "smoker"]
    assert list(model.columns) == ["coefficient", "centre", "scale", "raw_coefficient"]
    assert np.isfinite(model.to_numpy()).all()

    rows = raw_cohort()
    labels = rows["label"].to_numpy(dtype=float)
    # the raw coefficients apply to the features as stored, without the example's scaling
    raw_x = np.column_stack(
        [np.ones(len(rows)), *(rows[f].to_numpy(dtype=float) for f in fedavg.FEATURES)]
    )
    raw_w = model["raw_coefficient"].to_numpy()
    accuracy = float(np.mean(((raw_x @ raw_w) > 0) == (labels > 0.5)))
    loss = log_loss(raw_w, raw_x, labels)
    assert accuracy > 0.75
    assert loss < 0.5

    # close to what training on all rows in one place achieves
    scaled = fedavg.design_matrix(rows)
    best = log_loss(centralised_fit(scaled.x, scaled.y), scaled.x, scaled.y)
    assert loss == pytest.approx(log_loss(model["coefficient"].to_numpy(), scaled.x, scaled.y))
    assert best - 1e-6 <= loss < best + 0.01

    answer = result[AGGREGATOR].result
    history = answer["loss_history"]
    assert len(history) == fedavg.ROUNDS + 1
    assert history[0] == pytest.approx(math.log(2))  # zero weights predict 1/2 everywhere
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(history))
    assert history[-1] == pytest.approx(loss, rel=1e-9)  # sample-weighted node losses = pooled
    assert answer["accuracy"] == round(accuracy, 3)
    for node in NODES[1:]:
        with (DATA / node / "s3" / "cohort" / "train.csv").open() as file:
            assert result[node].result["samples"] == sum(1 for _ in csv.DictReader(file))


@dataclasses.dataclass
class PoRecords:
    logs: dict[str, list[str]]
    progress: dict[str, int]
    status: dict[str, str | None]


async def run_recording_the_po(name: str) -> PoRecords:
    """Run an example the way run_analysis does, keeping what the PO received (which
    RunResult does not expose)."""
    main = load_main(EXAMPLES / name)
    async with LocalPlatform(3, data_dir=DATA) as platform:

        async def run_node(env: dict[str, str]) -> None:
            with use_environ(env):
                await main()

        with anyio.fail_after(45):
            async with anyio.create_task_group() as tg:
                for node in platform.nodes:
                    tg.start_soon(run_node, dict(node.env))
        return PoRecords(
            logs={node: [r.log for r in platform.logs(node)] for node in NODES},
            progress={node: platform.progress(node) for node in NODES},
            status={node: platform.status(node) for node in NODES},
        )


@pytest.mark.slow
async def test_fedavg_logreg_reports_progress_and_status_to_the_po() -> None:
    records = await run_recording_the_po("fedavg_logreg.py")
    assert records.progress == dict.fromkeys(NODES, 100)
    assert records.status == dict.fromkeys(NODES, "executed")
    # progress advanced round by round, not in one jump at the end
    steps = [line for line in records.logs[AGGREGATOR] if line.startswith("progress ")]
    assert len(steps) >= 5, records.logs[AGGREGATOR]


@pytest.mark.slow
async def test_fedavg_logreg_ships_each_rounds_loss_to_the_po() -> None:
    records = await run_recording_the_po("fedavg_logreg.py")
    lines = records.logs[AGGREGATOR]
    for number in range(1, 6):
        assert any(line.startswith(f"round {number}/5: loss ") for line in lines), lines
    assert any(line.startswith("final model: loss ") for line in lines), lines


@pytest.mark.slow
def test_generator_reproduces_the_committed_data_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    committed = {p.relative_to(DATA): p.read_bytes() for p in data_files() if p != GENERATOR}
    generated = {
        p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    }
    assert sorted(map(str, generated)) == sorted(map(str, committed))
    for name, content in committed.items():
        assert generated[name] == content, f"{name} differs from a fresh generation"
    for node in NODES:
        assert (DATA / node / "fhir" / "patients.ndjson").is_file()
        assert (DATA / node / "s3" / "cohort" / "train.parquet").is_file()


def test_example_data_stays_within_the_size_budget() -> None:
    total = sum(p.stat().st_size for p in data_files())
    assert total < SIZE_BUDGET, f"examples/data holds {total} bytes (budget {SIZE_BUDGET})"
