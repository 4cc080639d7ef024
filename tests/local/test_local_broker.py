"""The local message broker (PROTOCOL.md §2.1-2.5), called through the node gateways."""

from __future__ import annotations

import uuid

import orjson
import pytest

from flame_async.local import LocalPlatform

from .helpers import Gateway, MakeGateway, StartApi, eventually

MESSAGE = {"weights": [1, 2.5, None], "text": "grüße", "meta": {"category": "w", "id": "node-0-ab"}}


async def test_participants_include_self_with_roles(
    platform: LocalPlatform, gateway: MakeGateway
) -> None:
    expected = [
        {"nodeId": "node-1", "nodeType": "aggregator"},
        {"nodeId": "node-2", "nodeType": "default"},
        {"nodeId": "node-3", "nodeType": "default"},
    ]
    for node in platform.nodes:
        gw: Gateway = gateway(node.node_id)
        async with gw.http.get(gw.broker("/participants"), headers=gw.auth) as response:
            assert response.status == 200
            assert await response.json() == expected


async def test_participants_self_is_the_gateways_node(
    platform: LocalPlatform, gateway: MakeGateway
) -> None:
    for node in platform.nodes:
        gw: Gateway = gateway(node.node_id)
        async with gw.http.get(gw.broker("/participants/self"), headers=gw.auth) as response:
            assert response.status == 200
            assert await response.json() == {"nodeId": node.node_id, "nodeType": node.role}


async def test_unknown_analysis_id_is_404(gateway: MakeGateway) -> None:
    gw: Gateway = gateway("node-1")
    url = gw.url(f"/message-broker/analyses/{uuid.uuid4()}/participants")
    async with gw.http.get(url, headers=gw.auth) as response:
        assert response.status == 404
        assert "detail" in await response.json()


async def test_subscription_crud(platform: LocalPlatform, gateway: MakeGateway) -> None:
    gw: Gateway = gateway("node-2")
    webhook = "http://example.invalid/analysis/webhook"
    async with gw.http.post(
        gw.broker("/messages/subscriptions"), json={"webhookUrl": webhook}, headers=gw.auth
    ) as response:
        assert response.status == 201
        created = await response.json()
        location = response.headers["Location"]
    sub_id = created["subscriptionId"]
    uuid.UUID(sub_id)
    assert created == {
        "subscriptionId": sub_id,
        "analysisId": platform.analysis_id,
        "webhookUrl": webhook,
    }
    assert location == f"/analyses/{platform.analysis_id}/messages/subscriptions/{sub_id}"

    async with gw.http.get(gw.broker("/messages/subscriptions"), headers=gw.auth) as response:
        assert await response.json() == [created]
    one = gw.broker(f"/messages/subscriptions/{sub_id}")
    async with gw.http.get(one, headers=gw.auth) as response:
        assert response.status == 200
        assert await response.json() == created
    async with gw.http.delete(one, headers=gw.auth) as response:
        assert response.status == 204
    async with gw.http.get(one, headers=gw.auth) as response:
        assert response.status == 404
    async with gw.http.delete(one, headers=gw.auth) as response:
        assert response.status == 204  # always
    async with gw.http.get(gw.broker("/messages/subscriptions"), headers=gw.auth) as response:
        assert await response.json() == []


async def test_subscriptions_are_per_node(gateway: MakeGateway) -> None:
    created = await gateway("node-2").subscribe()
    gw: Gateway = gateway("node-3")
    url = gw.broker(f"/messages/subscriptions/{created['subscriptionId']}")
    async with gw.http.get(url, headers=gw.auth) as response:
        assert response.status == 404


async def test_get_subscription_with_non_uuid_id_is_400(gateway: MakeGateway) -> None:
    gw: Gateway = gateway("node-1")
    async with gw.http.get(gw.broker("/messages/subscriptions/nope"), headers=gw.auth) as response:
        assert response.status == 400
        assert "detail" in await response.json()


@pytest.mark.parametrize(
    "body",
    [
        {"webhookUrl": "/analysis/webhook"},
        {"webhookUrl": "not a url"},
        {"webhookUrl": "ftp://host/x"},
        {"webhookUrl": 5},
        {},
        [],
    ],
)
async def test_subscribe_rejects_non_absolute_urls(gateway: MakeGateway, body: object) -> None:
    gw: Gateway = gateway("node-1")
    async with gw.http.post(
        gw.broker("/messages/subscriptions"), json=body, headers=gw.auth
    ) as response:
        assert response.status == 400
        assert (await response.json())["detail"]


