"""The node's REST API: malformed input is refused with reasons; the runtime keeps working.

Requests reach the API the way the platform's broker and PO reach it (``platform.call_api``):
over real HTTP on the HTTP transport, by a direct call on the in-memory one. What
``/token_refresh`` takes is pinned in ``test_token_refresh.py``; seeded random input in
``test_node_api_fuzz.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from flame_async import PeerFailed
from flame_async._transport import Request
from flame_async.local import LocalPlatform

from .conftest import running

pytestmark = pytest.mark.slow


def meta(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "outgoing",
        "category": "c",
        "id": "m-1",
        "akn_id": None,
        "status": "unread",
        "sender": "node-1",
        "created_at": "2026-01-01 00:00:00",
        "arrived_at": None,
        "number": 0,
    }
    base.update(overrides)
    return base


JSON = {"content-type": "application/json"}


async def call(
    platform: LocalPlatform,
    node_id: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request to a node's API; its status and decoded JSON answer."""
    request = Request(method, path, headers=headers or {}, body=body or None)
    async with platform.call_api(node_id, request) as answer:
        return answer.status, orjson.loads(await answer.read())


def post_json(platform: LocalPlatform, node_id: str, path: str, value: object) -> Any:
    return call(platform, node_id, "POST", path, orjson.dumps(value), JSON)


MALFORMED: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("POST", "/webhook", b"", JSON, 400),
    ("POST", "/webhook", b"{not json", JSON, 400),
    ("POST", "/webhook", b"[1, 2]", JSON, 400),
    ("POST", "/webhook", b'"text"', JSON, 400),
    ("POST", "/webhook", b"null", JSON, 400),
    ("POST", "/webhook", b'{"value": 1}', JSON, 400),
    ("POST", "/webhook", b'{"meta": "x"}', JSON, 400),
    ("POST", "/webhook", orjson.dumps({"meta": meta(id=None)}), JSON, 422),
    ("POST", "/webhook", orjson.dumps({"meta": meta(sender=5)}), JSON, 422),
    ("POST", "/webhook", orjson.dumps({"meta": {"id": "x"}}), JSON, 422),
    ("POST", "/webhook", orjson.dumps({"meta": meta(number="one")}), JSON, 422),
    ("POST", "/webhook", orjson.dumps({"meta": meta(akn_id=7)}), JSON, 422),
    (
        "POST",
        "/webhook",
        orjson.dumps({"meta": meta(stream={"epoch": "e", "seq": "x"})}),
        JSON,
        422,
    ),
    ("POST", "/webhook", orjson.dumps({"meta": meta(sender="node-2")}), JSON, 422),  # itself
    ("POST", "/webhook", orjson.dumps({"meta": meta(sender="stranger")}), JSON, 422),
    ("POST", "/webhook", b"x" * (2 * 1024 * 1024), JSON, 413),
    ("POST", "/webhook", b"{}", {"content-type": "text/plain"}, 415),
    ("GET", "/webhook", b"", {}, 405),
    ("POST", "/token_refresh", b"{}", JSON, 400),
    ("POST", "/token_refresh", b'{"token": 5}', JSON, 400),
    ("POST", "/token_refresh", b'{"token": "abc"}', JSON, 400),
    ("POST", "/partner_status", b"{}", JSON, 400),
    ("POST", "/partner_status", b'{"partner_status": [1]}', JSON, 422),
    ("POST", "/partner_status", b'{"partner_status": {"a": 1}}', JSON, 422),
    ("GET", "/nope", b"", {}, 404),
]


async def test_malformed_requests_get_4xx_with_reason_and_messaging_survives(
    transport: str,
) -> None:
    async with running(2, transport=transport, config={"max_api_body_bytes": 1024 * 1024}) as (
        platform,
        (a, b),
    ):
        reasons = set()
        for method, path, body, headers, status in MALFORMED:
            answered, payload = await call(platform, b.node_id, method, path, body, headers)
            assert answered == status, (path, body[:60], answered, payload)
            assert isinstance(payload["detail"], str) and payload["detail"], payload
            reasons.add(payload["detail"])
        assert len(MALFORMED) >= 15
        assert len(reasons) >= 15  # distinct, specific reasons
        assert sum(b.rejected_requests.values()) == len(MALFORMED)
        report = await a.send_message(b.node_id, {"still": "working"}, category="after")
        assert report.ok
        assert (await b.await_message(a.node_id, category="after", timeout=5)).data == {
            "still": "working"
        }


async def test_healthz_reports_status_and_token_time(transport: str) -> None:
    async with running(2, transport=transport) as (platform, (a, _b)):
        status, body = await call(platform, a.node_id, "GET", "/healthz")
        assert status == 200
        assert body["status"] == "executing"
        assert 3000 < body["token_remaining_time"] <= 3600


async def test_partner_status_is_ignored_during_grace_then_adopted(transport: str) -> None:
    failed = {"partner_status": {"node-2": "failed"}}
    async with running(2, transport=transport, partner_status_grace=3600) as (platform, (a, b)):
        assert b.node_id == "node-2"
        answer = await post_json(platform, a.node_id, "/partner_status", failed)
        assert answer == (200, {"status": "executing"})  # still in the grace period
    async with running(2, transport=transport, partner_status_grace=0) as (platform, (a, b)):
        answer = await post_json(platform, a.node_id, "/partner_status", failed)
        assert answer == (200, {"status": "failed"})
        with pytest.raises(PeerFailed):
            await a.await_message(b.node_id, timeout=5)
