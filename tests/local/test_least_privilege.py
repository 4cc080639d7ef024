"""A node's token acts only as that node: on its own gateway, for its own things.

Each test runs three ways: over HTTP on the gateway's own port, over the shared port with
``Host: nginx-{DEPLOYMENT_NAME}``, and in memory (``LocalPlatform(transport="memory")``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson

from flame_async._transport import Request, Response
from flame_async.local import LocalPlatform

from .helpers import Caller, FormSpec, StartApi, eventually

WRONG_NODE = (
    "this token belongs to node-1, not to node-2: a node calls only its own gateway, "
    "with its own token (KEYCLOAK_TOKEN)"
)


def log_entry(platform: LocalPlatform, **fields: Any) -> dict[str, Any]:
    return {
        "log": "hello",
        "log_type": "info",
        "analysis_id": platform.analysis_id,
        "status": "executing",
        "progress": 1,
        **fields,
    }


def requests_of_a_node(caller: Caller) -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, path, options)`` of every route that needs a token, one call each."""
    platform = caller.platform
    sub = caller.broker(f"/messages/subscriptions/{uuid.uuid4()}")
    message = {"recipients": ["node-3"], "message": {"x": 1}}
    intermediate = f"/storage/intermediate/{uuid.uuid4()}"
    return [
        ("GET", caller.broker("/participants"), {}),
        ("GET", caller.broker("/participants/self"), {}),
        ("POST", caller.broker("/messages"), {"json": message}),
        ("POST", caller.broker("/messages/broadcast"), {"json": {"message": {"x": 1}}}),
        ("POST", caller.broker("/messages/subscriptions"), {"json": {"webhookUrl": "http://a/"}}),
        ("GET", caller.broker("/messages/subscriptions"), {}),
        ("GET", sub, {}),
        ("DELETE", sub, {}),
        ("PUT", "/storage/final", {"body": FormSpec()}),
        ("PUT", "/storage/final/localdp", {"body": FormSpec({"epsilon": "1", "sensitivity": "1"})}),
        ("PUT", "/storage/intermediate", {"body": FormSpec({"remote_node_id": "node-3"})}),
        ("GET", intermediate, {"query": "remote_node_id=node-1"}),
        ("PUT", "/storage/local", {"body": FormSpec({"tag": "t"})}),
        ("GET", f"/storage/local/{uuid.uuid4()}", {}),
        ("GET", "/storage/local/tags", {}),
        ("GET", "/storage/local/tags/t", {}),
        ("POST", "/storage/local/tags", {"query": f"tag_name=t&object_id={uuid.uuid4()}"}),
        ("POST", "/po/stream_logs", {"json": log_entry(platform)}),
        ("GET", f"/hub-adapter/kong/datastore/{platform.project_id}", {}),
        ("PUT", "/local-platform/node-api", {"json": {"port": 9}}),
        ("PUT", "/local-platform/node-blocked", {"json": {"seconds": 2.0}}),
    ]


async def test_another_nodes_token_is_refused_on_every_route_and_changes_nothing(
    caller: Caller,
) -> None:
    platform = caller.platform
    for method, path, options in requests_of_a_node(caller):
        answer = await caller.call("node-2", method, path, as_node="node-1", **options)
        assert (answer.status, answer.detail) == (403, WRONG_NODE), (method, path)
    # nothing was done as node-2
    answer = await caller.call(
        "node-2", "GET", caller.broker("/messages/subscriptions"), as_node="node-2"
    )
    assert answer.json() == []
    assert platform.logs("node-2") == []
    assert platform.api_port("node-2") is None
    assert platform.blocked("node-2") is None
    assert platform.final_results() == []
    answer = await caller.call("node-2", "GET", "/storage/local/tags", as_node="node-2")
    assert answer.json() == {"tags": []}


