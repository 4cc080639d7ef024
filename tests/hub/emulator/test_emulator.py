"""The Hub emulator on the wire (raw aiohttp): queries, paging, casing, tokens, faults, storage."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
import pytest

from flame_async.errors import InvalidArgument
from flame_async.local import HubEmulator, HubEmulatorStateError, HubFaults

from .._backends import HubConnection
from .._raw import RawHub


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def emulators() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def start(
    session: aiohttp.ClientSession, stack: AsyncExitStack, **options: Any
) -> tuple[HubEmulator, RawHub]:
    emulator = await stack.enter_async_context(HubEmulator(**options))
    return emulator, RawHub(HubConnection.of_emulator(emulator), session)


async def _nodes(raw: RawHub, names: list[str], **extra: Any) -> list[dict[str, Any]]:
    realm = await raw.master_realm_id()
    return [
        await raw.create("core", "nodes", {"name": name, "realm_id": realm, **extra})
        for name in names
    ]


def _names(answer: Any) -> list[str]:
    return [item["name"] for item in answer.json["data"]]


async def test_lists_answer_data_and_meta_and_cap_the_page_at_50(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators)
    await _nodes(raw, [f"n{i:03d}" for i in range(60)])
    answer = await raw.call("GET", "core", "nodes", params={"page[limit]": "1000"})
    assert answer.status == 200
    assert answer.json["meta"] == {"total": 60, "limit": 50, "offset": 0}
    assert len(answer.json["data"]) == 50
    answer = await raw.call(
        "GET", "core", "nodes", params={"page[limit]": "20", "page[offset]": "50"}
    )
    assert answer.json["meta"] == {"total": 60, "limit": 20, "offset": 50}
    assert _names(answer) == [f"n{i:03d}" for i in range(50, 60)]
    # a limit rapiq cannot read is ignored (the cap applies)
    answer = await raw.call("GET", "core", "nodes", params={"page[limit]": "0"})
    assert answer.json["meta"]["limit"] == 50


async def test_every_filter_operator_selects_what_sqlite_would(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators)
    await _nodes(raw, ["alpha-1", "alpha-2", "Alpha_3", "beta-1", "gamma"])
    await raw.call(
        "POST", "core", "nodes/" + (await _nodes(raw, ["hidden-1"]))[0]["id"], json={"hidden": True}
    )

    async def names(value: str, key: str = "name") -> list[str]:
        answer = await raw.call(
            "GET", "core", "nodes", params=[(f"filter[{key}]", value), ("sort", "name")]
        )
        assert answer.status == 200, answer.body
        return _names(answer)

    everyone = ["Alpha_3", "alpha-1", "alpha-2", "beta-1", "gamma", "hidden-1"]
    assert await names("alpha-1") == ["alpha-1"]
    assert await names("!alpha-1") == [n for n in everyone if n != "alpha-1"]
    assert await names("~alpha") == ["Alpha_3", "alpha-1", "alpha-2"]  # LIKE: ASCII case-blind
    assert await names("~alpha_") == ["Alpha_3", "alpha-1", "alpha-2"]  # _ is a wildcard
    assert await names("!~alpha") == ["beta-1", "gamma", "hidden-1"]
    assert await names("<beta") == ["Alpha_3", "alpha-1", "alpha-2"]
    assert await names("<=beta-1") == ["Alpha_3", "alpha-1", "alpha-2", "beta-1"]
    assert await names(">gamma") == ["hidden-1"]
    assert await names(">=gamma") == ["gamma", "hidden-1"]
    assert await names("gamma,beta-1") == ["beta-1", "gamma"]
    assert await names("!gamma,beta-1") == ["Alpha_3", "alpha-1", "alpha-2", "hidden-1"]
    assert await names("  gamma ") == ["gamma"]  # values are trimmed
    assert await names("true", "hidden") == ["hidden-1"]
    assert await names("FALSE", "hidden") == everyone[:-1]
    assert await names("null", "robot_id") == []
    assert await names("!null", "robot_id") == everyone
    # a key outside the allow-list is dropped: everything comes back (the 0.8 line)
    assert await names("x", "external_name") == everyone


async def test_lists_reflect_every_change_at_once_and_keep_like_filters_apart(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    # the emulator caches a listing's filtered and sorted rows between changes: no change,
    # through HTTP or add(), may leave a stale page behind, and values that Python holds
    # equal (True, 1) must not share an entry
    emulator, raw = await start(session, emulators)
    realm = await raw.master_realm_id()
    first, second = await _nodes(raw, ["node-b", "node-a"])
    project = await raw.create("core", "projects", {"name": "project-one"})

    async def names(resource: str, *params: tuple[str, str]) -> list[str]:
        answer = await raw.call("GET", "core", resource, params=[*params, ("sort", "name")])
        assert answer.status == 200, answer.body
        return [item.get("name") or item["node_id"] for item in answer.json["data"]]

    assert await names("nodes") == ["node-a", "node-b"]
    await raw.call("POST", "core", f"nodes/{first['id']}", json={"name": "node-0"})
    assert await names("nodes") == ["node-0", "node-a"]
    await raw.call("DELETE", "core", f"nodes/{second['id']}")
    assert await names("nodes") == ["node-0"]
    emulator.add("nodes", name="true", realm_id=realm)
    assert await names("nodes") == ["node-0", "true"]
    assert await names("nodes", ("filter[name]", "true")) == ["true"]
    assert await names("nodes", ("filter[name]", "1")) == []
    # a filter on a relation follows a change of the related record
    await raw.create("core", "project-nodes", {"project_id": project["id"], "node_id": first["id"]})
    by_project = ("filter[project.name]", "project-one")
    assert await names("project-nodes", by_project) == [first["id"]]
    await raw.call("POST", "core", f"projects/{project['id']}", json={"name": "project-two"})
    assert await names("project-nodes", by_project) == []
    # a create's side effect on its parent (the project's node counter) shows at once
    answer = await raw.call("GET", "core", "projects", params={"filter[id]": project["id"]})
    assert answer.json["data"][0]["nodes"] == 1


async def test_strict_filters_refuse_keys_outside_the_allow_list(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators, strict_filters=True)
    answer = await raw.call("GET", "core", "nodes", params={"filter[external_name]": "x"})
    assert answer.status == 400
    assert answer.json["statusCode"] == 400


async def test_sort_descending_and_by_several_keys(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators)
    await _nodes(raw, ["bbb", "aaa", "ccc"])
    answer = await raw.call("GET", "core", "nodes", params={"sort": "-name"})
    assert _names(answer) == ["ccc", "bbb", "aaa"]
    answer = await raw.call("GET", "core", "nodes", params={"sort": "-created_at,name"})
    assert sorted(_names(answer)) == ["aaa", "bbb", "ccc"]
    answer = await raw.call("GET", "core", "nodes")  # no sort: insertion order
    assert _names(answer) == ["bbb", "aaa", "ccc"]


async def test_camel_case_mode_speaks_camel_case_both_ways(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators, wire_case="camel")
    realm = await raw.master_realm_id()
    node = await raw.create("core", "nodes", {"name": "nd1", "realm_id": realm})
    assert {"createdAt", "realmId", "robotId"} <= node.keys()
    assert "created_at" not in node
    answer = await raw.call(
        "GET", "core", "nodes", params={"filter[realmId]": realm, "sort": "-createdAt"}
    )
    assert _names(answer) == ["nd1"]


async def test_include_fills_allowed_relations_only_when_asked(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators)
    project = await raw.create("core", "projects", {"name": "proj-1"})
    analysis = await raw.create("core", "analyses", {"project_id": project["id"], "name": "ana"})
    plain = await raw.call("GET", "core", f"analyses/{analysis['id']}")
    assert "project" not in plain.json
    joined = await raw.call(
        "GET", "core", f"analyses/{analysis['id']}", params={"include": "project"}
    )
    assert joined.json["project"]["name"] == "proj-1"
    listed = await raw.call("GET", "core", "analyses", params={"include": "project,bogus"})
    assert listed.json["data"][0]["project"]["id"] == project["id"]
    assert "bogus" not in listed.json["data"][0]


async def test_missing_records_answer_404_in_the_hub_error_shape(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators)
    missing = "00000000-0000-0000-0000-000000000000"
    for method in ("GET", "POST", "DELETE"):
        answer = await raw.call(
            method, "core", f"nodes/{missing}", json={} if method == "POST" else None
        )
        assert answer.status == 404
        assert answer.json == {"statusCode": 404, "code": "NOT_FOUND", "message": ""}


async def test_create_update_delete_codes_and_partial_update(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    emulator, raw = await start(session, emulators)
    (node,) = await _nodes(raw, ["nd1"], type="aggregator")
    assert emulator.creates["nodes"] == 1
    assert emulator.creates["robots"] == 1  # a node brings its robot
    updated = await raw.call("POST", "core", f"nodes/{node['id']}", json={"hidden": True})
    assert updated.status == 202
    assert updated.json["hidden"] is True
    assert updated.json["type"] == "aggregator"
    deleted = await raw.call("DELETE", "core", f"nodes/{node['id']}")
    assert deleted.status == 202
    assert (await raw.call("GET", "core", f"nodes/{node['id']}")).status == 404
    invalid = await raw.call("POST", "core", "nodes", json={})
    assert invalid.status == 400
    assert invalid.json["attributes"] == ["name"]


async def test_tokens_password_robot_client_and_refresh_grants(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    emulator, raw = await start(session, emulators)
    await raw.login()
    assert raw.refresh_token is not None
    robot = await raw.grant(
        {
            "grant_type": "robot_credentials",
            "id": emulator.robot_id,
            "secret": emulator.robot_secret,
        }
    )
    assert robot.status == 200
    client = await raw.grant(
        {
            "grant_type": "client_credentials",
            "client_id": emulator.client_id,
            "client_secret": emulator.robot_secret,
        }
    )
    assert client.status == 200
    refreshed = await raw.grant({"grant_type": "refresh_token", "refresh_token": raw.refresh_token})
    assert refreshed.status == 200
    assert refreshed.json["expires_in"] == 3600
    reused = await raw.grant({"grant_type": "refresh_token", "refresh_token": raw.refresh_token})
    assert reused.status == 400
    assert reused.json["code"] == "inactive_token"
    wrong = await raw.grant({"grant_type": "password", "username": "admin", "password": "x"})
    assert (wrong.status, wrong.json["code"]) == (400, "invalid_credentials")
    assert emulator.token_grants == {
        "password": 1,
        "robot_credentials": 1,
        "client_credentials": 1,
        "refresh_token": 1,
    }


async def test_missing_malformed_and_expired_tokens(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators, access_token_lifetime=1, refresh_token_lifetime=1)
    assert (await raw.call("GET", "core", "nodes", authenticate=False)).status == 401
    malformed = await raw.call("GET", "core", "nodes", token="abc.def.ghi")
    assert (malformed.status, malformed.json["code"]) == (400, "BAD_REQUEST")
    on_auth = await raw.call("GET", "auth", "users", token="abc.def.ghi")
    assert (on_auth.status, on_auth.json["code"]) == (400, "invalid_token")
    token = await raw.login()
    answer = await raw.grant(
        {"grant_type": "password", "username": "admin", "password": "start123"}
    )
    assert answer.json["expires_in"] == 3600  # authup's word, not the truth
    payload = token.split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] - claims["iat"] <= 1
    # the token's own exp is the truth (whole seconds): wait until the second after it began
    await asyncio.sleep(max(0.0, claims["exp"] + 1 - time.time()) + 0.05)
    for service, path in (("core", "nodes"), ("auth", "users")):
        expired = await raw.call("GET", service, path, token=token)
        assert (expired.status, expired.json["code"]) == (500, "INTERNAL_SERVER_ERROR")
    stale = await raw.grant({"grant_type": "refresh_token", "refresh_token": raw.refresh_token})
    assert stale.status == 500


async def test_faults_are_deterministic_per_seed(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    async def statuses(seed: int) -> list[int]:
        _, raw = await start(session, emulators, faults=HubFaults(seed=seed, get_503=0.3))
        await raw.login()
        return [(await raw.call("GET", "core", "nodes")).status for _ in range(40)]

    first, again, other = await statuses(7), await statuses(7), await statuses(8)
    assert first == again
    assert first != other
    assert set(first) == {200, 503}


async def test_a_dropped_answer_to_a_create_still_creates(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    emulator, raw = await start(session, emulators)
    realm = await raw.master_realm_id()
    emulator.inject("drop-after", method="POST", path="/nodes")
    with pytest.raises(aiohttp.ClientError):
        await raw.call("POST", "core", "nodes", json={"name": "nd1", "realm_id": realm})
    assert emulator.creates["nodes"] == 1
    assert [r["name"] for r in emulator.records("nodes")] == ["nd1"]
    emulator.inject("drop-before", method="POST", path="/nodes")
    with pytest.raises(aiohttp.ClientError):
        await raw.call("POST", "core", "nodes", json={"name": "nd2", "realm_id": realm})
    assert emulator.creates["nodes"] == 1
    assert emulator.requests["POST /nodes"] == 2


async def test_429_carries_retry_after_and_latency_is_added(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    emulator, raw = await start(session, emulators, faults=HubFaults(retry_after=2, latency=0.02))
    await raw.login()
    emulator.inject("429", method="GET", path="/nodes")
    began = time.monotonic()
    answer = await raw.call("GET", "core", "nodes")
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "2"
    assert time.monotonic() - began >= 0.02
    assert (await raw.call("GET", "core", "nodes")).status == 200


async def test_upload_and_streams_round_trip(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators)
    bucket = await raw.create("storage", "buckets", {"name": "b1"})
    big = bytes(range(256)) * 8192  # 2 MiB
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", io.BytesIO(b"print(1)\n"), filename="main.py")
    form.add_field("data", io.BytesIO(big), filename="sub/big.bin")
    answer = await raw.call("POST", "storage", f"buckets/{bucket['id']}/upload", data=form)
    assert answer.status == 201
    files = answer.json["data"]
    assert [(f["name"], f["path"], f["directory"], f["size"]) for f in files] == [
        ("main.py", "main.py", ".", 9),
        ("big.bin", "sub/big.bin", "sub", len(big)),
    ]
    assert files[1]["hash"] == hashlib.sha256(b"sub/big.bin").hexdigest()  # of the path
    streamed = await raw.call("GET", "storage", f"bucket-files/{files[1]['id']}/stream")
    assert hashlib.sha256(streamed.body).hexdigest() == hashlib.sha256(big).hexdigest()
    tar = await raw.call("GET", "storage", f"buckets/{bucket['id']}/stream")
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as archive:
        assert archive.getnames() == ["main.py", "sub/big.bin"]
        member = archive.extractfile("sub/big.bin")
        assert member is not None
        assert member.read() == big


async def test_traversal_tar_carries_a_parent_member(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators, faults=HubFaults(traversal_tar=True))
    bucket = await raw.create("storage", "buckets", {"name": "b1"})
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", io.BytesIO(b"x"), filename="ok.txt")
    await raw.call("POST", "storage", f"buckets/{bucket['id']}/upload", data=form)
    tar = await raw.call("GET", "storage", f"buckets/{bucket['id']}/stream")
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as archive:
        assert archive.getnames() == ["ok.txt", "../x"]


async def test_configuration_lock_checks_and_locks(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    _, raw = await start(session, emulators)
    realm = await raw.master_realm_id()
    image = (await raw.call("GET", "core", "master-images")).json["data"][0]
    project = await raw.create(
        "core", "projects", {"name": "proj-1", "master_image_id": image["id"]}
    )
    analysis = await raw.create("core", "analyses", {"project_id": project["id"]})
    command = f"analyses/{analysis['id']}/command"
    early = await raw.call("POST", "core", command, json={"command": "configurationLock"})
    assert early.json["message"] == "The analysis requires at least two nodes."
    for name, node_type in (("agg", "aggregator"), ("nd1", "default")):
        node = await raw.create(
            "core", "nodes", {"name": name, "realm_id": realm, "type": node_type}
        )
        pair = {"analysis_id": analysis["id"], "node_id": node["id"]}
        refused = await raw.call("POST", "core", "analysis-nodes", json=pair)
        assert refused.status == 404  # not part of the project yet
        await raw.create(
            "core", "project-nodes", {"project_id": project["id"], "node_id": node["id"]}
        )
        await raw.create(
            "core", "analysis-nodes", {"analysis_id": analysis["id"], "node_id": node["id"]}
        )
    no_code = await raw.call("POST", "core", command, json={"command": "configurationLock"})
    assert no_code.json["message"] == "The analysis bucket for code files does not exist."
    code = await raw.create(
        "core", "analysis-buckets", {"analysis_id": analysis["id"], "type": "CODE"}
    )
    await raw.create(
        "core", "analysis-bucket-files", {"bucket_id": code["id"], "name": "main.py", "root": True}
    )
    locked = await raw.call("POST", "core", command, json={"command": "configurationLock"})
    assert locked.status == 202
    assert locked.json["configuration_locked"] is True
    unknown = await raw.call("POST", "core", command, json={"command": "bogus"})
    assert (unknown.status, unknown.json["attributes"]) == (400, ["command"])


async def test_auto_buckets_create_the_three_analysis_buckets(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    emulator, raw = await start(session, emulators, auto_buckets=True)
    project = await raw.create("core", "projects", {"name": "proj-1"})
    analysis = await raw.create("core", "analyses", {"project_id": project["id"]})
    answer = await raw.call(
        "GET", "core", "analysis-buckets", params={"filter[analysis_id]": analysis["id"]}
    )
    assert sorted(b["type"] for b in answer.json["data"]) == ["CODE", "RESULT", "TEMP"]
    assert emulator.creates["buckets"] == 3


async def test_request_counters_use_path_templates(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    emulator, raw = await start(session, emulators)
    (node,) = await _nodes(raw, ["nd1"])
    await raw.call("GET", "core", f"nodes/{node['id']}")
    await raw.call("GET", "core", f"nodes/{node['id']}")
    assert emulator.requests["GET /nodes/{id}"] == 2
    assert emulator.requests["POST /nodes"] == 1
    assert emulator.requests["POST /token"] == 1


async def test_lifecycle_errors() -> None:
    emulator = HubEmulator()
    with pytest.raises(HubEmulatorStateError):
        _ = emulator.core_url
    with pytest.raises(InvalidArgument):
        HubEmulator(wire_case="kebab")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        HubFaults(get_503=0.8, drop_before=0.5)
    async with emulator:
        with pytest.raises(HubEmulatorStateError):
            await emulator.__aenter__()
    with pytest.raises(HubEmulatorStateError):
        _ = emulator.core_url


def test_the_emulator_is_public_in_flame_async_local() -> None:
    import flame_async.local as local

    assert local.__all__ == sorted(local.__all__)
    assert {"HubEmulator", "HubEmulatorStateError", "HubFaults"} <= set(local.__all__)


async def test_records_added_without_http_page_like_the_rest_under_faults(
    session: aiohttp.ClientSession, emulators: AsyncExitStack
) -> None:
    emulator, raw = await start(
        session, emulators, faults=HubFaults(seed=3, get_503=0.05, drop_before=0.02)
    )
    project = emulator.add("projects", name="bulk-project")
    for i in range(1000):
        emulator.add("analyses", project_id=project["id"], name=f"a-{i:04d}")
    assert emulator.creates["analyses"] == 1000
    assert emulator.records("projects")[-1]["analyses"] == 1000
    with pytest.raises(ValueError, match="name"):
        emulator.add("projects", name="x")
    await raw.login()
    seen: list[str] = []
    failures = 0
    while True:
        params = {"page[limit]": "50", "page[offset]": str(len(seen)), "sort": "created_at"}
        try:
            answer = await raw.call("GET", "core", "analyses", params=params)
        except aiohttp.ClientError:
            failures += 1
            continue
        if answer.status == 503:
            failures += 1
            continue
        page = answer.json["data"]
        if not page:
            break
        seen.extend(a["name"] for a in page)
    assert seen == [f"a-{i:04d}" for i in range(1000)]
    assert failures > 0  # the dice did hurt some pages
