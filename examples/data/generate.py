"""Generate the small synthetic data set the examples run on (deterministic).

Three hospitals, ``node-1`` .. ``node-3``, each with its own folder in the layout the local
platform serves (``--data DIR``: ``DIR/<node>/fhir/`` and ``DIR/<node>/s3/``)::

    <node>/fhir/patients.ndjson        FHIR R4 Patients (id, gender, birthDate), one per line
    <node>/fhir/observations.json      a FHIR Bundle of Observations: body height (LOINC 8302-2),
                                       body weight (29463-7) and glucose (2339-0)
    <node>/s3/cohort/train.csv         a binary-classification table: age, bmi, glucose,
    <node>/s3/cohort/train.parquet     smoker, label (the same rows in both files)

The nodes differ on purpose, so that federated results are not what any one node sees:

* sizes: 40, 60 and 80 patients (120, 180 and 240 cohort rows);
* populations: ``node-1`` is older, ``node-2`` younger and leaner, ``node-3`` heavier with higher
  glucose; every table and weight distribution is shifted accordingly;
* a few Observations have status ``entered-in-error`` and an implausible value (a typo by a
  factor of ten), as real exports do; analyses must skip them.

The cohort labels come from one logistic model shared by all nodes (so a federated model can
learn it), applied to node-specific feature distributions (so local models would differ).

Everything comes from fixed seeds and is written with stable formatting, so running this again
reproduces the files byte for byte (the Parquet files for a given pyarrow version)::

    python examples/data/generate.py                 # rewrite examples/data/<node>/...
    python examples/data/generate.py --out /tmp/d    # somewhere else

It needs only the standard library, except for the Parquet files (pyarrow; skipped with a
note when pyarrow is not installed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODES = ("node-1", "node-2", "node-3")
SEED = 20_241_122
REFERENCE_DATE = dt.date(2024, 1, 1)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
HEIGHT = ("8302-2", "Body height", "cm")
WEIGHT = ("29463-7", "Body weight", "kg")
GLUCOSE = ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL")
CATEGORY = {
    HEIGHT[0]: "vital-signs",
    WEIGHT[0]: "vital-signs",
    GLUCOSE[0]: "laboratory",
}

COHORT_COLUMNS = ("age", "bmi", "glucose", "smoker", "label")
# The one "true" model behind every node's labels, on features scaled as
# (value - centre) / scale with the reference values below (the FedAvg example uses the same).
TRUE_INTERCEPT = -0.6
TRUE_COEFFICIENTS = {"age": 0.9, "bmi": 0.8, "glucose": 1.1, "smoker": 1.0}
REFERENCE_SCALING = {"age": (50.0, 15.0), "bmi": (27.0, 5.0), "glucose": (100.0, 25.0)}


@dataclass(frozen=True)
class Profile:
    """How one node's population looks."""

    patients: int
    cohort_rows: int
    age: tuple[float, float]  # mean, sd (years)
    bmi: tuple[float, float]  # mean, sd (kg/m2)
    glucose: tuple[float, float]  # mean, sd (mg/dL)
    smoker_rate: float


PROFILES = {
    "node-1": Profile(40, 120, age=(63, 11), bmi=(27.5, 4.0), glucose=(104, 16), smoker_rate=0.18),
    "node-2": Profile(60, 180, age=(44, 13), bmi=(24.5, 3.5), glucose=(94, 12), smoker_rate=0.30),
    "node-3": Profile(80, 240, age=(55, 12), bmi=(31.0, 5.0), glucose=(115, 22), smoker_rate=0.24),
}