async def test_each_node_works_with_its_own_token(caller: Caller) -> None:
    platform = caller.platform
    for node_id in platform.node_ids:
        answer = await caller.call(
            node_id, "GET", caller.broker("/participants/self"), as_node=node_id
        )
        assert (answer.status, answer.json()["nodeId"]) == (200, node_id)
        answer = await caller.call(
            node_id, "POST", "/po/stream_logs", as_node=node_id, json=log_entry(platform)
        )
        assert answer.status == 200
        answer = await caller.call(
            node_id, "PUT", "/storage/local", as_node=node_id, body=FormSpec({"tag": "mine"})
        )
        assert answer.status == 200
        object_id = answer.json()["object_id"]
        answer = await caller.call(node_id, "GET", f"/storage/local/{object_id}", as_node=node_id)
        assert (answer.status, answer.body) == (200, b"payload")
        answer = await caller.call(
            node_id, "PUT", "/local-platform/node-blocked", as_node=node_id, json={"seconds": 1}
        )
        assert answer.status == 204
        assert [r.log for r in platform.logs(node_id)] == ["hello"]
    answer = await caller.call(
        "node-2", "GET", f"/hub-adapter/kong/datastore/{platform.project_id}", as_node="node-2"
    )
    assert answer.status == 200


async def test_a_node_reads_and_tags_only_its_own_local_objects(caller: Caller) -> None:
    stored = await caller.call(
        "node-1", "PUT", "/storage/local", as_node="node-1", body=FormSpec({"tag": "shared"})
    )
    object_id = stored.json()["object_id"]
    # another node, on its own gateway with its own token, does not see it
    answer = await caller.call("node-2", "GET", f"/storage/local/{object_id}", as_node="node-2")
    assert answer.status == 404
    answer = await caller.call("node-2", "GET", "/storage/local/tags/shared", as_node="node-2")
    assert answer.json() == {"results": []}
    answer = await caller.call(
        "node-2",
        "POST",
        "/storage/local/tags",
        as_node="node-2",
        query=f"tag_name=stolen&object_id={object_id}",
    )
    assert answer.status == 404
    # and with node-1's token it cannot reach node-1's objects through node-2's gateway
    answer = await caller.call("node-2", "GET", f"/storage/local/{object_id}", as_node="node-1")
    assert (answer.status, answer.detail) == (403, WRONG_NODE)


async def test_an_intermediate_object_is_read_once_by_its_receiver_only(caller: Caller) -> None:
    uploaded = await caller.call(
        "node-1",
        "PUT",
        "/storage/intermediate",
        as_node="node-1",
        body=FormSpec({"remote_node_id": "node-2"}, file=b"for node-2"),
    )
    object_id = uploaded.json()["object_id"]
    path, query = f"/storage/intermediate/{object_id}", "remote_node_id=node-1"
    # the uploader's token on the receiver's gateway
    answer = await caller.call("node-2", "GET", path, as_node="node-1", query=query)
    assert (answer.status, answer.detail) == (403, WRONG_NODE)
    # a third node, on its own gateway
    answer = await caller.call("node-3", "GET", path, as_node="node-3", query=query)
    assert answer.status == 403
    assert answer.detail.startswith(f"object {object_id} was uploaded for node-2, not for node-3")
    # the uploader itself, on its own gateway
    answer = await caller.call("node-1", "GET", path, as_node="node-1", query=query)
    assert answer.status == 403
    # the receiver, once; then it is gone
    answer = await caller.call("node-2", "GET", path, as_node="node-2", query=query)
    assert (answer.status, answer.body) == (200, b"for node-2")
    answer = await caller.call("node-2", "GET", path, as_node="node-2", query=query)
    assert (answer.status, answer.detail) == (404, f"Object with ID {object_id} does not exist")


async def test_a_node_sends_and_acknowledges_only_as_itself(caller: Caller) -> None:
    def message(**meta: Any) -> dict[str, Any]:
        return {"recipients": ["node-2"], "message": {"v": 1, "meta": {"id": "m-1", **meta}}}

    send = caller.broker("/messages")
    answer = await caller.call("node-1", "POST", send, as_node="node-1", json=message())
    assert answer.status == 202  # no sender named: nothing to check
    answer = await caller.call(
        "node-1", "POST", send, as_node="node-1", json=message(sender="node-1", akn_id=None)
    )
    assert answer.status == 202
    answer = await caller.call(
        "node-1", "POST", send, as_node="node-1", json=message(sender="node-3", akn_id=None)
    )
    assert (answer.status, answer.detail) == (
        403,
        "meta.sender is 'node-3', but the token belongs to node-1: a node sends only as itself",
    )
    # an acknowledgement keeps the original's sender and names the acknowledger
    answer = await caller.call(
        "node-1", "POST", send, as_node="node-1", json=message(sender="node-2", akn_id="node-1")
    )
    assert answer.status == 202
    answer = await caller.call(
        "node-1", "POST", send, as_node="node-1", json=message(sender="node-2", akn_id="node-3")
    )
    assert answer.status == 403
    assert answer.detail.startswith("meta.akn_id is 'node-3', but the token belongs to node-1")
    await eventually(lambda: len(caller.platform.deliveries) == 3)
    assert {e.sender for e in caller.platform.deliveries} == {"node-1"}


