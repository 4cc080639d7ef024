"""The same wire-level checks against the real Hub and the emulator: the emulator is held to the
real Hub, not to our reading of it.

Every test runs twice through ``hub_backend`` (``[real]`` is marked ``real_hub`` and skipped with
the reason where the real Hub cannot run). On the real Hub, which every test session shares and
which keeps its records, each test works in a realm of its own (``conf-<random>``) or under a
name prefix of its own, so the checks do not depend on what earlier runs left behind.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from flame_async.local import HubEmulator

from ._backends import HubConnection
from ._raw import Answer, RawHub, key

MISSING = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
async def raw(hub_backend: HubConnection) -> AsyncIterator[RawHub]:
    async with aiohttp.ClientSession() as session:
        hub = RawHub(hub_backend, session)
        await hub.login()
        yield hub


async def _realm(raw: RawHub) -> str:
    realm = await raw.create("auth", "realms", {"name": f"conf-{uuid.uuid4().hex[:12]}"})
    return str(realm["id"])


def _names(answer: Answer) -> list[str]:
    assert answer.status == 200, answer.body
    return sorted(item["name"] for item in answer.json["data"])


async def test_lists_answer_data_and_meta(raw: RawHub) -> None:
    answer = await raw.call("GET", "core", "nodes", params={"page[limit]": "1000"})
    assert answer.status == 200
    assert set(answer.json) == {"data", "meta"}
    meta = answer.json["meta"]
    assert set(meta) == {"total", "limit", "offset"}
    assert (meta["limit"], meta["offset"]) == (50, 0)
    # authup pages only when asked to
    realms = await raw.call("GET", "auth", "realms")
    assert set(realms.json["meta"]) == {"total"}
    paged = await raw.call("GET", "auth", "realms", params={"page[limit]": "1000"})
    assert paged.json["meta"]["limit"] == 50


async def test_page_limit_is_capped_at_50_silently(raw: RawHub) -> None:
    realm = await _realm(raw)
    for i in range(51):
        await raw.create("core", "nodes", {"name": f"cap-{i:02d}", "realm_id": realm})
    params = {key(raw.hub, "filter[realm_id]"): realm, "page[limit]": "1000"}
    answer = await raw.call("GET", "core", "nodes", params=params)
    assert answer.json["meta"] == {"total": 51, "limit": 50, "offset": 0}
    assert len(answer.json["data"]) == 50
    rest = await raw.call("GET", "core", "nodes", params={**params, "page[offset]": "50"})
    assert len(rest.json["data"]) == 1


async def test_filter_operators_on_a_prepared_data_set(raw: RawHub) -> None:
    realm = await _realm(raw)
    names = ["alpha-1", "alpha-2", "Alpha_3", "beta-1", "gamma", "hidden-1"]
    created = {}
    for name in names:
        created[name] = await raw.create("core", "nodes", {"name": name, "realm_id": realm})
    hide = await raw.call(
        "POST", "core", f"nodes/{created['hidden-1']['id']}", json={"hidden": True}
    )
    assert hide.status == 202

    async def select(value: str, field: str = "name") -> list[str]:
        params = [
            (f"filter[{key(raw.hub, 'realm_id')}]", realm),
            (f"filter[{key(raw.hub, field)}]", value),
        ]
        return _names(await raw.call("GET", "core", "nodes", params=params))

    everyone = sorted(names)
    assert await select("alpha-1") == ["alpha-1"]
    assert await select("!alpha-1") == [n for n in everyone if n != "alpha-1"]
    assert await select("~alpha") == ["Alpha_3", "alpha-1", "alpha-2"]
    assert await select("~ALPHA_") == ["Alpha_3", "alpha-1", "alpha-2"]
    assert await select("!~alpha") == ["beta-1", "gamma", "hidden-1"]
    assert await select("<beta") == ["Alpha_3", "alpha-1", "alpha-2"]
    assert await select("<=beta-1") == ["Alpha_3", "alpha-1", "alpha-2", "beta-1"]
    assert await select(">gamma") == ["hidden-1"]
    assert await select(">=gamma") == ["gamma", "hidden-1"]
    assert await select("gamma,beta-1") == ["beta-1", "gamma"]
    assert await select("!gamma,beta-1") == ["Alpha_3", "alpha-1", "alpha-2", "hidden-1"]
    assert await select(" gamma ") == ["gamma"]
    assert await select("true", "hidden") == ["hidden-1"]
    assert await select("False", "hidden") == [n for n in everyone if n != "hidden-1"]
    assert await select("null", "robot_id") == []
    assert await select("!null", "robot_id") == everyone
    # a key outside the allow-list is dropped on the 0.8 line: the realm filter alone remains
    assert await select("nothing", "external_name") == everyone


async def test_sort_with_minus_is_descending(raw: RawHub) -> None:
    realm = await _realm(raw)
    for name in ("bbb", "aaa", "ccc"):
        await raw.create("core", "nodes", {"name": name, "realm_id": realm})
    params = {f"filter[{key(raw.hub, 'realm_id')}]": realm, "sort": "-name"}
    answer = await raw.call("GET", "core", "nodes", params=params)
    assert [n["name"] for n in answer.json["data"]] == ["ccc", "bbb", "aaa"]


async def test_fields_select_or_drop_on_nodes_and_are_ignored_on_analyses(raw: RawHub) -> None:
    realm = await _realm(raw)
    await raw.create("core", "nodes", {"name": "fields-1", "realm_id": realm, "type": "aggregator"})
    base = [(f"filter[{key(raw.hub, 'realm_id')}]", realm)]

    async def node(fields: str) -> dict[str, Any]:
        answer = await raw.call("GET", "core", "nodes", params=[*base, ("fields", fields)])
        return dict(answer.json["data"][0])

    assert await node("name") == {"name": "fields-1"}
    assert await node("name,type,bogus") == {"name": "fields-1", "type": "aggregator"}
    dropped = await node("-name")
    assert "name" not in dropped
    assert "id" in dropped
    assert "name" in await node("bogus")
    project = await raw.create("core", "projects", {"name": f"conf-{uuid.uuid4().hex[:8]}"})
    await raw.create("core", "analyses", {"project_id": project["id"]})
    params = [(f"filter[{key(raw.hub, 'project_id')}]", project["id"]), ("fields", "name")]
    analysis = (await raw.call("GET", "core", "analyses", params=params)).json["data"][0]
    assert {"id", "name", key(raw.hub, "configuration_locked")} <= analysis.keys()


async def test_missing_records_answer_404_with_the_error_shape(raw: RawHub) -> None:
    for service, path in (
        ("core", f"nodes/{MISSING}"),
        ("core", f"analyses/{MISSING}"),
        ("storage", f"buckets/{MISSING}"),
    ):
        answer = await raw.call("GET", service, path)
        assert answer.status == 404
        assert answer.json == {"statusCode": 404, "code": "NOT_FOUND", "message": ""}
    deleted = await raw.call("DELETE", "core", f"nodes/{MISSING}")
    assert deleted.status == 404


async def test_a_duplicate_name_in_a_realm_conflicts(raw: RawHub) -> None:
    realm = await _realm(raw)
    await raw.create("core", "nodes", {"name": "twin", "realm_id": realm})
    again = await raw.call(
        "POST", "core", "nodes", json={"name": "twin", key(raw.hub, "realm_id"): realm}
    )
    assert (again.status, again.json["code"]) == (409, "SQLITE_CONSTRAINT_UNIQUE")
    elsewhere = await _realm(raw)
    await raw.create("core", "nodes", {"name": "twin", "realm_id": elsewhere})


async def test_invalid_create_names_the_attribute(raw: RawHub) -> None:
    answer = await raw.call("POST", "core", "nodes", json={})
    assert answer.status == 400
    assert answer.json["statusCode"] == 400
    assert answer.json["attributes"] == ["name"]
    short = await raw.call("POST", "core", "nodes", json={"name": "ab"})
    assert (short.status, short.json["attributes"]) == (400, ["name"])


async def test_create_update_delete_codes_and_joined_answers(raw: RawHub) -> None:
    realm = await raw.master_realm_id()
    project = await raw.create("core", "projects", {"name": f"conf-{uuid.uuid4().hex[:8]}"})
    analysis = await raw.create("core", "analyses", {"project_id": project["id"], "name": "conf-a"})
    assert analysis[key(raw.hub, "configuration_locked")] is False
    assert analysis["project"]["id"] == project["id"]  # the create answer joins the project
    plain = await raw.call("GET", "core", f"analyses/{analysis['id']}")
    assert "project" not in plain.json
    joined = await raw.call(
        "GET", "core", f"analyses/{analysis['id']}", params={"include": "project"}
    )
    assert joined.json["project"]["id"] == project["id"]
    node = await raw.create(
        "core", "nodes", {"name": f"conf-{uuid.uuid4().hex[:8]}", "realm_id": realm}
    )
    assert node[key(raw.hub, "robot_id")]  # a node brings its robot
    pair = {key(raw.hub, "analysis_id"): analysis["id"], key(raw.hub, "node_id"): node["id"]}
    outside = await raw.call("POST", "core", "analysis-nodes", json=pair)
    assert outside.status == 404  # the node is not part of the project yet
    await raw.create("core", "project-nodes", {"project_id": project["id"], "node_id": node["id"]})
    member = await raw.create(
        "core", "analysis-nodes", {"analysis_id": analysis["id"], "node_id": node["id"]}
    )
    assert member[key(raw.hub, "approval_status")] == "approved"
    updated = await raw.call("POST", "core", f"nodes/{node['id']}", json={"hidden": True})
    assert updated.status == 202
    assert (updated.json["hidden"], updated.json["name"]) == (True, node["name"])
    bucket = await raw.create(
        "core",
        "analysis-buckets",
        {"analysis_id": analysis["id"], "type": "CODE", "external_id": MISSING},
    )
    assert bucket[key(raw.hub, "external_id")] is None  # the 0.8.14 validator drops it
    for path in (f"analysis-nodes/{member['id']}", f"analyses/{analysis['id']}"):
        assert (await raw.call("DELETE", "core", path)).status == 202
        assert (await raw.call("GET", "core", path)).status == 404


async def test_configuration_lock_when_commands_work(raw: RawHub) -> None:
    if not raw.hub.commands:
        answer = await raw.call(
            "POST", "core", f"analyses/{MISSING}/command", json={"command": "configurationLock"}
        )
        pytest.skip(f"analysis commands are off on this Hub (no RabbitMQ): {answer.status}")
    realm = await raw.master_realm_id()
    images = await raw.call("GET", "core", "master-images")
    image = images.json["data"][0]["id"]
    project = await raw.create(
        "core", "projects", {"name": f"conf-{uuid.uuid4().hex[:8]}", "master_image_id": image}
    )
    analysis = await raw.create("core", "analyses", {"project_id": project["id"]})
    command = f"analyses/{analysis['id']}/command"

    async def lock() -> Answer:
        return await raw.call("POST", "core", command, json={"command": "configurationLock"})

    assert (await lock()).json["message"] == "The analysis requires at least two nodes."
    for node_type in ("aggregator", "default"):
        node = await raw.create(
            "core",
            "nodes",
            {"name": f"conf-{uuid.uuid4().hex[:8]}", "realm_id": realm, "type": node_type},
        )
        await raw.create(
            "core", "project-nodes", {"project_id": project["id"], "node_id": node["id"]}
        )
        await raw.create(
            "core", "analysis-nodes", {"analysis_id": analysis["id"], "node_id": node["id"]}
        )
    assert (await lock()).json["message"] == "The analysis bucket for code files does not exist."
    code = await raw.create(
        "core", "analysis-buckets", {"analysis_id": analysis["id"], "type": "CODE"}
    )
    no_root = await lock()
    assert no_root.json["message"].startswith("At least one code file must be uploaded")
    await raw.create(
        "core",
        "analysis-bucket-files",
        {"bucket_id": code["id"], "name": "main.py", "root": True, "external_id": MISSING},
    )
    locked = await lock()
    assert locked.status == 202
    assert locked.json[key(raw.hub, "configuration_locked")] is True
    again = await lock()
    assert (again.status, again.json["message"]) == (
        400,
        "The analysis configuration is already locked.",
    )


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = orjson.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


async def test_token_grants_and_refusals(raw: RawHub) -> None:
    hub = raw.hub
    login = await raw.grant(
        {"grant_type": "password", "username": hub.user, "password": hub.password}
    )
    assert login.status == 200
    assert {"access_token", "refresh_token", "expires_in", "token_type"} <= login.json.keys()
    assert login.json["expires_in"] == 3600
    claims = _claims(login.json["access_token"])
    assert claims["exp"] - claims["iat"] == pytest.approx(hub.access_token_max_age, abs=1)
    robot = await raw.grant(
        {"grant_type": "robot_credentials", "id": hub.robot_id, "secret": hub.robot_secret}
    )
    assert robot.status == 200
    refresh = {"grant_type": "refresh_token", "refresh_token": login.json["refresh_token"]}
    assert (await raw.grant(refresh)).status == 200
    reused = await raw.grant(refresh)
    assert (reused.status, reused.json["code"]) == (400, "inactive_token")
    wrong = await raw.grant({"grant_type": "password", "username": hub.user, "password": "nope"})
    assert (wrong.status, wrong.json["code"]) == (400, "invalid_credentials")
    assert "nope" not in wrong.body.decode()
    bad_robot = await raw.grant(
        {"grant_type": "robot_credentials", "id": hub.robot_id, "secret": "nope"}
    )
    assert (bad_robot.status, bad_robot.json["code"]) == (400, "invalid_credentials")


async def test_requests_without_or_with_a_bad_token(raw: RawHub) -> None:
    missing = await raw.call("GET", "core", "nodes", authenticate=False)
    assert (missing.status, missing.json["code"]) == (401, "UNAUTHORIZED")
    malformed = await raw.call("GET", "core", "nodes", token="abc.def.ghi")
    assert malformed.json == {"statusCode": 400, "code": "BAD_REQUEST", "message": ""}
    on_auth = await raw.call("GET", "auth", "users", token="abc.def.ghi")
    assert (on_auth.status, on_auth.json["code"]) == (400, "invalid_token")


async def test_upload_then_stream_file_and_bucket_tar(raw: RawHub) -> None:
    bucket = await raw.create("storage", "buckets", {"name": f"conf-{uuid.uuid4().hex[:12]}"})
    payload = bytes(range(256)) * 4096  # 1 MiB
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", io.BytesIO(b"print(1)\n"), filename="main.py")
    form.add_field("data", io.BytesIO(payload), filename="sub/data.bin")
    answer = await raw.call("POST", "storage", f"buckets/{bucket['id']}/upload", data=form)
    assert answer.status == 201
    assert answer.json["meta"] == {"total": 2}
    files = answer.json["data"]
    files.sort(key=lambda f: str(f["name"]), reverse=True)  # the Hub answers in finishing order
    shown = [(f["name"], f["path"], f["directory"], f["size"]) for f in files]
    assert shown == [
        ("main.py", "main.py", ".", 9),
        ("data.bin", "sub/data.bin", "sub", len(payload)),
    ]
    assert files[1]["hash"] == hashlib.sha256(b"sub/data.bin").hexdigest()  # of the path
    streamed = await raw.call("GET", "storage", f"bucket-files/{files[1]['id']}/stream")
    assert streamed.status == 200
    assert hashlib.sha256(streamed.body).digest() == hashlib.sha256(payload).digest()
    tar = await raw.call("GET", "storage", f"buckets/{bucket['id']}/stream")
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as archive:
        assert sorted(archive.getnames()) == ["main.py", "sub/data.bin"]
        member = archive.extractfile("sub/data.bin")
        assert member is not None
        assert member.read() == payload


async def test_upload_file_names_arrive_as_the_hubs_multipart_parser_reads_them(
    raw: RawHub,
) -> None:
    bucket = await raw.create("storage", "buckets", {"name": f"conf-{uuid.uuid4().hex[:12]}"})
    quoted = aiohttp.FormData()  # aiohttp percent-encodes names by default: kept verbatim
    quoted.add_field("f", io.BytesIO(b"x"), filename="sub/\u00e4 b.txt")
    answer = await raw.call("POST", "storage", f"buckets/{bucket['id']}/upload", data=quoted)
    assert answer.json["data"][0]["path"] == "sub%2F%C3%A4%20b.txt"
    plain = aiohttp.FormData(quote_fields=False)  # raw UTF-8: read as latin-1
    plain.add_field("f", io.BytesIO(b"x"), filename="sub/\u00e4 b.txt")
    answer = await raw.call("POST", "storage", f"buckets/{bucket['id']}/upload", data=plain)
    (stored,) = answer.json["data"]
    assert (stored["path"], stored["name"]) == ("sub/\u00c3\u00a4 b.txt", "\u00c3\u00a4 b.txt")


async def test_a_second_upload_of_a_path_replaces_the_content_of_both_records(
    raw: RawHub,
) -> None:
    bucket = await raw.create("storage", "buckets", {"name": f"conf-{uuid.uuid4().hex[:12]}"})
    ids = []
    for content in (b"one\n", b"two\n"):
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("f", io.BytesIO(content), filename="same.txt")
        answer = await raw.call("POST", "storage", f"buckets/{bucket['id']}/upload", data=form)
        ids.append(answer.json["data"][0]["id"])
    assert ids[0] != ids[1]
    for file_id in ids:
        streamed = await raw.call("GET", "storage", f"bucket-files/{file_id}/stream")
        assert streamed.body == b"two\n"
    tar = await raw.call("GET", "storage", f"buckets/{bucket['id']}/stream")
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as archive:
        assert archive.getnames() == ["same.txt", "same.txt"]


# -- short token lifetimes: the real Hub's second instance against an emulator set the same way --


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.real_hub("short")), "emulator"])
async def short_tokens(request: pytest.FixtureRequest) -> AsyncIterator[RawHub]:
    """A Hub whose access tokens live 5 s and refresh tokens 20 s."""
    async with aiohttp.ClientSession() as session:
        if request.param == "real":
            yield RawHub(request.getfixturevalue("real_hub_short_tokens"), session)
            return
        async with HubEmulator(access_token_lifetime=5, refresh_token_lifetime=20) as emulator:
            yield RawHub(HubConnection.of_emulator(emulator), session)


async def test_expired_access_token_gets_500_and_expires_in_still_says_3600(
    short_tokens: RawHub,
) -> None:
    raw = short_tokens
    login = await raw.grant(
        {"grant_type": "password", "username": raw.hub.user, "password": raw.hub.password}
    )
    assert login.json["expires_in"] == 3600
    token = login.json["access_token"]
    claims = _claims(token)
    assert claims["exp"] - claims["iat"] == 5
    assert (await raw.call("GET", "core", "nodes", token=token)).status == 200
    # the token's own exp is the only truth; authup compares whole seconds, so a token dies
    # once the second after its exp has begun
    await asyncio.sleep(max(0.0, claims["exp"] + 1 - time.time()) + 0.1)
    for service, path in (("core", "nodes"), ("auth", "users")):
        expired = await raw.call("GET", service, path, token=token)
        assert expired.status == 500, (service, expired.body)
        assert expired.json["statusCode"] == 500
    refreshed = await raw.grant(
        {"grant_type": "refresh_token", "refresh_token": login.json["refresh_token"]}
    )
    assert refreshed.status == 200
    fresh = refreshed.json["access_token"]
    assert (await raw.call("GET", "core", "nodes", token=fresh)).status == 200