def _clip(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _observation(
    obs_id: str,
    patient_id: str,
    kind: tuple[str, str, str],
    *,
    value: float,
    when: dt.datetime,
    status: str,
) -> dict[str, Any]:
    code, display, unit = kind
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": CATEGORY[code],
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _status(rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.03:
        return "entered-in-error"
    if draw < 0.08:
        return "amended"
    return "final"


def _when(rng: random.Random) -> dt.datetime:
    day = dt.datetime(2023, 1, 1, 8, 0, tzinfo=dt.UTC) + dt.timedelta(days=rng.randrange(365))
    return day + dt.timedelta(minutes=15 * rng.randrange(40))


def fhir_resources(node: str, rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The node's Patients and its Observation Bundle."""
    profile = PROFILES[node]
    patients: list[dict[str, Any]] = []
    observations: list[dict[str, Any]] = []

    def observe(patient_id: str, kind: tuple[str, str, str], value: float) -> None:
        status = _status(rng)
        if status == "entered-in-error":
            value *= 10  # the typo that made someone retract it
        obs_id = f"{node}-obs-{len(observations) + 1:04d}"
        observations.append(
            _observation(
                obs_id, patient_id, kind, value=round(value, 1), when=_when(rng), status=status
            )
        )

    for index in range(1, profile.patients + 1):
        patient_id = f"{node}-pat-{index:03d}"
        gender = "female" if rng.random() < 0.5 else "male"
        age_days = int(_clip(rng.gauss(*profile.age), 18, 95) * 365.25)
        birth = REFERENCE_DATE - dt.timedelta(days=age_days)
        patients.append(
            {
                "resourceType": "Patient",
                "id": patient_id,
                "gender": gender,
                "birthDate": birth.isoformat(),
            }
        )
        height = _clip(rng.gauss(178 if gender == "male" else 165, 7), 140, 210)
        bmi = _clip(rng.gauss(*profile.bmi), 16, 50)
        observe(patient_id, HEIGHT, height)
        for _ in range(rng.randint(1, 3)):  # weighed at one to three visits
            observe(patient_id, WEIGHT, bmi * (height / 100) ** 2 + rng.gauss(0, 1.5))
        for _ in range(rng.randint(1, 2)):
            observe(patient_id, GLUCOSE, _clip(rng.gauss(*profile.glucose), 55, 300))
    bundle = {
        "resourceType": "Bundle",
        "id": f"{node}-observations",
        "type": "collection",
        "entry": [{"resource": resource} for resource in observations],
    }
    return patients, bundle


def cohort_rows(node: str, rng: random.Random) -> list[dict[str, float | int]]:
    """The node's classification table: features with node-specific shifts, shared model."""
    profile = PROFILES[node]
    rows: list[dict[str, float | int]] = []
    for _ in range(profile.cohort_rows):
        features: dict[str, float | int] = {
            "age": int(_clip(rng.gauss(*profile.age), 18, 95)),
            "bmi": round(_clip(rng.gauss(*profile.bmi), 16, 50), 1),
            "glucose": round(_clip(rng.gauss(*profile.glucose), 55, 300), 1),
            "smoker": int(rng.random() < profile.smoker_rate),
        }
        logit = TRUE_INTERCEPT + sum(
            coefficient * _scaled(name, float(features[name]))
            for name, coefficient in TRUE_COEFFICIENTS.items()
        )
        features["label"] = int(rng.random() < 1 / (1 + math.exp(-logit)))
        rows.append(features)
    return rows


def _scaled(name: str, value: float) -> float:
    centre, scale = REFERENCE_SCALING.get(name, (0.0, 1.0))
    return (value - centre) / scale


def _csv_text(rows: list[dict[str, float | int]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COHORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_parquet(rows: list[dict[str, float | int]], path: Path) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    types = {"age": pa.int64(), "bmi": pa.float64(), "glucose": pa.float64()}
    table = pa.table(
        {
            name: pa.array([row[name] for row in rows], type=types.get(name, pa.int8()))
            for name in COHORT_COLUMNS
        }
    )
    pq.write_table(table, path, compression="zstd")
    return True


def generate(out: Path) -> list[Path]:
    """Write every node's files under ``out``; return the paths written."""
    written: list[Path] = []
    for index, node in enumerate(NODES):
        # one generator per node and purpose: changing one never shifts the others
        fhir_rng = random.Random(SEED + 100 * index)
        cohort_rng = random.Random(SEED + 100 * index + 1)
        fhir_dir = out / node / "fhir"
        s3_dir = out / node / "s3" / "cohort"
        fhir_dir.mkdir(parents=True, exist_ok=True)
        s3_dir.mkdir(parents=True, exist_ok=True)

        patients, bundle = fhir_resources(node, fhir_rng)
        path = fhir_dir / "patients.ndjson"
        path.write_text("".join(_json_line(p) + "\n" for p in patients), encoding="utf-8")
        written.append(path)
        path = fhir_dir / "observations.json"
        path.write_text(json.dumps(bundle, indent=1) + "\n", encoding="utf-8")
        written.append(path)

        rows = cohort_rows(node, cohort_rng)
        path = s3_dir / "train.csv"
        path.write_text(_csv_text(rows), encoding="utf-8")
        written.append(path)
        path = s3_dir / "train.parquet"
        if _write_parquet(rows, path):
            written.append(path)
        else:
            print(f"pyarrow is not installed: skipped {path}")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the examples' synthetic data.")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the folder of this script, examples/data)",
    )
    args = parser.parse_args(argv)
    written = generate(args.out)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files ({total / 1024:.0f} KiB) under {args.out}")


if __name__ == "__main__":
    main()
