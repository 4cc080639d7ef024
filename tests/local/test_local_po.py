"""The local pod orchestrator: log intake and the per-node status loop (PROTOCOL.md §5)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from flame_async._jwt import decode_claims
from flame_async.errors import InvalidArgument
from flame_async.local import LocalPlatform

from .helpers import Gateway, MakeGateway, StartApi, StartPlatform, eventually

LOG = {
    "log": "step 1\nstep 2",
    "log_type": "info",
    "analysis_id": "",
    "status": "executing",
    "progress": 10,
}


async def stream(gw: Gateway, **fields: object) -> tuple[int, object]:
    body = {**LOG, "analysis_id": gw.platform.analysis_id, **fields}
    async with gw.http.post(gw.url("/po/stream_logs"), json=body, headers=gw.auth) as response:
        return response.status, await response.json()


async def test_stream_logs_stores_the_record_status_and_progress(
    platform: LocalPlatform, gateway: MakeGateway
) -> None:
    gw: Gateway = gateway("node-2")
    assert platform.status("node-2") is None
    assert await stream(gw) == (200, None)
    (record,) = platform.logs("node-2")
    assert (record.node_id, record.log, record.log_type) == ("node-2", "step 1\nstep 2", "info")
    assert (record.status, record.progress) == ("executing", 10)
    assert record.time.tzinfo is not None
    assert (platform.status("node-2"), platform.progress("node-2")) == ("executing", 10)
    assert platform.logs("node-1") == []


async def test_progress_only_grows(platform: LocalPlatform, gateway: MakeGateway) -> None:
    gw: Gateway = gateway("node-1")
    for progress in (40, 20, 40, 55):
        assert (await stream(gw, progress=progress))[0] == 200
    assert platform.progress("node-1") == 55
    assert [r.progress for r in platform.logs("node-1")] == [40, 20, 40, 55]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"log_type": "warning"}, ["body", "log_type"]),
        ({"status": "running"}, ["body", "status"]),
        ({"progress": 101}, ["body", "progress"]),
        ({"progress": -1}, ["body", "progress"]),
        ({"log": 5}, ["body", "log"]),
    ],
)
async def test_stream_logs_rejects_invalid_fields_with_422(
    platform: LocalPlatform, gateway: MakeGateway, fields: dict[str, object], loc: list[str]
) -> None:
    status, body = await stream(gateway("node-1"), **fields)
    assert status == 422
    assert isinstance(body, dict)
    assert [error["loc"] for error in body["detail"]] == [loc]
    assert all({"type", "msg"} <= error.keys() for error in body["detail"])
    assert platform.logs("node-1") == []


async def test_stream_logs_rejects_missing_fields_and_bad_json(gateway: MakeGateway) -> None:
    gw: Gateway = gateway("node-1")
    async with gw.http.post(
        gw.url("/po/stream_logs"), json={"log": "x"}, headers=gw.auth
    ) as response:
        assert response.status == 422
        missing = {tuple(e["loc"]) for e in (await response.json())["detail"]}
    assert missing == {("body", f) for f in ("log_type", "analysis_id", "status", "progress")}
    async with gw.http.post(gw.url("/po/stream_logs"), data=b"{", headers=gw.auth) as response:
        assert response.status == 422


async def test_status_loop_posts_partner_status_polls_healthz_and_refreshes_tokens(
    start_platform: StartPlatform,
    start_api: StartApi,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flame_async.local")
    platform: LocalPlatform = await start_platform(po_interval=0.02)
    apis = {node.node_id: await start_api(node) for node in platform.nodes[:2]}  # node-3 is down
    api = apis["node-1"]
    api.token_remaining = 1  # about to expire: below 2 * po_interval + 1 s

    await eventually(lambda: api.on("/token_refresh"))
    first = api.on("/partner_status")[0].json()
    assert first == {"partner_status": {"node-2": None, "node-3": None}}
    assert api.on("/healthz")
    assert platform.health("node-1") == "executing"

    refreshed = api.on("/token_refresh")[0].json()["token"]
    claims = decode_claims(refreshed)
    assert (claims["sub"], claims["client_id"]) == ("node-1", platform.analysis_id)
    assert refreshed != platform.node("node-1").env["KEYCLOAK_TOKEN"]  # env is not changed
    await eventually(lambda: platform.token("node-1") == refreshed)
    # the refreshed token is accepted by the gateway
    gw = Gateway(http, platform, platform.node("node-1"))
    gw.auth = {"Authorization": "Bearer " + refreshed}
    assert (await stream(gw))[0] == 200

    # partners' statuses come from what they reported
    assert (await stream(Gateway(http, platform, platform.node("node-2"))))[0] == 200
    await eventually(
        lambda: api.on("/partner_status")[-1].json()["partner_status"]["node-2"] == "executing"
    )
    # a fresh token is not refreshed again; node-2's never needed it
    polls = len(api.on("/healthz"))
    await eventually(lambda: len(api.on("/healthz")) >= polls + 3)
    assert len(api.on("/token_refresh")) == 1
    assert apis["node-2"].on("/token_refresh") == []

    # a node whose API is not listening is "unreachable", quietly
    await eventually(lambda: platform.health("node-3") == "unreachable")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_status_loop_stops_once_the_node_is_terminal(
    start_platform: StartPlatform, start_api: StartApi
) -> None:
    platform: LocalPlatform = await start_platform(po_interval=0.01)
    apis = {node.node_id: await start_api(node) for node in platform.nodes}
    apis["node-1"].status = "executed"  # reported by /healthz

    await eventually(lambda: platform.status("node-1") == "executed")
    polls = len(apis["node-1"].on("/healthz"))
    others = len(apis["node-2"].on("/healthz"))
    await eventually(lambda: len(apis["node-2"].on("/healthz")) >= others + 5)
    assert len(apis["node-1"].on("/healthz")) == polls
    assert apis["node-2"].on("/partner_status")[-1].json()["partner_status"]["node-1"] == "executed"


async def test_status_loop_stops_after_a_terminal_log_status(
    start_platform: StartPlatform, start_api: StartApi, http: aiohttp.ClientSession
) -> None:
    platform: LocalPlatform = await start_platform(po_interval=0.01)
    apis = {node.node_id: await start_api(node) for node in platform.nodes}
    await eventually(lambda: apis["node-3"].on("/healthz"))
    assert (await stream(Gateway(http, platform, platform.node("node-3")), status="failed"))[
        0
    ] == 200
    await eventually(
        lambda: (
            apis["node-1"].on("/partner_status")[-1].json()["partner_status"]["node-3"] == "failed"
        )
    )
    polls = len(apis["node-3"].on("/healthz"))
    others = len(apis["node-1"].on("/healthz"))
    await eventually(lambda: len(apis["node-1"].on("/healthz")) >= others + 5)
    assert len(apis["node-3"].on("/healthz")) <= polls + 1  # at most the round in flight
    assert platform.status("node-3") == "failed"


async def test_every_node_gets_the_statuses_of_all_others_and_not_its_own(
    start_platform: StartPlatform, start_api: StartApi
) -> None:
    """Each body is cut from one encoding of every status: first, middle and last node."""
    platform: LocalPlatform = await start_platform(4, po_interval=0.01)
    apis = {node.node_id: await start_api(node) for node in platform.nodes}

    await eventually(lambda: all(api.on("/partner_status") for api in apis.values()))

    for node_id, api in apis.items():
        body = api.on("/partner_status")[0].json()
        assert body == {"partner_status": {n: None for n in apis if n != node_id}}, node_id


async def test_the_status_loop_is_one_task_whatever_the_number_of_nodes(
    start_platform: StartPlatform,
) -> None:
    await start_platform(40, po_interval=3600.0)

    loops = [t for t in asyncio.all_tasks() if t.get_name().startswith("PO status")]

    assert len(loops) == 1


async def test_logs_since_and_nodes_changed_since_hand_out_only_what_is_new(
    platform: LocalPlatform, gateway: MakeGateway
) -> None:
    assert platform.nodes_changed_since(0) == ([], 0)
    for text in ("a", "b"):
        assert (await stream(gateway("node-2"), log=text))[0] == 200
    assert (await stream(gateway("node-1"), log="c"))[0] == 200

    changed, cursor = platform.nodes_changed_since(0)
    assert (changed, cursor) == (["node-2", "node-1"], 3)
    records, seen = platform.logs_since("node-2", 0)
    assert ([r.log for r in records], seen) == (["a", "b"], 2)

    assert (await stream(gateway("node-2"), log="d"))[0] == 200
    assert platform.nodes_changed_since(cursor) == (["node-2"], 4)
    records, seen = platform.logs_since("node-2", seen)
    assert ([r.log for r in records], seen) == (["d"], 3)
    assert platform.logs_since("node-2", seen) == ([], 3)
    assert platform.nodes_changed_since(4) == ([], 4)
    with pytest.raises(InvalidArgument):
        platform.logs_since("node-2", -1)


async def test_above_256_nodes_partner_status_lists_only_nodes_in_a_status_acted_on(
    start_platform: StartPlatform, start_api: StartApi, http: aiohttp.ClientSession
) -> None:
    """A full list to each of N nodes costs O(N^2) per interval: at scale only the partners a
    node would adopt a status from are listed (ended or stopping)."""
    platform: LocalPlatform = await start_platform(300, po_interval=0.01)
    api = await start_api(platform.node("node-1"))
    await eventually(lambda: api.on("/partner_status"))
    assert api.on("/partner_status")[0].json() == {"partner_status": {}}

    assert (await stream(Gateway(http, platform, platform.node("node-3")), status="failed"))[
        0
    ] == 200
    await eventually(
        lambda: api.on("/partner_status")[-1].json() == {"partner_status": {"node-3": "failed"}}
    )