async def test_send_is_202_and_delivers_the_message_verbatim(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    receiver = await start_api(platform.node("node-2"))
    await gateway("node-2").subscribe()
    assert await gateway("node-1").send(["node-2"], MESSAGE) == 202

    await eventually(lambda: receiver.on("/webhook"))
    (delivery,) = receiver.on("/webhook")
    assert delivery.method == "POST"
    assert delivery.body == orjson.dumps(MESSAGE)
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["Accept"] == "application/json"
    assert "Authorization" not in delivery.headers

    await eventually(lambda: platform.deliveries)
    (event,) = platform.deliveries
    assert (event.sender, event.recipient, event.outcome, event.attempts, event.status) == (
        "node-1",
        "node-2",
        "delivered",
        1,
        200,
    )
    assert (event.category, event.message_id, event.size) == ("w", "node-0-ab", len(delivery.body))
    assert event.time.tzinfo is not None
    assert event.monotonic >= event.sent_monotonic


async def test_any_json_value_is_delivered(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    receiver = await start_api(platform.node("node-3"))
    await gateway("node-3").subscribe()
    for message in ([1, 2], "text", 0, False):
        assert await gateway("node-1").send(["node-3"], message) == 202
    await eventually(lambda: len(receiver.on("/webhook")) == 4)
    assert sorted(r.body for r in receiver.on("/webhook")) == sorted(
        orjson.dumps(m) for m in ([1, 2], "text", 0, False)
    )
    assert {e.category for e in platform.deliveries} == {None}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"recipients": ["node-1"], "message": {}}, "itself"),
        ({"recipients": ["node-2", "node-9"], "message": {}}, "node-9"),
        ({"recipients": [], "message": {}}, "recipients"),
        ({"message": {}}, "recipients"),
        ({"recipients": "node-2", "message": {}}, "recipients"),
        ({"recipients": [2], "message": {}}, "recipients"),
        ({"recipients": ["node-2"]}, "message"),
        ({"recipients": ["node-2"], "message": None}, "message"),
        ([], "object"),
    ],
)
async def test_send_rejects_bad_requests_with_a_reason(
    platform: LocalPlatform, gateway: MakeGateway, body: object, reason: str
) -> None:
    gw: Gateway = gateway("node-1")
    async with gw.http.post(gw.broker("/messages"), json=body, headers=gw.auth) as response:
        assert response.status == 400
        assert reason in (await response.json())["detail"]
    assert platform.deliveries == []


async def test_send_rejects_a_body_that_is_not_json(gateway: MakeGateway) -> None:
    gw: Gateway = gateway("node-1")
    headers = {**gw.auth, "Content-Type": "application/json"}
    async with gw.http.post(gw.broker("/messages"), data=b"{nope", headers=headers) as response:
        assert response.status == 400
        assert "JSON" in (await response.json())["detail"]


