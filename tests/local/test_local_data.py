"""Data access: the data folder, the hub-adapter listing and the Kong proxy (PROTOCOL.md §4)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from flame_async.local import DataFolderError, LocalPlatform
from flame_async.local._data import load_data_folder

StartPlatform = Callable[..., Awaitable[LocalPlatform]]
LOINC = "http://loinc.org"


def observation(n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"o{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "1234-5" if n % 2 else "6789-0"}]},
        "subject": {"reference": f"Patient/p{n % 3}"},
    }


def write_data(root: Path) -> Path:
    """node-1: FHIR (27 Observations, 3 Patients, 1 Condition) and S3; node-2: S3; node-3: none."""
    fhir = root / "node-1" / "fhir"
    fhir.mkdir(parents=True)
    patients = [{"resourceType": "Patient", "id": f"p{n}"} for n in range(3)]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": f"urn:uuid:{p['id']}", "resource": p} for p in patients],
    }
    (fhir / "patients.json").write_bytes(orjson.dumps(bundle))
    lines = [orjson.dumps(observation(n)) for n in range(25)]
    (fhir / "observations.ndjson").write_bytes(b"\n".join(lines) + b"\n\n")
    extra = [
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Observation", "code": {"coding": [{"code": "bare"}]}},  # no id
        {**observation(99), "subject": {"reference": "urn:uuid:p2"}},
    ]
    (fhir / "sub").mkdir()
    (fhir / "sub" / "extra.json").write_bytes(orjson.dumps(extra))
    (fhir / "README.md").write_text("not data")
    s3 = root / "node-1" / "s3"
    (s3 / "sub").mkdir(parents=True)
    (s3 / "a.csv").write_bytes(b"x,y\n1,2\n")
    (s3 / "sub" / "b.csv").write_bytes(b"b")
    (s3 / "sub" / "c & d.txt").write_bytes(b"c")
    (root / "node-2" / "s3").mkdir(parents=True)
    (root / "node-2" / "s3" / "only.csv").write_bytes(b"only")
    return root


@pytest.fixture
async def platform(start_platform: StartPlatform, tmp_path: Path) -> LocalPlatform:
    return await start_platform(data_dir=write_data(tmp_path / "data"))


class Kong:
    """Raw calls to ``/kong`` of one node with its API key."""

    def __init__(self, http: aiohttp.ClientSession, platform: LocalPlatform, node_id: str):
        self.http = http
        self.node = platform.node(node_id)
        self.headers = {"apikey": self.node.env["DATA_SOURCE_TOKEN"]}

    async def get(self, path: str, **headers: str) -> tuple[int, bytes, str]:
        url = URL(self.node.gateway_url + "/kong" + path, encoded=True)
        async with self.http.get(url, headers={**self.headers, **headers}) as response:
            return response.status, await response.read(), response.content_type

    async def fhir(self, query: str, **headers: str) -> tuple[int, Any]:
        status, body, content_type = await self.get(f"/node-1-fhir/fhir/{query}", **headers)
        assert content_type == "application/fhir+json"
        return status, orjson.loads(body)

    async def search(self, query: str) -> list[str]:
        """Ids of every match, following ``next`` links as flamesdk does."""
        ids: list[str] = []
        while True:
            status, bundle = await self.fhir(query)
            assert status == 200
            assert bundle["resourceType"] == "Bundle"
            assert bundle["type"] == "searchset"
            ids += [entry["resource"]["id"] for entry in bundle.get("entry", [])]
            nexts = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not nexts:
                return ids
            query = nexts[0].rsplit("/fhir/", 1)[1]


@pytest.fixture
def kong(http: aiohttp.ClientSession, platform: LocalPlatform) -> Callable[[str], Kong]:
    return lambda node_id: Kong(http, platform, node_id)


# -- the data folder -------------------------------------------------------------------------


def test_the_data_folder_gives_each_node_its_sources(tmp_path: Path) -> None:
    data = load_data_folder(write_data(tmp_path), ["node-1", "node-2", "node-3"])
    assert data["node-1"].fhir is not None
    assert len(data["node-1"].fhir) == 3 + 25 + 3
    assert data["node-1"].s3 == (tmp_path / "node-1" / "s3").resolve()
    assert (data["node-2"].fhir, data["node-2"].s3) == (None, (tmp_path / "node-2" / "s3"))
    assert (data["node-3"].fhir, data["node-3"].s3) == (None, None)


def test_ids_given_to_resources_without_one_are_stable(tmp_path: Path) -> None:
    write_data(tmp_path)
    stores = [load_data_folder(tmp_path, ["node-1"])["node-1"].fhir for _ in range(2)]
    pages = [store.search("Observation", [("code", "bare")]) for store in stores if store]
    assert [page.total for page in pages] == [1, 1]
    assert pages[0].resources[0]["id"] == pages[1].resources[0]["id"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", b"{not json", r"bad\.json: not valid JSON"),
        ("bad.ndjson", b'{"resourceType": "Patient"}\n{oops', r"bad\.ndjson, line 2: not valid"),
        ("bad.json", b'{"id": "x"}', r"bad\.json: not a FHIR resource"),
        ("bad.json", b'[{"resourceType": "Patient"}, 3]', r"bad\.json, item 1: not a FHIR"),
        ("bad.json", b'{"resourceType": "patient"}', r"bad\.json: invalid resourceType"),
        ("bad.json", b'{"resourceType": "Patient", "id": "a/b"}', r"bad\.json: invalid id"),
        (
            "z.json",
            b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient",'
            b' "id": "p1"}}]}',
            r"z\.json, entry 0: Patient/p1 is also defined in .*patients\.json, entry 1",
        ),
    ],
)
def test_bad_fhir_files_are_named(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    write_data(tmp_path)
    (tmp_path / "node-1" / "fhir" / name).write_bytes(content)
    with pytest.raises(DataFolderError, match=message):
        load_data_folder(tmp_path, ["node-1"])


async def test_a_bad_data_folder_stops_the_platform_from_starting(tmp_path: Path) -> None:
    with pytest.raises(DataFolderError, match="does not exist"):
        async with LocalPlatform(2, data_dir=tmp_path / "missing"):
            pass
    (tmp_path / "node-1" / "fhir").mkdir(parents=True)
    (tmp_path / "node-1" / "fhir" / "x.json").write_bytes(b"[")
    platform = LocalPlatform(2, data_dir=tmp_path)
    assert platform.data_dir == tmp_path
    with pytest.raises(DataFolderError, match=re.escape(str(tmp_path / "node-1" / "fhir"))):
        async with platform:
            pass


# -- hub-adapter listing ---------------------------------------------------------------------


async def list_datastores(
    http: aiohttp.ClientSession, platform: LocalPlatform, node_id: str, path: str = ""
) -> tuple[int, Any]:
    node = platform.node(node_id)
    url = f"{node.gateway_url}/hub-adapter/kong/datastore/{path or platform.project_id}"
    headers = {"Authorization": f"Bearer {node.env['KEYCLOAK_TOKEN']}"}
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


async def test_the_hub_adapter_lists_the_nodes_sources_as_kong_services(
    platform: LocalPlatform, http: aiohttp.ClientSession
) -> None:
    status, body = await list_datastores(http, platform, "node-1")
    assert status == 200
    assert body["next"] is None
    fhir, s3 = body["data"]
    assert (fhir["name"], s3["name"]) == ("node-1-fhir", "node-1-s3")
    assert fhir["tags"] == ["type:fhir", f"project:{platform.project_id}"]
    assert s3["tags"] == ["type:s3", f"project:{platform.project_id}"]
    for service in (fhir, s3):
        uuid.UUID(service["id"])
        assert service["enabled"] is True
        assert service["protocol"] == "http"
        assert isinstance(service["created_at"], int)
        assert "routes" not in service
    assert [s["name"] for s in (await list_datastores(http, platform, "node-2"))[1]["data"]] == [
        "node-2-s3"
    ]


async def test_source_ids_are_stable_per_node_and_name(
    start_platform: StartPlatform, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first = await start_platform(data_dir=write_data(tmp_path / "d"))
    second = await start_platform(data_dir=tmp_path / "d")
    ids = [
        [s["id"] for s in (await list_datastores(http, p, "node-1"))[1]["data"]]
        for p in (first, second)
    ]
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 2


async def test_the_detailed_listing_has_the_kong_routes(
    platform: LocalPlatform, http: aiohttp.ClientSession
) -> None:
    status, body = await list_datastores(
        http, platform, "node-1", f"{platform.project_id}?detailed=true"
    )
    assert status == 200
    assert [s["routes"][0]["paths"] for s in body["data"]] == [
        ["/node-1-fhir/fhir"],
        ["/node-1-s3/s3"],
    ]


@pytest.mark.parametrize(
    ("node_id", "path", "message"),
    [
        ("node-3", "", "Project {P} has no linked data stores or consumers"),
        ("node-1", "other-project", "No data store or project found matching 'other-project'"),
    ],
)
async def test_no_data_stores_is_a_kong_404(
    platform: LocalPlatform, http: aiohttp.ClientSession, node_id: str, path: str, message: str
) -> None:
    status, body = await list_datastores(http, platform, node_id, path)
    assert status == 404
    assert body == {
        "detail": {
            "message": message.format(P=platform.project_id),
            "service": "Kong",
            "status_code": 404,
        }
    }


# -- Kong key-auth and routes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("apikey", "message"),
    [
        (None, "No API key found in request"),
        ("wrong", "Invalid authentication credentials"),
        ("{other_node}", "Invalid authentication credentials"),
    ],
)
@pytest.mark.parametrize("path", ["/node-1-fhir/fhir/Patient", "/node-1-s3/s3"])
async def test_kong_wants_the_nodes_api_key(
    platform: LocalPlatform,
    http: aiohttp.ClientSession,
    apikey: str | None,
    message: str,
    path: str,
) -> None:
    headers = {}
    if apikey is not None:
        headers["apikey"] = apikey.format(
            other_node=platform.node("node-2").env["DATA_SOURCE_TOKEN"]
        )
    async with http.get(platform.node("node-1").gateway_url + "/kong" + path, headers=headers) as r:
        assert r.status == 401
        assert await r.json() == {"message": message}


@pytest.mark.parametrize(
    ("node_id", "path"),
    [
        ("node-1", "/unknown/fhir/Patient"),
        ("node-1", "/node-1-fhir/s3"),  # a FHIR source has no S3 route
        ("node-1", "/node-1-s3/fhir/Patient"),
        ("node-1", "/node-1-fhirx"),
        ("node-1", ""),
        ("node-2", "/node-1-fhir/fhir/Patient"),  # another node's source
        ("node-3", "/node-3-fhir/fhir/Patient"),
    ],
)
async def test_kong_answers_404_for_routes_that_do_not_exist(
    kong: Callable[[str], Kong], node_id: str, path: str
) -> None:
    status, body, _ = await kong(node_id).get(path)
    assert status == 404
    assert orjson.loads(body) == {"message": "no Route matched with those values"}


# -- FHIR ------------------------------------------------------------------------------------


async def test_fhir_paging_returns_every_match_once(kong: Callable[[str], Kong]) -> None:
    ids = await kong("node-1").search("Observation?_count=10")
    assert len(ids) == 27  # three pages
    assert len(set(ids)) == 27
    assert ids[:3] == ["o0", "o1", "o2"]  # file order


async def test_a_fhir_page_is_a_searchset_bundle(
    kong: Callable[[str], Kong], platform: LocalPlatform
) -> None:
    status, bundle = await kong("node-1").fhir("Observation?_count=10&_offset=10&status=final")
    assert status == 400  # status is not supported: refused, not silently ignored
    status, bundle = await kong("node-1").fhir("Observation?code=6789-0&_count=5&_offset=5")
    assert status == 200
    base = f"{platform.node('node-1').gateway_url}/kong/node-1-fhir/fhir"
    assert bundle["total"] == 13
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links == {
        "self": f"{base}/Observation?code=6789-0&_count=5&_offset=5",
        "next": f"{base}/Observation?code=6789-0&_count=5&_offset=10",
        "previous": f"{base}/Observation?code=6789-0&_count=5&_offset=0",
    }
    entry = bundle["entry"][0]
    assert entry["fullUrl"] == f"{base}/Observation/{entry['resource']['id']}"
    assert entry["resource"]["id"] == "o10"
    assert len(bundle["entry"]) == 5


async def test_fhir_default_page_size_is_50(kong: Callable[[str], Kong]) -> None:
    _, bundle = await kong("node-1").fhir("Observation")
    assert (bundle["total"], len(bundle["entry"])) == (27, 27)
    assert [link["relation"] for link in bundle["link"]] == ["self"]
    assert "_count=50" in bundle["link"][0]["url"]


ODD = [f"o{n}" for n in range(25) if n % 2] + ["o99"]
OF_P1 = [f"o{n}" for n in range(25) if n % 3 == 1]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Observation?_id=o3,o4", ["o3", "o4"]),
        ("Observation?_id=o3&_id=o3,o4", ["o3"]),  # repeated parameters AND
        (f"Observation?code={LOINC}%7C1234-5", ODD),
        ("Observation?code=1234-5", ODD),
        ("Observation?code=bare,6789-0&_id=o1,o2", ["o2"]),  # commas OR
        ("Observation?code=%7Cbare", ["{bare}"]),  # |code: codings without a system
        ("Observation?code=http://other.org%7C1234-5", []),
        (f"Observation?code={LOINC}%7C&_count=7", [f"o{n}" for n in range(25)] + ["o99"]),
        ("Observation?subject=Patient/p1&_count=3", OF_P1),
        ("Observation?subject=p2&_id=o2,o99", ["o2", "o99"]),  # o99: urn:uuid:p2
        ("Observation?patient=p1", OF_P1),
        ("Observation?patient=Patient/p1,Patient/p0&_id=o0,o1,o2", ["o0", "o1"]),
        ("Observation?subject=Group/p1", []),
        ("Condition?patient=Patient/p1", ["c1"]),
        ("Patient", ["p0", "p1", "p2"]),
        ("Patient?_id=p1", ["p1"]),
        ("Encounter", []),
    ],
)
async def test_fhir_search_filters(
    kong: Callable[[str], Kong], query: str, expected: list[str]
) -> None:
    [bare] = await kong("node-1").search("Observation?code=bare")
    assert await kong("node-1").search(query) == [e.format(bare=bare) for e in expected]


async def test_fhir_read(kong: Callable[[str], Kong]) -> None:
    assert await kong("node-1").fhir("Patient/p1") == (
        200,
        {"resourceType": "Patient", "id": "p1"},
    )
    status, outcome = await kong("node-1").fhir("Patient/nope")
    assert status == 404
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("Observation?status=final", "not-supported"),
        ("Observation?code:text=x", "not-supported"),
        ("Observation?_count=-1", "invalid"),
        ("Observation?_offset=x", "invalid"),
    ],
)
async def test_fhir_searches_it_cannot_answer_are_refused(
    kong: Callable[[str], Kong], query: str, code: str
) -> None:
    status, outcome = await kong("node-1").fhir(query)
    assert status == 400
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code


async def test_fhir_lenient_handling_ignores_unknown_parameters(
    kong: Callable[[str], Kong],
) -> None:
    status, bundle = await kong("node-1").fhir(
        "Observation?status=final&_id=o1", Prefer="handling=lenient"
    )
    assert (status, bundle["total"]) == (200, 1)


@pytest.mark.parametrize("query", ["Observation?_summary=count", "Observation?_count=0"])
async def test_fhir_count_only(kong: Callable[[str], Kong], query: str) -> None:
    status, bundle = await kong("node-1").fhir(query)
    assert (status, bundle["total"], "entry" in bundle) == (200, 27, False)
    assert [link["relation"] for link in bundle["link"]] == ["self"]


@pytest.mark.parametrize("query", ["", "metadata", "Patient/p1/_history/1"])
async def test_fhir_paths_it_does_not_serve_are_404(
    kong: Callable[[str], Kong], query: str
) -> None:
    status, outcome = await kong("node-1").fhir(query)
    assert (status, outcome["resourceType"]) == (404, "OperationOutcome")


# -- S3 --------------------------------------------------------------------------------------


def keys(xml: bytes) -> list[str]:
    return re.findall(r"<Key>(.*?)</Key>", xml.decode())


async def test_s3_lists_every_key(kong: Callable[[str], Kong]) -> None:
    status, body, content_type = await kong("node-1").get("/node-1-s3/s3")
    assert (status, content_type) == (200, "application/xml")
    text = body.decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' in text
    assert "<Name>node-1-s3</Name>" in text
    assert "<KeyCount>3</KeyCount>" in text
    assert keys(body) == ["a.csv", "sub/b.csv", "sub/c &amp; d.txt"]
    assert "<Size>8</Size>" in text
    assert re.search(r"<LastModified>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z</LastModified>", text)
    assert (await kong("node-1").get("/node-1-s3/s3/"))[1] == body


async def test_s3_prefix_filters_the_listing(kong: Callable[[str], Kong]) -> None:
    status, body, _ = await kong("node-1").get("/node-1-s3/s3?prefix=sub/")
    assert status == 200
    assert keys(body) == ["sub/b.csv", "sub/c &amp; d.txt"]
    assert "<Prefix>sub/</Prefix>" in body.decode()
    assert "<KeyCount>2</KeyCount>" in body.decode()
    assert keys((await kong("node-1").get("/node-1-s3/s3?prefix=zzz"))[1]) == []


@pytest.mark.parametrize(
    ("key", "content"),
    [("a.csv", b"x,y\n1,2\n"), ("sub/b.csv", b"b"), ("sub/c%20%26%20d.txt", b"c")],
)
async def test_s3_objects_are_served(kong: Callable[[str], Kong], key: str, content: bytes) -> None:
    status, body, _ = await kong("node-1").get(f"/node-1-s3/s3/{key}")
    assert (status, body) == (200, content)


@pytest.mark.parametrize("key", ["missing.csv", "sub", "..%2F..%2Fnode-2%2Fs3%2Fonly.csv"])
async def test_a_missing_s3_key_is_no_such_key(kong: Callable[[str], Kong], key: str) -> None:
    status, body, content_type = await kong("node-1").get(f"/node-1-s3/s3/{key}")
    assert (status, content_type) == (404, "application/xml")
    assert "<Code>NoSuchKey</Code>" in body.decode()


async def test_another_node_serves_its_own_bucket(kong: Callable[[str], Kong]) -> None:
    status, body, _ = await kong("node-2").get("/node-2-s3/s3")
    assert (status, keys(body)) == (200, ["only.csv"])