@asynccontextmanager
async def spying(
    caller: Caller, node_id: str, start_api: StartApi
) -> AsyncIterator[Callable[[], list[bytes]]]:
    """Every webhook body ``node_id``'s API receives while inside."""
    if caller.via != "memory":
        api = await start_api(caller.platform.node(node_id))
        yield lambda: [r.body for r in api.on("/webhook")]
        return
    received: list[bytes] = []

    async def handler(request: Request) -> Response:
        received.append(await request.read())
        return Response(200, b"null", headers={"content-type": "application/json"})

    async with anyio.create_task_group() as tg:
        await tg.start(caller.transports[node_id].serve, handler)
        yield lambda: received
        tg.cancel_scope.cancel()


async def test_node_3s_messages_to_node_2_never_reach_a_subscription_made_with_node_1s_token(
    caller: Caller, start_api: StartApi
) -> None:
    async with spying(caller, "node-1", start_api) as spied:
        await _only_own_subscriptions_deliver(caller, spied)


async def _only_own_subscriptions_deliver(caller: Caller, spied: Callable[[], list[bytes]]) -> None:
    platform = caller.platform
    node_1_api = f"{platform.node('node-1').gateway_url}/analysis/webhook"
    subscriptions = caller.broker("/messages/subscriptions")
    # node-1 subscribes its own API as node-2: refused
    answer = await caller.call(
        "node-2", "POST", subscriptions, as_node="node-1", json={"webhookUrl": node_1_api}
    )
    assert (answer.status, answer.detail) == (403, WRONG_NODE)
    # node-2 may not point its own subscription at node-1's API either
    answer = await caller.call(
        "node-2", "POST", subscriptions, as_node="node-2", json={"webhookUrl": node_1_api}
    )
    assert answer.status == 403
    assert answer.detail.startswith("webhookUrl is the API of node-1; node-2 may subscribe only")

    answer = await caller.call(
        "node-3",
        "POST",
        caller.broker("/messages"),
        as_node="node-3",
        json={"recipients": ["node-2"], "message": {"secret": "for node-2"}},
    )
    assert answer.status == 202
    await eventually(lambda: platform.deliveries)
    (event,) = platform.deliveries
    assert (event.recipient, event.outcome, event.reason) == (
        "node-2",
        "dropped",
        "no subscription",
    )
    assert spied() == []

    # node-1's own subscription gets node-1's messages, and only those
    answer = await caller.call(
        "node-1", "POST", subscriptions, as_node="node-1", json={"webhookUrl": node_1_api}
    )
    assert answer.status == 201
    for recipient, text in (("node-2", "still for node-2"), ("node-1", "for node-1")):
        answer = await caller.call(
            "node-3",
            "POST",
            caller.broker("/messages"),
            as_node="node-3",
            json={"recipients": [recipient], "message": {"secret": text}},
        )
        assert answer.status == 202
    await eventually(lambda: len(spied()) == 1 and len(platform.deliveries) == 3)
    assert [orjson.loads(body) for body in spied()] == [{"secret": "for node-1"}]


async def test_the_kong_apikey_is_per_node(caller: Caller) -> None:
    platform = caller.platform
    path = "/kong/node-2-s3/s3/rows.csv"
    for owner, status in (("node-1", 401), ("node-2", 200)):
        key = platform.node(owner).env["DATA_SOURCE_TOKEN"]
        answer = await caller.call("node-2", "GET", path, headers={"apikey": key})
        assert answer.status == status


async def test_a_log_for_another_analysis_is_refused(caller: Caller) -> None:
    platform = caller.platform
    answer = await caller.call(
        "node-1",
        "POST",
        "/po/stream_logs",
        as_node="node-1",
        json=log_entry(platform, analysis_id="another-analysis"),
    )
    assert answer.status == 403
    assert "another-analysis" in answer.detail
    assert platform.logs("node-1") == []
