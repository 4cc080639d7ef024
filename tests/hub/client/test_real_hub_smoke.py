"""The Hub client against the real Hub (authup + core + storage 0.8.14 on 127.0.0.1).

Skipped, with the reason printed, when no real Hub is configured (see ``real_hub_settings``).
Every record is named with a fresh prefix, so the tests share the Hub with others.
"""

from __future__ import annotations

import asyncio
import hashlib
import operator
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flame_async.errors import (
    AuthenticationError,
    InvalidArgument,
    NotFoundError,
    ServiceError,
)
from flame_async.hub import F, HubClient, PasswordAuth, RobotAuth, UploadFile
from flame_async.hub.models import Analysis, HubModel

from .conftest import RealHubSettings

pytestmark = pytest.mark.timeout(240)


def tag() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_password_robot_and_wrong_password_logins(real_hub_settings: RealHubSettings) -> None:
    hub_cfg = real_hub_settings
    async with hub_cfg.client() as hub:
        await hub.core.nodes.find(limit=1)
        assert hub.tokens.grants == {"password": 1}
        assert await hub.wire_case() == hub_cfg.wire_case
    async with hub_cfg.client(RobotAuth(hub_cfg.robot_id, hub_cfg.robot_secret)) as hub:
        await hub.core.nodes.find(limit=1)
        assert hub.tokens.grants == {"robot_credentials": 1}
    wrong = "definitely-wrong-" + uuid.uuid4().hex
    async with hub_cfg.client(PasswordAuth(hub_cfg.user, wrong)) as hub:
        with pytest.raises(AuthenticationError) as info:
            await hub.core.nodes.find(limit=1)
    assert hub_cfg.auth_url.rstrip("/") + "/token" in str(info.value)
    assert info.value.code == "invalid_credentials"
    assert wrong not in str(info.value)


async def _round_trip(
    resource: Any, create: dict[str, Any], find: dict[str, Any], change: dict[str, Any]
) -> None:
    created = await resource.create(**create)
    assert (await resource.get(created)).id == created.id
    found = await resource.find(filter=find)
    assert created.id in {x.id for x in found.items}
    before = (await resource.get(created)).model_dump(exclude={"updated_at"})
    updated = await resource.update(created, **change)
    after = (await resource.get(created)).model_dump(exclude={"updated_at"})
    for key, value in change.items():
        assert getattr(updated, key) == value
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed <= set(change), changed  # only the passed fields changed
    await resource.delete(created)
    with pytest.raises(NotFoundError):
        await resource.get(created)
    assert await resource.get_or_none(created) is None


async def test_crud_round_trips(real_hub_settings: RealHubSettings) -> None:
    t = tag()
    async with real_hub_settings.client() as hub:
        realm = await hub.auth.realms.get_by_name("master")
        core = hub.core
        await _round_trip(
            core.nodes,
            {"name": f"{t}-n", "realm_id": realm.id, "type": "default"},
            {"name": f"{t}-n"},
            {"hidden": True},
        )
        await _round_trip(
            core.projects, {"name": f"{t}-p"}, {"name": f"{t}-p"}, {"description": "a description"}
        )
        await _round_trip(
            core.registries,
            {"name": f"{t}-r", "host": "harbor.example"},
            {"name": f"{t}-r"},
            {"host": "harbor2.example"},
        )
        await _round_trip(hub.storage.buckets, {"name": f"{t}-b"}, {"name": f"{t}-b"}, {})
        node = await core.nodes.create(name=f"{t}-n2", realm_id=realm.id, type="default")
        project = await core.projects.create(name=f"{t}-p2")
        await _round_trip(
            core.project_nodes,
            {"project_id": project.id, "node_id": node.id},
            {"project_id": project.id},
            {"comment": "looks good"},
        )
        await core.project_nodes.create(project_id=project.id, node_id=node.id)
        analysis_fields: dict[str, Any] = {"project_id": project.id, "name": f"{t}-a"}
        await _round_trip(
            core.analyses, analysis_fields, {"name": f"{t}-a"}, {"description": "a description"}
        )
        analysis = await core.analyses.create(**analysis_fields)
        await _round_trip(
            core.analysis_nodes,
            {"analysis_id": analysis.id, "node_id": node.id},
            {"analysis_id": analysis.id},
            {"comment": "fine"},
        )
        for resource, record in (
            (core.analyses, analysis),
            (core.projects, project),
            (core.nodes, node),
        ):
            await resource.delete(record)


