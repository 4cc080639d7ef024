"""Issue 11's acceptance points that need the emulator's faults, both wire casings, or
``flame_hub`` beside our client (the rest live in ``client/`` and ``test_conformance.py``).

Emulator tests use their own ``HubEmulator`` (seeded faults, camel mode); real-Hub tests use
the session fixture ``real_hub`` and are skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from flame_async.config import RetryPolicy
from flame_async.errors import HubResponseInvalid, ServiceUnavailable
from flame_async.hub import F, HubClient, PasswordAuth, UploadFile
from flame_async.hub.models import HubModel
from flame_async.local import HubEmulator, HubFaults

from ._backends import HubConnection

INSTANT = RetryPolicy(attempts=6, initial=0.0, jitter=1.0, deadline=30.0, instant=True)


def tag() -> str:
    return f"acc{uuid.uuid4().hex[:8]}"


def client(hub: HubConnection, **options: Any) -> HubClient:
    options.setdefault("wire_case", "auto")
    options.setdefault("retry", RetryPolicy(attempts=6, initial=0.2, jitter=1.0, deadline=100))
    return HubClient(
        auth_url=hub.auth_url,
        core_url=hub.core_url,
        storage_url=hub.storage_url,
        credentials=PasswordAuth(hub.user, hub.password),
        **options,
    )


def emulator_of(hub: HubConnection) -> HubEmulator:
    assert hub.emulator is not None
    return hub.emulator


# -- faults (emulator) ---------------------------------------------------------------------


async def test_find_all_over_1000_records_is_exact_despite_503s_and_dropped_connections() -> None:
    async with HubEmulator() as emulator:
        hub = HubConnection.of_emulator(emulator)
        async with client(hub, retry=INSTANT, wire_case="snake") as api:
            names = [f"p{i:04d}" for i in range(1000)]
            async with anyio.create_task_group() as tg:
                limiter = anyio.Semaphore(8)

                async def make(name: str) -> None:
                    async with limiter:
                        await api.core.projects.create(name=name)

                for name in names:
                    tg.start_soon(make, name)
            stored = [r["id"] for r in emulator.records("projects")]
            # from here on, 5 % of GETs answer 503 and 2 % of requests lose their connection
            emulator.faults = HubFaults(seed=11, get_503=0.05, drop_before=0.02)
            before = emulator.requests["GET /projects"]
            everything = await api.core.projects.find_all(concurrency=4)
        pages = -(-1000 // 50)
        assert emulator.requests["GET /projects"] - before > pages, "no fault was injected"
    assert [str(p.id) for p in everything] == [str(i) for i in stored]  # complete, in order
    assert sorted(p.name or "" for p in everything) == names  # and nothing twice


async def test_a_post_answered_by_a_dropped_connection_is_not_resent() -> None:
    async with HubEmulator() as emulator:
        hub = HubConnection.of_emulator(emulator)
        async with client(hub, retry=INSTANT, wire_case="snake") as api:
            emulator.inject("drop-after", method="POST", path="/projects")
            with pytest.raises(ServiceUnavailable):
                await api.core.projects.create(name="served-once")
            assert emulator.creates["projects"] == 1  # served once, the answer lost
            assert emulator.requests["POST /projects"] == 1  # and not sent again
            assert [r["name"] for r in emulator.records("projects")] == ["served-once"]


async def test_429_with_retry_after_1_waits_at_least_a_second() -> None:
    async with HubEmulator(faults=HubFaults(retry_after=1)) as emulator:
        hub = HubConnection.of_emulator(emulator)
        # instant backoff: any wait measured comes from Retry-After alone
        async with client(hub, retry=INSTANT, wire_case="snake") as api:
            await api.core.projects.find(limit=1)  # log in first: only the 429 is timed
            emulator.inject("429", method="GET", path="/projects")
            began = anyio.current_time()
            await api.core.projects.find(limit=1)
            waited = anyio.current_time() - began
    assert emulator.requests["GET /projects"] == 3
    assert waited >= 1.0


async def test_a_bucket_tar_with_a_parent_member_is_refused_and_nothing_written(
    tmp_path: Path,
) -> None:
    async with HubEmulator(faults=HubFaults(traversal_tar=True)) as emulator:
        hub = HubConnection.of_emulator(emulator)
        async with client(hub, retry=INSTANT, wire_case="snake") as api:
            bucket = await api.storage.buckets.create(name="tarred")
            await api.storage.buckets.upload(bucket, [UploadFile("a.txt", b"a")])
            dest = tmp_path / "out"
            with pytest.raises(HubResponseInvalid, match=r"\.\./x|outside|leaves"):
                await api.storage.buckets.download(bucket, dest)
    assert not (tmp_path / "x").exists()
    assert list(dest.iterdir()) == []


async def test_start_analysis_with_lock_ends_locked_on_the_emulator() -> None:
    async with HubEmulator() as emulator:
        hub = HubConnection.of_emulator(emulator)
        async with client(hub, retry=INSTANT) as api:
            realm = await api.auth.realms.get_by_name("master")
            agg = await api.core.nodes.create(name="agg", realm_id=realm.id, type="aggregator")
            default = await api.core.nodes.create(name="def", realm_id=realm.id, type="default")
            project = await api.core.projects.create(name="project")
            for node in (agg, default):
                await api.core.project_nodes.create(project_id=project.id, node_id=node.id)
            image = (await api.core.master_images.find(limit=1)).items[0]
            analysis = await api.start_analysis(
                project,
                [agg, default],
                [UploadFile("main.py", b"print(1)\n"), UploadFile("lib.py", b"x = 1\n")],
                entrypoint="main.py",
                name="locked",
                master_image_id=image.id,
                lock=True,
            )
            assert analysis.configuration_locked is True
            again = await api.core.analyses.get(analysis)
    assert again.configuration_locked is True


# -- wire casing: one test, a snake_case Hub (the real 0.8 line) and a camelCase one -----------


@pytest.fixture(params=[pytest.param("real-snake", marks=pytest.mark.real_hub), "emulator-camel"])
async def cased_hub(request: pytest.FixtureRequest) -> AsyncIterator[HubConnection]:
    if request.param == "real-snake":
        yield request.getfixturevalue("real_hub")
        return
    async with HubEmulator(wire_case="camel") as emulator:
        yield HubConnection.of_emulator(emulator)


async def test_the_same_client_code_works_on_snake_and_camel_hubs(cased_hub: HubConnection) -> None:
    t = tag()
    async with client(cased_hub, wire_case="auto") as api:
        assert await api.wire_case() == cased_hub.wire_case
        realm = await api.auth.realms.get_by_name("master")
        node = await api.core.nodes.create(name=f"{t}-n", realm_id=realm.id, type="aggregator")
        project = await api.core.projects.create(name=f"{t}-p", description="cased")
        await api.core.project_nodes.create(project_id=project.id, node_id=node.id)
        analysis = await api.core.analyses.create(project_id=project.id, name=f"{t}-a")
        assert analysis.project_id == project.id
        assert analysis.created_at is not None and analysis.created_at.tzinfo is not None
        found = await api.core.analyses.find_all(
            filter={"project_id": project.id, "name": F.like(t)},
            sort="-created_at",
            include=["project"],
        )
        assert [a.id for a in found] == [analysis.id]
        assert found[0].project is not None and found[0].project.name == f"{t}-p"
        updated = await api.core.projects.update(project, description="changed")
        assert (updated.description, updated.name) == ("changed", f"{t}-p")
        nodes = await api.core.project_nodes.find(filter={"project_id": project.id})
        assert [n.node_id for n in nodes.items] == [node.id]
        await api.core.analyses.delete(analysis)
        assert await api.core.analyses.get_or_none(analysis) is None


# -- flame_hub 0.2.0 and our client read the same records from the real Hub --------------------

_READ_WITH_FLAME_HUB = """
import json, os, flame_hub
auth = flame_hub.auth.PasswordAuth(
    os.environ["HUB_USER"], os.environ["HUB_PASSWORD"], base_url=os.environ["HUB_AUTH_URL"]
)
core = flame_hub.CoreClient(base_url=os.environ["HUB_CORE_URL"], auth=auth)
ids = json.loads(os.environ["HUB_IDS"])
out = {
    "nodes": [core.get_node(i).model_dump(mode="json") for i in ids["nodes"]],
    "projects": [core.get_project(i).model_dump(mode="json") for i in ids["projects"]],
    "analyses": [core.get_analysis(i).model_dump(mode="json") for i in ids["analyses"]],
    "first_page": [n.model_dump(mode="json") for n in core.get_nodes()],
}
print(json.dumps(out))
"""


def _normal(value: Any) -> Any:
    """Timestamps as aware datetimes (flame_hub prints them naive, we with a zone)."""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def _shared_fields_equal(theirs: dict[str, Any], ours: HubModel) -> set[str]:
    """Compare the scalar fields both clients read; returns the names compared."""
    mine = ours.model_dump(mode="json")
    shared = {
        k
        for k in theirs.keys() & mine.keys()
        if not isinstance(theirs[k], dict | list) and not isinstance(mine[k], dict | list)
    }
    differing = {k: (theirs[k], mine[k]) for k in shared if _normal(theirs[k]) != _normal(mine[k])}
    assert not differing, differing
    return shared


@pytest.mark.timeout(120)
async def test_flame_hub_and_our_client_read_the_same_records(
    real_hub: HubConnection, flame_hub_python: Path
) -> None:
    t = tag()
    async with client(real_hub) as api:
        realm = await api.auth.realms.get_by_name("master")
        nodes = [
            await api.core.nodes.create(name=f"{t}-{kind}", realm_id=realm.id, type=kind)
            for kind in ("aggregator", "default")
        ]
        project = await api.core.projects.create(name=f"{t}-p", description="both clients")
        for node in nodes:
            await api.core.project_nodes.create(project_id=project.id, node_id=node.id)
        analysis = await api.core.analyses.create(
            project_id=project.id, name=f"{t}-a", description="read twice"
        )
        ids = {
            "nodes": [str(n.id) for n in nodes],
            "projects": [str(project.id)],
            "analyses": [str(analysis.id)],
        }
        env = {
            **os.environ,
            "HUB_USER": real_hub.user,
            "HUB_PASSWORD": real_hub.password,
            "HUB_AUTH_URL": real_hub.auth_url,
            "HUB_CORE_URL": real_hub.core_url,
            "HUB_IDS": orjson.dumps(ids).decode(),
        }
        done = await anyio.run_process([str(flame_hub_python), "-c", _READ_WITH_FLAME_HUB], env=env)
        theirs = orjson.loads(done.stdout)
        compared: set[str] = set()
        for kind, resource in (
            ("nodes", api.core.nodes),
            ("projects", api.core.projects),
            ("analyses", api.core.analyses),
        ):
            ours = await resource.get_many(ids[kind])
            assert [str(o.id) for o in ours] == [r["id"] for r in theirs[kind]]
            for record, mine in zip(theirs[kind], ours, strict=True):
                compared |= _shared_fields_equal(record, mine)
        # the first page flame_hub lists (50 records, the server's order): the same values
        page = theirs["first_page"]
        ours_page = await api.core.nodes.get_many([n["id"] for n in page])
        for record, mine in zip(page, ours_page, strict=True):
            _shared_fields_equal(record, mine)
    assert {"id", "name", "created_at", "realm_id", "project_id", "description"} <= compared


# -- memory: a 64 MiB file goes up and down without being held in memory ----------------------


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_a_64_mib_upload_and_download_grow_rss_by_less_than_32_mib(
    real_hub: HubConnection, tmp_path: Path
) -> None:
    import hashlib

    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with big.open("wb") as out:
        for i in range(64):
            block = hashlib.sha256(str(i).encode()).digest() * 32768  # 1 MiB
            digest.update(block)
            out.write(block)
    async with client(real_hub) as api:
        bucket = await api.storage.buckets.create(name=tag())
        await api.storage.buckets.find(limit=1)  # token, casing and connections before measuring
        peak = start = rss_mib()

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mib())
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            files = await api.storage.buckets.upload(
                bucket, [UploadFile("small.txt", b"x" * 100), UploadFile("big.bin", big)]
            )
            stored = next(f for f in files if f.name == "big.bin")
            streamed = hashlib.sha256()
            async for chunk in api.storage.bucket_files.stream(stored):
                streamed.update(chunk)
            copy = await api.storage.bucket_files.download(stored, tmp_path / "copy.bin")
            tg.cancel_scope.cancel()
        peak = max(peak, rss_mib())
        assert streamed.digest() == digest.digest()
        assert copy.stat().st_size == 64 << 20
        for f in files:
            await api.storage.bucket_files.delete(f)
        await api.storage.buckets.delete(bucket)
    assert peak - start < 32, f"RSS grew by {peak - start:.1f} MiB"
