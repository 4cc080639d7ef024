"""HubClient against the in-test Hub: errors, retries, paging, writes, streams, lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from flame_async.config import RetryPolicy
from flame_async.errors import (
    ConfigError,
    HubConflict,
    HubRequestInvalid,
    HubResponseInvalid,
    InvalidArgument,
    NotFoundError,
    PermissionDenied,
    RequestTimeout,
    SDKStateError,
    ServiceError,
    ServiceUnavailable,
)
from flame_async.hub import HubClient, PasswordAuth, RobotAuth, UploadFile
from flame_async.hub._session import _retry_after, hub_error
from flame_async.hub._storage import safe_extract

from .conftest import Fault, MiniHub, client_for

# -- error mapping (sans I/O) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, HubRequestInvalid),
        (422, HubRequestInvalid),
        (403, PermissionDenied),
        (404, NotFoundError),
        (409, HubConflict),
        (500, ServiceError),
        (502, ServiceError),
    ],
)
def test_statuses_map_to_typed_errors(status: int, kind: type[ServiceError]) -> None:
    body = b'{"statusCode": 1, "code": "SOME_CODE", "message": "said so", "issues": [1]}'
    error = hub_error(status, body, {}, service="hub core", method="GET", url="http://h/x")
    assert type(error) is kind
    assert (error.status, error.code, error.message, error.issues) == (
        status,
        "SOME_CODE",
        "said so",
        (1,),
    )
    assert "GET http://h/x" in str(error)


def test_a_non_json_error_body_is_shown_by_its_first_200_characters() -> None:
    body = b"<html>" + b"x" * 500
    error = hub_error(502, body, {}, service="hub core", method="GET", url="u")
    assert error.detail == (b"<html>" + b"x" * 194).decode()
    assert error.code == ""


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert _retry_after({"retry-after": "1"}) == 1.0
    assert _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert _retry_after({"retry-after": "soon"}) is None
    assert _retry_after({}) is None
    assert _retry_after({"ratelimit-reset": "58"}) == 58.0  # authup's rate limiter
    assert _retry_after({"retry-after": "60", "ratelimit-reset": "17"}) == 17.0


# -- configuration and lifecycle ---------------------------------------------------------------


def test_there_are_no_default_urls() -> None:
    with pytest.raises(ConfigError) as info:
        HubClient.from_env({"FLAME_HUB_USER": "admin", "FLAME_HUB_PASSWORD": "x"})
    text = str(info.value)
    assert "FLAME_HUB_AUTH_URL" in text
    assert "FLAME_HUB_CORE_URL" in text
    assert "FLAME_HUB_STORAGE_URL" in text
    with pytest.raises(ConfigError, match="no credentials"):
        HubClient.from_env({f"FLAME_HUB_{s}_URL": "http://h" for s in ("AUTH", "CORE", "STORAGE")})


def test_from_env_picks_the_credentials_and_the_casing() -> None:
    env = {f"FLAME_HUB_{s}_URL": "http://h/" for s in ("AUTH", "CORE", "STORAGE")}
    env |= {
        "FLAME_HUB_ROBOT_ID": "rid",
        "FLAME_HUB_ROBOT_SECRET": "s3cret",
        "FLAME_HUB_WIRE_CASE": "camel",
    }
    client = HubClient.from_env(env)
    assert "RobotAuth('rid'" in repr(client)
    assert "s3cret" not in repr(client)
    assert "camel" in repr(client)
    with pytest.raises(ConfigError, match="FLAME_HUB_PASSWORD"):
        HubClient.from_env(env | {"FLAME_HUB_USER": "admin"})


async def test_using_the_client_outside_its_block_raises(mini_hub: MiniHub) -> None:
    client = client_for(mini_hub)
    with pytest.raises(SDKStateError):
        _ = client.core
    async with client:
        pass
    with pytest.raises(SDKStateError):
        _ = client.core
    with pytest.raises(SDKStateError):
        await client.__aenter__()


# -- retries -----------------------------------------------------------------------------------


async def test_reads_are_retried_on_503_and_dropped_connections(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(3)
    mini_hub.fail_next("GET", "/nodes", Fault(503), Fault(drop=True), Fault(502, b"bad gateway"))
    async with client_for(mini_hub) as hub:
        page = await hub.core.nodes.find()
    assert len(page.items) == 3
    assert mini_hub.requests.count(("GET", "/nodes")) == 4


async def test_reads_give_up_after_the_attempts(mini_hub: MiniHub) -> None:
    mini_hub.fail_next("GET", "/nodes", *[Fault(503)] * 4)
    async with client_for(mini_hub) as hub:
        with pytest.raises(ServiceError) as info:
            await hub.core.nodes.find()
    assert info.value.status == 503
    assert mini_hub.requests.count(("GET", "/nodes")) == 4


async def test_a_post_whose_answer_is_lost_is_not_resent(mini_hub: MiniHub) -> None:
    mini_hub.fail_next("POST", "/nodes", Fault(drop=True))
    async with client_for(mini_hub) as hub:
        with pytest.raises(ServiceUnavailable):
            await hub.core.nodes.create(name="n1")
    assert mini_hub.requests.count(("POST", "/nodes")) == 1


async def test_a_post_is_resent_on_request_and_on_429(mini_hub: MiniHub) -> None:
    mini_hub.fail_next("POST", "/nodes", Fault(drop=True), Fault(429, b"", {"Retry-After": "0"}))
    async with client_for(mini_hub) as hub:
        node = await hub.core.nodes.create(name="n1", retry_unsafe=True)
    assert node.name == "n1"
    assert mini_hub.requests.count(("POST", "/nodes")) == 3


async def test_429_waits_at_least_retry_after(mini_hub: MiniHub) -> None:
    mini_hub.fail_next("GET", "/nodes", Fault(429, b"", {"Retry-After": "0.3"}))
    loop = asyncio.get_running_loop()
    async with client_for(mini_hub) as hub:
        await hub.core.nodes.find()  # the token first: not part of the measurement
        mini_hub.fail_next("GET", "/nodes", Fault(429, b"", {"Retry-After": "0.3"}))
        started = loop.time()
        await hub.core.nodes.find()
    assert loop.time() - started >= 0.3


async def test_a_retried_delete_that_finds_the_record_gone_counts_as_done(
    mini_hub: MiniHub,
) -> None:
    mini_hub.add_nodes(1)
    node_id = mini_hub.nodes[0]["id"]
    mini_hub.nodes.clear()  # the first DELETE "went through" before its answer was lost
    # twice: aiohttp itself resends an idempotent request once on a dropped pooled connection
    mini_hub.fail_next("DELETE", f"/nodes/{node_id}", Fault(drop=True), Fault(drop=True))
    async with client_for(mini_hub) as hub:
        await hub.core.nodes.delete(node_id, retry_unsafe=True)
        with pytest.raises(NotFoundError):  # without a retry, 404 is an error
            await hub.core.nodes.delete(node_id)


# -- reads and writes --------------------------------------------------------------------------


async def test_crud_round_trip(mini_hub: MiniHub) -> None:
    async with client_for(mini_hub) as hub:
        node = await hub.core.nodes.create(name="n1", type="aggregator")
        assert (await hub.core.nodes.get(node)).name == "n1"
        assert (await hub.core.nodes.get(str(node.id))).id == node.id
        found = await hub.core.nodes.find(filter={"name": "n1"})
        assert [n.id for n in found.items] == [node.id]
        updated = await hub.core.nodes.update(node, external_name="ext")
        assert (updated.name, updated.external_name) == ("n1", "ext")
        with pytest.raises(HubConflict):
            await hub.core.nodes.create(name="n1")
        await hub.core.nodes.delete(node)
        with pytest.raises(NotFoundError):
            await hub.core.nodes.get(node.id)
        assert await hub.core.nodes.get_or_none(node.id) is None


async def test_invalid_arguments_are_refused_before_any_request(mini_hub: MiniHub) -> None:
    async with client_for(mini_hub) as hub:
        with pytest.raises(InvalidArgument, match="at most 50"):
            await hub.core.nodes.find(limit=51)
        with pytest.raises(InvalidArgument, match="comma"):
            await hub.core.nodes.find(filter={"name": "a,b"})
        with pytest.raises(InvalidArgument, match="UUID"):
            await hub.core.nodes.get("not-an-id")
        with pytest.raises(InvalidArgument, match="NodeCreate"):
            await hub.core.nodes.create(type="default")  # no name
    assert mini_hub.requests == []


async def test_an_answer_that_does_not_fit_the_model_is_reported(mini_hub: MiniHub) -> None:
    mini_hub.nodes.append({"name": "no id"})
    async with client_for(mini_hub) as hub:
        with pytest.raises(HubResponseInvalid, match="Node"):
            await hub.core.nodes.find()


async def test_wire_case_auto_reads_one_record(mini_hub: MiniHub) -> None:
    mini_hub.camel = True
    mini_hub.add_nodes(2)
    async with client_for(mini_hub, wire_case="auto") as hub:
        assert await hub.wire_case() == "camel"
        page = await hub.core.nodes.find(filter={"name": "node-0001"})
        assert [n.name for n in page.items] == ["node-0001"]
        assert page.items[0].realm_id == uuid.UUID(int=999)


# -- paging ------------------------------------------------------------------------------------


async def test_iterate_yields_every_record_once_in_order(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(120)
    async with client_for(mini_hub) as hub:
        page = await hub.core.nodes.find(limit=50)
        assert (len(page.items), page.total, page.limit, page.offset) == (50, 120, 50, 0)
        names = [n.name async for n in hub.core.nodes.iterate(concurrency=4)]
        assert names == [n["name"] for n in mini_hub.nodes]
        assert len(await hub.core.nodes.find_all()) == 120


async def test_iterate_drops_records_seen_on_an_earlier_page(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(100)

    async def shift(offset: int) -> None:
        if offset == 50:  # a record was deleted meanwhile: page 2 starts one earlier
            mini_hub.nodes.pop(0)

    mini_hub.page_hook = shift
    async with client_for(mini_hub) as hub:
        ids = [n.id async for n in hub.core.nodes.iterate(concurrency=1)]
    assert len(ids) == len(set(ids)) == 100  # the record at 50 shows twice, yielded once


_SERVER_SIDE = {"RequestHandler._handle_request", "RequestHandler.start"}


def _client_tasks(before: set[asyncio.Task[Any]]) -> set[str]:
    """Tasks started since ``before``, except the in-test server's request handlers."""
    new = {t.get_coro().__qualname__ for t in asyncio.all_tasks() - before}  # type: ignore[union-attr]
    return new - _SERVER_SIDE