async def test_broadcast_reaches_everyone_but_the_sender(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    apis = {node.node_id: await start_api(node) for node in platform.nodes}
    for node in platform.nodes:
        await gateway(node.node_id).subscribe()
    gw: Gateway = gateway("node-2")
    async with gw.http.post(
        gw.broker("/messages/broadcast"), json={"message": MESSAGE}, headers=gw.auth
    ) as response:
        assert response.status == 202
    await eventually(lambda: len(platform.deliveries) == 2)
    assert sorted(e.recipient for e in platform.deliveries) == ["node-1", "node-3"]
    assert len(apis["node-1"].on("/webhook")) == len(apis["node-3"].on("/webhook")) == 1
    assert apis["node-2"].on("/webhook") == []


async def test_5xx_answers_are_retried_until_delivered(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    receiver = await start_api(platform.node("node-2"))
    receiver.webhook_answers = [500, 503]
    await gateway("node-2").subscribe()
    assert await gateway("node-1").send(["node-2"], MESSAGE) == 202
    await eventually(lambda: platform.deliveries)
    (event,) = platform.deliveries
    assert (event.outcome, event.attempts, event.status) == ("delivered", 3, 200)
    assert [r.body for r in receiver.on("/webhook")] == [orjson.dumps(MESSAGE)] * 3


async def test_persistent_5xx_is_dropped_after_five_retries(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    receiver = await start_api(platform.node("node-2"))
    receiver.webhook_answers = [500] * 10
    await gateway("node-2").subscribe()
    await gateway("node-1").send(["node-2"], MESSAGE)
    await eventually(lambda: platform.deliveries)
    (event,) = platform.deliveries
    assert (event.outcome, event.attempts, event.status) == ("dropped", 6, 500)
    assert len(receiver.on("/webhook")) == 6


async def test_4xx_answer_drops_the_message_without_retry(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    receiver = await start_api(platform.node("node-2"))
    receiver.webhook_answers = [422]
    await gateway("node-2").subscribe()
    await gateway("node-1").send(["node-2"], MESSAGE)
    await eventually(lambda: platform.deliveries)
    (event,) = platform.deliveries
    assert (event.outcome, event.attempts, event.status) == ("dropped", 1, 422)
    assert "422" in event.reason
    assert len(receiver.on("/webhook")) == 1


async def test_unreachable_webhook_is_retried_then_dropped(
    platform: LocalPlatform, gateway: MakeGateway
) -> None:
    await gateway("node-2").subscribe()  # nothing listens on node-2's API port
    await gateway("node-1").send(["node-2"], MESSAGE)
    await eventually(lambda: platform.deliveries)
    (event,) = platform.deliveries
    assert (event.outcome, event.attempts, event.status) == ("dropped", 6, None)
    assert "gave up" in event.reason


async def test_without_subscription_the_message_is_dropped(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    receiver = await start_api(platform.node("node-2"))
    assert await gateway("node-1").send(["node-2"], MESSAGE) == 202
    (event,) = platform.deliveries  # recorded before the 202
    assert (event.outcome, event.attempts, event.subscription_id) == ("dropped", 0, None)
    assert event.reason == "no subscription"
    assert receiver.requests == []


async def test_each_subscription_gets_a_copy(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    receiver = await start_api(platform.node("node-3"))
    first = await gateway("node-3").subscribe()
    second = await gateway("node-3").subscribe()
    await gateway("node-1").send(["node-3", "node-3"], MESSAGE)  # duplicates collapse
    await eventually(lambda: len(platform.deliveries) == 2)
    assert {e.subscription_id for e in platform.deliveries} == {
        first["subscriptionId"],
        second["subscriptionId"],
    }
    assert len(receiver.on("/webhook")) == 2


async def test_webhook_behind_a_gateway_is_delivered_straight_to_the_node_api(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    node = platform.node("node-2")
    receiver = await start_api(node)
    # Neither nginx-<deployment> nor the gateway is contacted: the Host header shows that the
    # request went to the API port directly (through the gateway it would name the gateway).
    await gateway("node-2").subscribe(f"http://{node.nginx_host}/analysis/webhook?x=1")
    await gateway("node-2").subscribe(f"{node.gateway_url}/analysis/webhook")
    await gateway("node-1").send(["node-2"], MESSAGE)
    await eventually(lambda: len(receiver.on("/webhook")) == 2)
    hosts = {r.headers["Host"] for r in receiver.on("/webhook")}
    assert hosts == {f"127.0.0.1:{platform.api_port(node.node_id)}"}
    assert sorted(r.query for r in receiver.on("/webhook")) == ["", "x=1"]
    await eventually(lambda: len(platform.deliveries) == 2)
    assert {e.outcome for e in platform.deliveries} == {"delivered"}


async def test_webhook_elsewhere_is_posted_as_given(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    node = platform.node("node-2")
    receiver = await start_api(node)
    port = platform.api_port(node.node_id)
    await gateway("node-2").subscribe(f"http://localhost:{port}/webhook")
    await gateway("node-1").send(["node-2"], MESSAGE)
    await eventually(lambda: receiver.on("/webhook"))
    assert receiver.on("/webhook")[0].headers["Host"] == f"localhost:{port}"


async def test_broker_healthz_needs_no_token(gateway: MakeGateway) -> None:
    gw: Gateway = gateway("node-1")
    async with gw.http.get(gw.url("/message-broker/healthz")) as response:
        assert response.status == 200


async def test_delivery_counts_and_cursor_agree_with_the_recorded_events(
    platform: LocalPlatform, gateway: MakeGateway, start_api: StartApi
) -> None:
    await start_api(platform.node("node-1"))
    await gateway("node-1").subscribe()  # node-3 has no subscription: its copies are dropped
    gw: Gateway = gateway("node-2")
    async with gw.http.post(
        gw.broker("/messages/broadcast"), json={"message": MESSAGE}, headers=gw.auth
    ) as response:
        assert response.status == 202
    await eventually(lambda: len(platform.deliveries) == 2)

    events, cursor = platform.deliveries_since(0)
    assert (events, cursor) == (platform.deliveries, 2)
    counts = platform.delivery_counts()
    assert (counts.events, counts.delivered, counts.dropped) == (2, 1, 1)
    size = events[0].size
    assert counts.bytes_delivered == size
    sender = platform.node_delivery_counts("node-2")
    assert (sender.sent, sender.sent_delivered, sender.sent_dropped) == (2, 1, 1)
    assert sender.bytes_sent == 2 * size
    assert (sender.received, sender.dropped) == (0, 0)
    assert platform.node_delivery_counts("node-1").received == 1
    assert platform.node_delivery_counts("node-1").bytes_received == size
    assert platform.node_delivery_counts("node-3").dropped == 1
    assert platform.deliveries_since(cursor) == ([], 2)