async def test_paging_over_120_nodes(real_hub_settings: RealHubSettings) -> None:
    t = tag()
    async with real_hub_settings.client(max_concurrency=8) as hub:
        realm = await hub.auth.realms.get_by_name("master")
        created = [  # one by one: creation order is the order to check
            await hub.core.nodes.create(name=f"{t}-{i:03d}", realm_id=realm.id, type="default")
            for i in range(120)
        ]
        try:
            mine = {"name": F.like(t)}
            page = await hub.core.nodes.find(filter=mine, limit=50)
            assert (len(page.items), page.total) == (50, 120)
            with pytest.raises(InvalidArgument, match="50"):
                await hub.core.nodes.find(filter=mine, limit=51)
            seen = [n async for n in hub.core.nodes.iterate(filter=mine, concurrency=4)]
            assert sorted(n.id for n in seen) == sorted(n.id for n in created)
            stamps = [n.created_at for n in seen]
            assert all(a is not None for a in stamps)
            assert stamps == sorted(stamps)  # type: ignore[type-var]
            before = asyncio.all_tasks()
            count = 0
            async for _ in hub.core.nodes.iterate(filter=mine, concurrency=4):
                count += 1
                if count == 10:
                    break
            assert asyncio.all_tasks() <= before
        finally:
            sem = asyncio.Semaphore(8)

            async def drop(node: HubModel) -> None:
                async with sem:
                    await hub.core.nodes.delete(node)

            await asyncio.gather(*(drop(n) for n in created))


Check = Callable[[Analysis], bool]


async def test_each_operator_matches_the_same_filter_applied_client_side(
    real_hub_settings: RealHubSettings,
) -> None:
    t = tag()
    names = [f"{t}-alpha-1", f"{t}-alpha-2", f"{t}-Alpha_3", f"{t}-beta-1", f"{t}-gamma"]
    async with real_hub_settings.client() as hub:
        project = await hub.core.projects.create(name=f"{t}-p")
        for i, name in enumerate(names):
            await hub.core.analyses.create(
                project_id=project.id, name=name, description=None if i % 2 else f"description {i}"
            )
        everything = await hub.core.analyses.find_all(filter={"project_id": project.id})
        assert len(everything) == len(names)

        def name_is(op: Callable[[str, str], bool], v: str) -> Check:
            return lambda a: a.name is not None and op(a.name, v)

        cases: list[tuple[str, Any, Check]] = [
            ("name", f"{t}-gamma", name_is(operator.eq, f"{t}-gamma")),
            ("name", F.ne(f"{t}-gamma"), name_is(operator.ne, f"{t}-gamma")),
            # SQLite's LIKE ignores ASCII case; '_' is a wildcard
            ("name", F.like(f"{t}-al"), lambda a: (a.name or "").lower().startswith(f"{t}-al")),
            ("name", F.not_like(f"{t}-al"), lambda a: not a.name.lower().startswith(f"{t}-al")),  # type: ignore[union-attr]
            ("name", F.lt(f"{t}-b"), name_is(operator.lt, f"{t}-b")),
            ("name", F.le(f"{t}-beta-1"), name_is(operator.le, f"{t}-beta-1")),
            ("name", F.gt(f"{t}-b"), name_is(operator.gt, f"{t}-b")),
            ("name", F.ge(f"{t}-beta-1"), name_is(operator.ge, f"{t}-beta-1")),
            ("name", F.in_(names[0], names[3]), lambda a: a.name in {names[0], names[3]}),
            ("name", F.not_in(names[0], names[3]), lambda a: a.name not in {names[0], names[3]}),
            ("description", F.is_null(), lambda a: a.description is None),
            ("description", F.not_null(), lambda a: a.description is not None),
            ("configuration_locked", False, lambda a: a.configuration_locked is False),
            ("configuration_locked", True, lambda a: a.configuration_locked is True),
        ]
        for key, value, check in cases:
            if key == "configuration_locked" and value is True:
                got: set[uuid.UUID] = {
                    a.id
                    for a in await hub.core.analyses.find_all(
                        filter={"project_id": project.id, key: value}
                    )
                }
            else:
                got = {
                    a.id
                    for a in await hub.core.analyses.find_all(
                        filter={"project_id": project.id, key: value}
                    )
                }
            expected = {a.id for a in everything if check(a)}
            assert got == expected, (key, value)
        with pytest.raises(InvalidArgument, match="comma"):
            await hub.core.analyses.find(filter={"name": "a,b"})
        with pytest.raises(InvalidArgument, match="ignore"):  # nodes do not allow this key
            await hub.core.nodes.find(filter={"external_name": F.not_null()})
        for analysis in everything:
            await hub.core.analyses.delete(analysis)
        await hub.core.projects.delete(project)


async def test_include_fills_a_relation_only_when_asked(real_hub_settings: RealHubSettings) -> None:
    t = tag()
    async with real_hub_settings.client() as hub:
        project = await hub.core.projects.create(name=f"{t}-p")
        analysis = await hub.core.analyses.create(project_id=project.id, name=f"{t}-a")
        assert (await hub.core.analyses.get(analysis)).project is None
        joined = await hub.core.analyses.get(analysis, include=["project"])
        assert joined.project is not None
        assert joined.project.name == f"{t}-p"
        page = await hub.core.analyses.find(filter={"name": f"{t}-a"}, include="project")
        assert page.items[0].project is not None
        await hub.core.analyses.delete(analysis)
        await hub.core.projects.delete(project)


