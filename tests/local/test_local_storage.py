"""The storage service behind every gateway (PROTOCOL.md §3.2)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import statistics
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from flame_async.local import LocalPlatform
from flame_async.local._storage import laplace_noise
from flame_async.local._tokens import TokenIssuer

from .helpers import Gateway

StartPlatform = Callable[..., Awaitable[LocalPlatform]]


def form(content: Any = b"payload", *, filename: str | None = "data.bin", **fields: str) -> Any:
    """A multipart form with the part ``file`` (unless ``content`` is None) and ``fields``."""
    if filename is None and content is not None:  # FormData always names the file
        writer = aiohttp.MultipartWriter("form-data")
        writer.append(content).set_content_disposition("form-data", name="file")
        for name, value in fields.items():
            writer.append(value).set_content_disposition("form-data", name=name)
        return writer
    data = aiohttp.FormData(quote_fields=False)  # filenames as a browser sends them
    if content is not None:
        data.add_field(
            "file",
            content,
            filename=filename,
            content_type=fields.pop("content_type", "application/octet-stream"),
        )
    for name, value in fields.items():
        data.add_field(name, value)
    return data


class Storage(Gateway):
    """Raw calls to ``/storage`` of one node."""

    async def put(
        self, path: str, data: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.http.put(
            self.url("/storage" + path), data=data, headers={**self.auth, **(headers or {})}
        ) as response:
            body = await response.read()
            return response.status, (await response.json() if body else None)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, bytes, str]:
        async with self.http.get(
            self.url("/storage" + path), headers=self.auth, **kwargs
        ) as response:
            return response.status, await response.read(), response.content_type

    async def get_json(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, body, _ = await self.get(path, **kwargs)
        return status, orjson.loads(body) if body else None

    async def post(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.http.post(
            self.url("/storage" + path), params=params, headers=self.auth
        ) as response:
            return response.status, await response.json()


@pytest.fixture
def storage(http: aiohttp.ClientSession, platform: LocalPlatform) -> Callable[[str], Storage]:
    return lambda node_id: Storage(http, platform, platform.node(node_id))


def tail(url: str) -> str:
    """What the SDK does with a storage URL: the part after the last ``/``."""
    return url.rsplit("/", maxsplit=1)[-1]


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/storage/final"),
        ("PUT", "/storage/intermediate"),
        ("GET", f"/storage/intermediate/{uuid.uuid4()}?remote_node_id=node-1"),
        ("GET", "/storage/local/tags"),
        ("POST", "/storage/local/tags?tag_name=x&object_id=y"),
        ("GET", "/hub-adapter/kong/datastore/{P}"),
    ],
)
@pytest.mark.parametrize(
    ("authorization", "status", "detail"),
    [
        (None, 401, "Not authenticated"),
        ("Basic dXNlcjpwdw==", 401, "Not authenticated"),
        ("Bearer not-a-jwt", 403, "JWT is malformed"),
        ("Bearer {other_secret}", 403, "JWT is malformed"),
        ("Bearer {expired}", 403, "JWT is malformed"),
    ],
)
async def test_storage_and_hub_adapter_want_a_valid_bearer_token(
    platform: LocalPlatform,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    authorization: str | None,
    status: int,
    detail: str,
) -> None:
    tokens = {
        "other_secret": TokenIssuer(platform.analysis_id, lifetime=60).mint("node-1"),
        "expired": TokenIssuer(platform.analysis_id, lifetime=60).mint("node-1", lifetime=-5),
    }
    headers = {} if authorization is None else {"Authorization": authorization.format(**tokens)}
    url = platform.node("node-1").gateway_url + path.format(P=platform.project_id)
    async with http.request(method, url, headers=headers, data=form()) as response:
        assert response.status == status
        assert await response.json() == {"detail": detail}


# -- final -----------------------------------------------------------------------------------


async def test_final_results_are_written_to_the_out_dir_per_node(
    start_platform: StartPlatform, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    platform = await start_platform(out_dir=tmp_path / "out")
    node = Storage(http, platform, platform.node("node-2"))
    status, body = await node.put("/final", form(b"42", filename="result.txt"))
    assert (status, body) == (204, None)
    target = tmp_path / "out" / "final" / "node-2" / "result.txt"
    assert target.read_bytes() == b"42"
    assert platform.final_results() == [target]
    assert platform.final_results("node-2") == [target]
    assert platform.final_results("node-1") == []
    with pytest.raises(KeyError):
        platform.final_results("node-9")
    # The same filename again replaces the file, like an object in a bucket.
    assert (await node.put("/final", form(b"43", filename="result.txt")))[0] == 204
    assert target.read_bytes() == b"43"
    assert platform.final_results() == [target]
    assert not list(target.parent.glob(".*"))  # no partial upload left behind


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("../../escape.txt", "escape.txt"),
        ("C:\\temp\\win.txt", "win.txt"),
        ("..", "result.bin"),
        (".hidden", "hidden"),
        (None, "result.bin"),
        ("tab\tbed.bin", "tabbed.bin"),
    ],
)
async def test_final_filenames_are_sanitised(
    start_platform: StartPlatform,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    filename: str | None,
    stored: str,
) -> None:
    platform = await start_platform(out_dir=tmp_path / "out")
    node = Storage(http, platform, platform.node("node-1"))
    assert (await node.put("/final", form(b"x", filename=filename)))[0] == 204
    assert platform.final_results() == [tmp_path / "out" / "final" / "node-1" / stored]


async def test_without_out_dir_final_results_live_until_the_platform_exits(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with LocalPlatform(2, state_dir=tmp_path, po_interval=3600) as platform:
        node = Storage(http, platform, platform.node("node-1"))
        assert (await node.put("/final", form(b"r", filename="r.txt")))[0] == 204
        [path] = platform.final_results()
        assert path.read_bytes() == b"r"
        assert not path.is_relative_to(tmp_path)
    assert not path.exists()
    assert not path.parents[2].exists()  # the platform's temporary folder is gone


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (form(None, other="x"), ["body", "file"]),
        (b"not a form", ["body", "file"]),
    ],
)
async def test_final_without_a_file_is_unprocessable(
    storage: Callable[[str], Storage], data: Any, loc: list[str]
) -> None:
    status, body = await storage("node-1").put("/final", data)
    assert status == 422
    assert body["detail"][0]["loc"] == loc
    assert body["detail"][0]["type"] == "missing"


async def test_a_malformed_multipart_body_is_a_bad_request(
    storage: Callable[[str], Storage],
) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    status, body = await storage("node-1").put(
        "/final", b"--xyz\r\nContent-Disposition: form-data; name=file\r\n\r\nabc", headers=headers
    )
    assert status == 400
    assert "malformed" in body["detail"]


# -- final with local differential privacy ---------------------------------------------------


def test_laplace_noise_has_the_laplace_mean_and_scale() -> None:
    rng = random.Random(20260101)
    for scale in (0.5, 3.0):
        samples = [laplace_noise(rng, scale) for _ in range(20_000)]
        # mean 0 and E|X| = scale; the standard errors are ~1 % of scale, the bounds ~6 %.
        assert abs(statistics.fmean(samples)) < 0.06 * scale
        assert 0.94 * scale < statistics.fmean(abs(x) for x in samples) < 1.06 * scale


async def test_localdp_stores_the_number_with_laplace_noise(
    start_platform: StartPlatform, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    platform = await start_platform(out_dir=tmp_path)
    node = Storage(http, platform, platform.node("node-1"))
    values = []
    for i in range(20):
        data = form(b"100", filename=f"dp{i}.txt", epsilon="1", sensitivity="2")
        assert (await node.put("/final/localdp", data))[0] == 204
        values.append(float((tmp_path / "final" / "node-1" / f"dp{i}.txt").read_text("utf-8")))
    # Laplace(0, 2): P(|noise| > 200) = e^-100, and 20 equal draws are impossible in practice.
    assert all(abs(v - 100) < 200 for v in values)
    assert len(set(values)) == 20
    # A tiny scale leaves the number (almost) as it is.
    data = form(b" 7.5\n", filename="tiny.txt", epsilon="1e6", sensitivity="1")
    assert (await node.put("/final/localdp", data))[0] == 204
    assert abs(float((tmp_path / "final" / "node-1" / "tiny.txt").read_text()) - 7.5) < 1e-3
    assert len(platform.final_results("node-1")) == 21


@pytest.mark.parametrize("content", [b"abc", b"nan", b"", b"1" * 2000, b"\xff\xfe"])
async def test_localdp_refuses_a_file_that_is_not_a_number(
    storage: Callable[[str], Storage], content: bytes
) -> None:
    data = form(content, epsilon="1", sensitivity="1")
    assert await storage("node-1").put("/final/localdp", data) == (
        400,
        {"detail": "The uploaded file does not contain a number"},
    )


@pytest.mark.parametrize(
    ("fields", "name", "kind"),
    [
        ({"sensitivity": "1"}, "epsilon", "missing"),
        ({"epsilon": "1"}, "sensitivity", "missing"),
        ({"epsilon": "x", "sensitivity": "1"}, "epsilon", "float_parsing"),
        ({"epsilon": "0", "sensitivity": "1"}, "epsilon", "greater_than"),
        ({"epsilon": "1", "sensitivity": "-2"}, "sensitivity", "greater_than"),
        ({"epsilon": "inf", "sensitivity": "1"}, "epsilon", "greater_than"),
    ],
)
async def test_localdp_needs_positive_epsilon_and_sensitivity(
    storage: Callable[[str], Storage], fields: dict[str, str], name: str, kind: str
) -> None:
    status, body = await storage("node-1").put("/final/localdp", form(b"abc", **fields))
    assert status == 422
    [error] = body["detail"]
    assert (error["loc"], error["type"]) == (["body", name], kind)


# -- intermediate ----------------------------------------------------------------------------


async def test_intermediate_objects_are_read_once_by_their_receiver(
    storage: Callable[[str], Storage], platform: LocalPlatform
) -> None:
    sender, receiver = storage("node-1"), storage("node-2")
    status, body = await sender.put("/intermediate", form(b"secret", remote_node_id="node-2"))
    assert status == 200
    object_id = str(uuid.UUID(body["object_id"]))
    # Like the real service: absolute, from the Host header, without the /storage prefix.
    assert body["url"] == (
        f"{sender.node.gateway_url}/intermediate/{object_id}?remote_node_id=node-1"
    )
    path = f"/intermediate/{tail(body['url'])}"
    assert await receiver.get(path) == (200, b"secret", "application/octet-stream")
    status, detail = await receiver.get_json(path)
    assert (status, detail) == (404, {"detail": f"Object with ID {object_id} does not exist"})


async def test_an_intermediate_object_is_kept_for_its_receiver_and_sender_only(
    storage: Callable[[str], Storage],
) -> None:
    _, body = await storage("node-1").put("/intermediate", form(b"x", remote_node_id="node-2"))
    object_id = body["object_id"]
    refused = f"Failed to decrypt file with ID {object_id} which was encrypted by node"
    # Not the receiver (its own token, on its own gateway): 403, naming the receiver.
    status, answer = await storage("node-3").get_json(
        f"/intermediate/{object_id}?remote_node_id=node-1"
    )
    assert (status, answer["detail"]) == (
        403,
        f"object {object_id} was uploaded for node-2, not for node-3: only its receiver "
        "reads it, on its own gateway",
    )
    # The receiver, naming the wrong sender.
    status, answer = await storage("node-2").get_json(
        f"/intermediate/{object_id}?remote_node_id=node-3"
    )
    assert (status, answer["detail"]) == (400, f"{refused} node-3.")
    # Refusals do not consume the object.
    assert (await storage("node-2").get(f"/intermediate/{object_id}?remote_node_id=node-1"))[
        :2
    ] == (200, b"x")


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ("", 422, None),
        ("?remote_node_id=node-9", 404, "Remote node with ID node-9 does not exist."),
    ],
)
async def test_reading_an_intermediate_object_needs_a_known_sender(
    storage: Callable[[str], Storage], query: str, status: int, detail: str | None
) -> None:
    _, body = await storage("node-1").put("/intermediate", form(b"x", remote_node_id="node-2"))
    code, answer = await storage("node-2").get_json(f"/intermediate/{body['object_id']}{query}")
    assert code == status
    if detail is not None:
        assert answer == {"detail": detail}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/intermediate/not-a-uuid?remote_node_id=node-1", 422),
        (f"/intermediate/{uuid.UUID(int=7)}?remote_node_id=node-1", 404),
    ],
)
async def test_reading_an_unknown_intermediate_object(
    storage: Callable[[str], Storage], path: str, status: int
) -> None:
    assert (await storage("node-2").get(path))[0] == status


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        (form(b"x"), 422, [["body", "remote_node_id"]]),
        (form(None, remote_node_id="node-2"), 422, [["body", "file"]]),
        (form(b"x", remote_node_id="node-9"), 404, "Remote node with ID node-9 does not exist."),
    ],
)
async def test_uploading_an_intermediate_object_needs_a_file_and_a_known_receiver(
    storage: Callable[[str], Storage], data: Any, status: int, detail: Any
) -> None:
    code, body = await storage("node-1").put("/intermediate", data)
    assert code == status
    if isinstance(detail, list):
        assert [error["loc"] for error in body["detail"]] == detail
    else:
        assert body == {"detail": detail}


async def test_concurrent_reads_of_an_intermediate_object_hand_it_out_once(
    storage: Callable[[str], Storage],
) -> None:
    _, body = await storage("node-1").put("/intermediate", form(b"y", remote_node_id="node-2"))
    path = f"/intermediate/{tail(body['url'])}"
    results = await asyncio.gather(*(storage("node-2").get(path) for _ in range(5)))
    assert sorted(status for status, _, _ in results) == [200, 404, 404, 404, 404]


async def test_urls_use_the_host_the_request_came_through(
    platform: LocalPlatform, http: aiohttp.ClientSession
) -> None:
    node = platform.node("node-1")
    headers = {"Authorization": f"Bearer {node.env['KEYCLOAK_TOKEN']}", "Host": node.nginx_host}
    async with http.put(
        platform.shared_url + "/storage/intermediate",
        data=form(b"z", remote_node_id="node-3"),
        headers=headers,
    ) as response:
        body = await response.json()
    assert URL(body["url"]).host == node.nginx_host
    assert URL(body["url"]).path == f"/intermediate/{body['object_id']}"


# -- local -----------------------------------------------------------------------------------


async def test_local_objects_come_back_with_their_content_type(
    storage: Callable[[str], Storage],
) -> None:
    node = storage("node-1")
    status, body = await node.put("/local", form(b"local", content_type="application/x-test"))
    assert status == 200
    assert body["url"] == f"{node.node.gateway_url}/local/{body['object_id']}"
    path = f"/local/{tail(body['url'])}"
    assert await node.get(path) == (200, b"local", "application/x-test")
    assert await node.get(path) == (200, b"local", "application/x-test")  # not one-shot
    # Local storage is the node's own: other nodes do not see it.
    missing = {"detail": f"Object with ID {body['object_id']} does not exist"}
    assert await storage("node-2").get_json(path) == (404, missing)


@pytest.mark.parametrize(
    ("path", "status"), [("/local/nope", 422), (f"/local/{uuid.uuid4()}", 404)]
)
async def test_reading_an_unknown_local_object(
    storage: Callable[[str], Storage], path: str, status: int
) -> None:
    assert (await storage("node-1").get(path))[0] == status


async def test_tagged_local_objects_are_listed_by_tag(storage: Callable[[str], Storage]) -> None:
    node = storage("node-1")
    _, first = await node.put("/local", form(b"1", filename="model.pkl", tag="round-1"))
    _, second = await node.put("/local", form(b"2", filename=None, tag="round-1"))
    await node.put("/local", form(b"3", tag="other"))
    base = node.node.gateway_url
    assert await node.get_json("/local/tags") == (
        200,
        {
            "tags": [
                {"name": "round-1", "url": f"{base}/local/tags/round-1"},
                {"name": "other", "url": f"{base}/local/tags/other"},
            ]
        },
    )
    assert await node.get_json("/local/tags/round-1") == (
        200,
        {
            "results": [
                {"filename": "model.pkl", "url": first["url"]},
                {"filename": "data.bin", "url": second["url"]},
            ]
        },
    )
    assert await node.get_json("/local/tags/unknown") == (200, {"results": []})
    assert await storage("node-2").get_json("/local/tags") == (200, {"tags": []})


@pytest.mark.parametrize("tag", ["a", "0z", "abc", "a-b", "a--b", "x" * 32, "1-2-3"])
async def test_valid_tags(storage: Callable[[str], Storage], tag: str) -> None:
    assert (await storage("node-1").put("/local", form(b"x", tag=tag)))[0] == 200


@pytest.mark.parametrize("tag", ["-a", "a-", "-", "Ab", "a_b", "a b", "x" * 33, "ä"])
async def test_invalid_tags_are_refused_and_nothing_is_stored(
    storage: Callable[[str], Storage], platform: LocalPlatform, tmp_path: Path, tag: str
) -> None:
    status, body = await storage("node-1").put("/local", form(b"x", tag=tag))
    assert status == 400
    assert body["detail"].startswith(f"Invalid tag `{tag}`")
    assert await storage("node-1").get_json("/local/tags") == (200, {"tags": []})
    objects = tmp_path / "state" / "projects" / platform.project_id / "nodes" / "node-1"
    assert not list((objects / "objects").iterdir())


async def test_tagging_an_existing_object(storage: Callable[[str], Storage]) -> None:
    node = storage("node-1")
    _, body = await node.put("/local", form(b"x"))
    object_id = body["object_id"]
    assert await node.post("/local/tags", tag_name="t1", object_id=object_id) == (
        200,
        {"filename": "data.bin", "url": body["url"]},
    )
    # Tagging again is idempotent; a different filename conflicts (as in the real service).
    assert (await node.post("/local/tags", tag_name="t2", object_id=object_id))[0] == 200
    status, answer = await node.post(
        "/local/tags", tag_name="t3", object_id=object_id, filename="other.bin"
    )
    assert status == 400
    assert "different filename" in answer["detail"]
    assert await node.get_json("/local/tags/t1") == (
        200,
        {"results": [{"filename": "data.bin", "url": body["url"]}]},
    )
    assert [t["name"] for t in (await node.get_json("/local/tags"))[1]["tags"]] == ["t1", "t2"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"tag_name": "t", "object_id": str(uuid.UUID(int=1))}, 404),
        ({"tag_name": "Bad!", "object_id": "{id}"}, 400),
        ({"object_id": "{id}"}, 422),
        ({"tag_name": "t"}, 422),
        ({"tag_name": "t", "object_id": "not-a-uuid"}, 422),
    ],
)
async def test_tagging_errors(
    storage: Callable[[str], Storage], params: dict[str, str], status: int
) -> None:
    node = storage("node-1")
    _, body = await node.put("/local", form(b"x"))
    params = {k: v.format(id=body["object_id"]) for k, v in params.items()}
    assert (await node.post("/local/tags", **params))[0] == status


async def test_local_objects_and_tags_persist_for_the_project(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    options: dict[str, Any] = {"state_dir": tmp_path / "state", "po_interval": 3600}
    async with LocalPlatform(2, project_id="proj-1", **options) as first:
        node = Storage(http, first, first.node("node-2"))
        _, body = await node.put("/local", form(b"kept", filename="k.bin", tag="keep"))
    index = tmp_path / "state" / "projects" / "proj-1" / "nodes" / "node-2" / "index.json"
    assert index.is_file()

    async with LocalPlatform(2, project_id="proj-1", **options) as second:
        node = Storage(http, second, second.node("node-2"))
        status, tagged = await node.get_json("/local/tags/keep")
        assert status == 200
        [result] = tagged["results"]
        assert result["filename"] == "k.bin"
        assert tail(result["url"]) == body["object_id"]
        assert result["url"].startswith(second.node("node-2").gateway_url)
        assert (await node.get(f"/local/{body['object_id']}"))[:2] == (200, b"kept")

    async with LocalPlatform(2, project_id="proj-2", **options) as other:
        node = Storage(http, other, other.node("node-2"))
        assert await node.get_json("/local/tags") == (200, {"tags": []})
        assert (await node.get(f"/local/{body['object_id']}"))[0] == 404


def test_the_state_dir_defaults_to_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert LocalPlatform(1).state_dir == tmp_path / "flame-async" / "state"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert LocalPlatform(1).state_dir == Path.home() / ".cache" / "flame-async" / "state"
    assert LocalPlatform(1, state_dir=tmp_path).state_dir == tmp_path


# -- large bodies ----------------------------------------------------------------------------

_LARGE = 64 << 20


async def test_large_bodies_stream_through_with_bounded_memory(
    storage: Callable[[str], Storage], tmp_path: Path
) -> None:
    source = tmp_path / "large.bin"
    digest = hashlib.sha256()
    with source.open("wb") as file:
        block = random.Random(5).randbytes(1 << 20)
        for i in range(_LARGE >> 20):
            chunk = bytes([i]) + block[1:]
            digest.update(chunk)
            file.write(chunk)
    sender, receiver = storage("node-1"), storage("node-2")

    tracemalloc.start()
    try:
        with source.open("rb") as file:
            status, body = await sender.put(
                "/intermediate", form(file, filename="large.bin", remote_node_id="node-2")
            )
        assert status == 200
        received, size = hashlib.sha256(), 0
        async with receiver.http.get(
            receiver.url(f"/storage/intermediate/{tail(body['url'])}"), headers=receiver.auth
        ) as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(1 << 20):
                received.update(chunk)
                size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (size, received.hexdigest()) == (_LARGE, digest.hexdigest())
    # Server and client together never held more than a small fraction of the body.
    assert peak < _LARGE // 8, f"peak traced memory {peak / 2**20:.1f} MiB"