async def test_breaking_out_of_iterate_leaves_no_task(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(500)
    async with client_for(mini_hub, max_concurrency=8) as hub:
        before = asyncio.all_tasks()
        seen = 0
        async for _ in hub.core.nodes.iterate(concurrency=4):  # no aclosing(): a plain break
            seen += 1
            if seen == 60:  # inside the first batch of pages after the first
                break
        assert _client_tasks(before) == set()


async def test_cancelling_iterate_mid_batch_leaves_no_task(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(500)
    release = asyncio.Event()
    arrived = asyncio.Event()
    held = 0

    async def hold(offset: int) -> None:
        nonlocal held
        if offset > 0:
            held += 1
            if held == 4:
                arrived.set()
            await release.wait()

    mini_hub.page_hook = hold

    async with client_for(mini_hub, max_concurrency=8) as hub:
        before = asyncio.all_tasks()

        async def consume() -> None:
            async for _ in hub.core.nodes.iterate(concurrency=4):
                pass

        consumer = asyncio.ensure_future(consume())
        await arrived.wait()  # four pages in flight, held by the server
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert _client_tasks(before) == set()
        release.set()


async def test_get_many_keeps_the_order(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(10)
    ids = [n["id"] for n in reversed(mini_hub.nodes)]
    async with client_for(mini_hub) as hub:
        nodes = await hub.core.nodes.get_many(ids, concurrency=3)
        assert [str(n.id) for n in nodes] == ids
        with pytest.raises(NotFoundError):
            await hub.core.nodes.get_many([*ids, str(uuid.uuid4())])


# -- storage -----------------------------------------------------------------------------------


async def test_upload_from_bytes_path_and_stream_then_read_back(
    mini_hub: MiniHub, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 12_000)  # ~3 MiB

    async def chunks() -> object:
        yield b"abc"
        yield b"def"

    bucket = uuid.uuid4()
    async with client_for(mini_hub) as hub:
        files = await hub.storage.buckets.upload(
            bucket,
            [
                UploadFile("main.py", b"print(1)\n"),
                UploadFile("big.bin", big),
                UploadFile("s.txt", chunks()),  # type: ignore[arg-type]
            ],
        )
        assert [f.name for f in files] == ["main.py", "big.bin", "s.txt"]
        data = b"".join([c async for c in hub.storage.bucket_files.stream(files[1])])
        assert hashlib.sha256(data).digest() == hashlib.sha256(big.read_bytes()).digest()
        sizes = {
            len(c) async for c in hub.storage.bucket_files.stream(files[1], chunk_size=1 << 20)
        }
        assert max(sizes) == 1 << 20
        out = await hub.storage.bucket_files.download(files[2], tmp_path / "out" / "s.txt")
        assert out.read_bytes() == b"abcdef"
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s.txt"]  # no .part


async def test_an_upload_from_a_stream_is_not_replayed_after_a_refused_token(
    mini_hub: MiniHub,
) -> None:
    async def chunks() -> object:
        yield b"abc"

    async with client_for(mini_hub, RobotAuth("r", "s")) as hub:
        await hub.core.nodes.find()
        bucket = uuid.uuid4()
        mini_hub.fail_next(
            "POST",
            f"/buckets/{bucket}/upload",
            Fault(401, b'{"statusCode":401,"code":"UNAUTHORIZED","message":""}'),
        )
        with pytest.raises(PermissionError, match="cannot be sent again"):
            await hub.storage.buckets.upload(bucket, [UploadFile("x", chunks())])  # type: ignore[arg-type]


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


async def test_bucket_download_unpacks_a_safe_tar(mini_hub: MiniHub, tmp_path: Path) -> None:
    mini_hub.tar = _tar([_file("a.txt", b"A"), _file("dir/b.txt", b"B")])
    async with client_for(mini_hub) as hub:
        written = await hub.storage.buckets.download(uuid.uuid4(), tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "a.txt",
        "dir/b.txt",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "dir"]


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("../x"), "leaves"),
        (_file("a/../../x"), "leaves"),
        (_file("/etc/x"), "absolute"),
        (_link("l", "/etc/passwd"), "link"),
        (_link("h", "a.txt", tarfile.LNKTYPE), "link"),
    ],
)
async def test_unsafe_tar_members_are_refused_and_nothing_is_written(
    mini_hub: MiniHub, tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], reason: str
) -> None:
    mini_hub.tar = _tar([_file("a.txt"), member])
    async with client_for(mini_hub) as hub:
        with pytest.raises(HubResponseInvalid, match=reason):
            await hub.storage.buckets.download(uuid.uuid4(), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "x").exists()