async def test_upload_stream_and_download_a_bucket(
    real_hub_settings: RealHubSettings, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        for i in range(8):
            out.write(hashlib.sha256(str(i).encode()).digest() * 32768)  # 8 MiB
    contents = {"main.py": b"print('hi')\n", "data/x.txt": b"x" * 1000, "big.bin": big.read_bytes()}
    async with real_hub_settings.client() as hub:
        bucket = await hub.storage.buckets.create(name=tag())
        files = await hub.storage.buckets.upload(
            bucket,
            [
                UploadFile("main.py", contents["main.py"]),
                UploadFile("data/x.txt", contents["data/x.txt"]),
                UploadFile("big.bin", big),
            ],
        )
        assert sorted(f.path or "" for f in files) == sorted(contents)
        for f in files:
            data = b"".join([c async for c in hub.storage.bucket_files.stream(f)])
            assert hashlib.sha256(data).digest() == hashlib.sha256(contents[f.path or ""]).digest()
        single = await hub.storage.bucket_files.download(files[0], tmp_path / "one" / "f")
        assert single.read_bytes() == contents[files[0].path or ""]
        written = await hub.storage.buckets.download(bucket, tmp_path / "all")
        got = {p.relative_to(tmp_path / "all").as_posix(): p.read_bytes() for p in written}
        assert got == contents
        for f in files:  # storage refuses to delete a bucket with files (500 BucketNotEmpty)
            await hub.storage.bucket_files.delete(f)
        await hub.storage.buckets.delete(bucket)


async def test_start_analysis_on_a_project_with_two_nodes(
    real_hub_settings: RealHubSettings,
) -> None:
    t = tag()
    async with real_hub_settings.client() as hub:
        realm = await hub.auth.realms.get_by_name("master")
        agg = await hub.core.nodes.create(name=f"{t}-agg", realm_id=realm.id, type="aggregator")
        default = await hub.core.nodes.create(name=f"{t}-def", realm_id=realm.id, type="default")
        project = await hub.core.projects.create(name=f"{t}-p")
        for node in (agg, default):
            await hub.core.project_nodes.create(project_id=project.id, node_id=node.id)
        code = [UploadFile("main.py", b"print('analysis')\n"), UploadFile("util.py", b"x = 1\n")]
        images = await hub.core.master_images.find(limit=1)
        analysis = await hub.start_analysis(
            project,
            [agg, default],
            code,
            entrypoint="main.py",
            name=f"{t}-a",
            lock=False,
            master_image_id=images.items[0].id if images.items else None,
        )
        nodes = await hub.core.analysis_nodes.find_all(filter={"analysis_id": analysis.id})
        assert {n.node_id for n in nodes} == {agg.id, default.id}
        assert {n.approval_status for n in nodes} == {"approved"}
        registered = await hub.analysis_files(analysis)
        assert {f.name for f in registered} == {"main.py", "util.py"}
        assert [f.name for f in registered if f.root] == ["main.py"]
        for f in registered:
            assert f.external_id is not None
            data = b"".join([c async for c in hub.storage.bucket_files.stream(f.external_id)])
            assert data == {u.name: u.content for u in code}[f.name or ""]
        if not images.items:
            pytest.skip("this Hub has no master image: configurationLock cannot be tried")
        outcome: Analysis | ServiceError
        try:
            outcome = await hub.start_analysis(
                project,
                [agg, default],
                code,
                entrypoint="main.py",
                name=f"{t}-b",
                master_image_id=images.items[0].id,
            )
        except ServiceError as exc:
            outcome = exc
        if isinstance(outcome, ServiceError):  # a Hub started without RabbitMQ
            assert outcome.status == 500
            assert "amqp" in outcome.detail.lower()
        else:  # with RabbitMQ the command goes through
            assert outcome.configuration_locked is True


def test_settings_are_the_fixture_shape(real_hub_settings: RealHubSettings) -> None:
    assert isinstance(real_hub_settings.client(), HubClient)


async def test_analysis_node_logs_are_written_found_and_deleted(
    real_hub_settings: RealHubSettings,
) -> None:
    t = tag()
    async with real_hub_settings.client() as hub:
        realm = await hub.auth.realms.get_by_name("master")
        node = await hub.core.nodes.create(name=f"{t}-n", realm_id=realm.id, type="default")
        project = await hub.core.projects.create(name=f"{t}-p")
        await hub.core.project_nodes.create(project_id=project.id, node_id=node.id)
        analysis = await hub.core.analyses.create(project_id=project.id, name=f"{t}-a")
        await hub.core.analysis_node_logs.create(
            analysis_id=analysis.id,
            node_id=node.id,
            level="info",
            message="hello",
            status="running",
        )
        mine = {"analysis_id": analysis.id, "node_id": node.id}
        page = await hub.core.analysis_node_logs.find(filter=mine)
        assert [log.message for log in page.items] == ["hello"]
        await hub.core.analysis_node_logs.delete_for(analysis, node)
        assert (await hub.core.analysis_node_logs.find(filter=mine)).total == 0
