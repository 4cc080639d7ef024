"""Data access end to end: hub-adapter listing, FHIR paging, S3 listing and streaming, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flame_async import (
    AuthenticationError,
    DataAccessError,
    DataSourceKind,
    FhirClient,
    S3Client,
    UnknownDataSource,
    fhir_to_dataframe,
)
from flame_async._transport import Transport
from flame_async.local import LocalNode

from .conftest import running
from .faults import TokenTap

pytestmark = pytest.mark.slow


def write_data(root: Path) -> None:
    fhir = root / "node-2" / "fhir"
    fhir.mkdir(parents=True)
    patients = [{"resourceType": "Patient", "id": f"p{i}", "gender": "female"} for i in range(3)]
    (fhir / "patients.ndjson").write_text("\n".join(json.dumps(p) for p in patients))
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "29463-7" if i % 2 else "8302-2"}]
            },
            "subject": {"reference": f"Patient/p{i % 3}"},
            "valueQuantity": {"value": float(i), "unit": "kg"},
        }
        for i in range(25)
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": o} for o in observations],
    }
    (fhir / "observations.json").write_text(json.dumps(bundle))
    s3 = root / "node-2" / "s3"
    (s3 / "cohort").mkdir(parents=True)
    (s3 / "cohort" / "train.csv").write_text("a,b\n1,2\n")
    (s3 / "cohort" / "big.bin").write_bytes(bytes(range(256)) * 20_000)
    (s3 / "readme.txt").write_text("hello")


async def test_sources_fhir_paging_and_s3(tmp_path: Path, transport: str) -> None:
    write_data(tmp_path)
    async with running(3, data_dir=tmp_path, transport=transport) as (_, (agg, b, c)):
        assert agg.get_data_sources() == []  # the aggregator does not load data by default
        assert c.get_data_sources() == []  # a node without a data folder has no sources
        kinds = {s.kind for s in b.get_data_sources()}
        assert kinds == {DataSourceKind.FHIR, DataSourceKind.S3}

        fhir = b.get_data_client(
            next(s for s in b.get_data_sources() if s.kind is DataSourceKind.FHIR)
        )
        assert isinstance(fhir, FhirClient)
        pages = [page async for page in fhir.pages("Observation?_count=10")]
        assert len(pages) == 3
        ids = [r["id"] async for r in fhir.search("Observation?_count=10")]
        assert sorted(ids) == sorted(f"o{i}" for i in range(25)) and len(set(ids)) == 25
        weights = await fhir.search_all(
            "Observation?code=http://loinc.org|29463-7&subject=Patient/p1"
        )
        assert {w["id"] for w in weights} == {f"o{i}" for i in range(25) if i % 2 and i % 3 == 1}

        by_query = await b.get_fhir_data(["Patient", "Observation?_count=7"])
        assert len(by_query["Patient"]) == 3 and len(by_query["Observation?_count=7"]) == 25
        frame = fhir_to_dataframe(
            by_query["Observation?_count=7"],
            {
                "id": "id",
                "code": "code.coding.code",
                "kg": "valueQuantity.value",
                "patient": "subject.reference",
            },
        )
        assert list(frame.columns) == ["id", "code", "kg", "patient"] and len(frame) == 25
        assert frame["kg"].sum() == sum(range(25))

        s3 = b.get_data_client(f"{b.node_id}-s3")
        assert isinstance(s3, S3Client)
        assert sorted(await s3.list()) == ["cohort/big.bin", "cohort/train.csv", "readme.txt"]
        assert sorted(await s3.list("cohort/")) == ["cohort/big.bin", "cohort/train.csv"]
        chunks = []
        async with s3.open("cohort/big.bin", chunk_size=65536) as stream:
            chunks = [len(chunk) async for chunk in stream]
        assert sum(chunks) == 256 * 20_000 and len(chunks) > 1  # streamed, not one blob
        assert (await b.get_s3_data(["readme.txt"])) == {"readme.txt": b"hello"}


async def test_data_errors_name_the_source_and_what_was_asked(
    tmp_path: Path, transport: str
) -> None:
    write_data(tmp_path)
    async with running(3, data_dir=tmp_path, transport=transport) as (_, (_agg, b, c)):
        with pytest.raises(UnknownDataSource, match="available: node-2-fhir, node-2-s3"):
            b.get_data_client("nope")
        with pytest.raises(UnknownDataSource, match="no fhir data source"):
            await c.get_fhir_data(["Patient"])
        fhir = b.get_data_client("node-2-fhir")
        with pytest.raises(
            DataAccessError, match=r"'Patient/missing'.*node-2-fhir.*HTTP 404"
        ) as info:
            await fhir.get("Patient/missing")
        assert info.value.status == 404 and info.value.source == "node-2-fhir"
        s3 = b.get_data_client("node-2-s3")
        with pytest.raises(DataAccessError, match="HTTP 404"):
            await s3.get("no/such/key")


async def test_service_errors_map_to_specific_errors(transport: str) -> None:
    taps: dict[str, TokenTap] = {}

    def wrap(node: LocalNode, inner: Transport) -> Transport:
        taps[node.node_id] = tap = TokenTap(inner)
        return tap

    async with running(2, transport=transport, wrap=wrap) as (_, (a, b)):
        # the node's requests carry an expired token (the node itself never takes one: its
        # /token_refresh refuses it), so the services refuse them
        taps[a.node_id].forge = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln"
        with pytest.raises(AuthenticationError, match="broker answered 401"):
            await a.send_message(b.node_id, {}, category="x", timeout=2)
        with pytest.raises(AuthenticationError, match=r"storage answered 403.*JWT is malformed"):
            await a.save_intermediate_result_local(1)