def test_safe_extract_refuses_devices(tmp_path: Path) -> None:
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    archive = tmp_path / "t.tar"
    archive.write_bytes(_tar([(info, b"")]))
    with pytest.raises(ValueError, match="regular"):
        safe_extract(archive, tmp_path / "out")


def test_default_retry_policy_is_four_tries_with_full_jitter() -> None:
    from flame_async.hub import DEFAULT_RETRY

    assert DEFAULT_RETRY.attempts == 4
    assert DEFAULT_RETRY.jitter == 1.0
    assert isinstance(DEFAULT_RETRY, RetryPolicy)
    assert PasswordAuth("a", "b").grant()["grant_type"] == "password"


async def test_a_filter_the_hub_ignored_is_reported_not_returned(mini_hub: MiniHub) -> None:
    mini_hub.add_nodes(3)
    async with client_for(mini_hub) as hub:
        with pytest.raises(InvalidArgument, match="no field 'bogus_key'"):
            await hub.core.nodes.find(filter={"bogus_key": "x"})
        with pytest.raises(InvalidArgument, match="ignored the filter"):
            await hub.core.nodes.find(filter={"type": "aggregator"})  # the mini Hub ignores it
        page = await hub.core.nodes.find(filter={"type": "default"})  # matches: fine
        assert page.total == 3


async def test_analysis_commands_and_waiting_for_a_state(mini_hub: MiniHub) -> None:
    aid = str(uuid.uuid4())
    mini_hub.analyses[aid] = {"id": aid, "run_status": "running", "configuration_locked": False}
    async with client_for(mini_hub) as hub:
        locked = await hub.core.analyses.command(aid, "configurationLock")
        assert locked.configuration_locked is True
        with pytest.raises(HubRequestInvalid, match="unknown command"):
            await hub.core.analyses.command(aid, "somethingNew")  # any string is sent
        done = await hub.core.analyses.wait_for(
            aid, lambda a: a.execution_status == "executed", timeout=30, interval=0.001
        )
        assert done.execution_status == "executed"
        mini_hub.analyses[aid]["run_status"] = "running"
        mini_hub.polls_until_executed = 10**6
        with pytest.raises(TimeoutError, match="execution status 'running'"):
            await hub.core.analyses.wait_for(
                aid, lambda a: a.execution_status == "executed", timeout=0.05, interval=0.001
            )


def test_the_hub_package_exports_a_sorted_public_surface() -> None:
    import flame_async.hub as hub_package

    # ruff's RUF022 order: constants first, then the rest alphabetically
    def order(name: str) -> tuple[bool, str]:
        return (not (name.isupper() and len(name) > 1), name)

    assert hub_package.__all__ == sorted(hub_package.__all__, key=order)
    for name in hub_package.__all__:
        assert getattr(hub_package, name) is not None
    assert not [n for n in hub_package.__all__ if n.startswith("_")]


async def test_no_answer_in_time_is_a_request_timeout(mini_hub: MiniHub) -> None:
    never = asyncio.Event()

    async def stall(offset: int) -> None:
        await never.wait()

    async with client_for(mini_hub, timeout=0.2) as hub:
        await hub.core.nodes.find()  # the token, before the list starts stalling
        mini_hub.page_hook = stall
        with pytest.raises(RequestTimeout):
            await hub.core.nodes.find()
        assert mini_hub.requests.count(("GET", "/nodes")) == 1 + 4  # retried, then given up
        never.set()


async def test_a_2xx_answer_that_is_not_json_is_reported(mini_hub: MiniHub) -> None:
    mini_hub.fail_next("GET", "/nodes", Fault(200, b"<html>proxy login</html>"))
    async with client_for(mini_hub) as hub:
        with pytest.raises(HubResponseInvalid, match="proxy login"):
            await hub.core.nodes.find()


async def test_download_results_unpacks_the_result_bucket(
    mini_hub: MiniHub, tmp_path: Path
) -> None:
    aid, bucket = str(uuid.uuid4()), str(uuid.uuid4())
    mini_hub.analysis_buckets.append(
        {"id": str(uuid.uuid4()), "analysis_id": aid, "type": "CODE", "external_id": None}
    )
    mini_hub.tar = _tar([_file("result.csv", b"a,b\n1,2\n")])
    async with client_for(mini_hub) as hub:
        with pytest.raises(NotFoundError, match="no RESULT bucket"):
            await hub.download_results(aid, tmp_path / "out")
        mini_hub.analysis_buckets.append(
            {"id": str(uuid.uuid4()), "analysis_id": aid, "type": "RESULT", "external_id": bucket}
        )
        written = await hub.download_results(aid, tmp_path / "out")
    assert [p.read_bytes() for p in written] == [b"a,b\n1,2\n"]
    assert ("GET", f"/buckets/{bucket}/stream") in mini_hub.requests


async def test_a_camel_case_hub_gets_camel_case_bodies(mini_hub: MiniHub) -> None:
    mini_hub.camel = True
    mini_hub.add_nodes(1)
    realm = uuid.uuid4()
    async with client_for(mini_hub, wire_case="auto") as hub:
        node = await hub.core.nodes.create(name="camel", realm_id=realm, external_name="x")
        assert node.realm_id == realm
        assert node.external_name == "x"
    assert mini_hub.nodes[-1]["realmId"] == str(realm)
    assert mini_hub.nodes[-1]["externalName"] == "x"


def test_retry_classification() -> None:
    from flame_async.hub._session import hub_retryable

    def status(code: int) -> ServiceError:
        return hub_error(code, b"", {}, service="hub core", method="GET", url="u")

    assert all(hub_retryable(status(s)) for s in (429, 502, 503, 504))
    assert not any(hub_retryable(status(s)) for s in (400, 401, 403, 404, 409, 500))
    assert hub_retryable(ServiceUnavailable("down", service="s", method="GET", url="u"))
    assert hub_retryable(RequestTimeout("slow", service="s", method="GET", url="u"))
