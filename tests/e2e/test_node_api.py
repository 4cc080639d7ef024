"""The node's REST API: malformed input is refused with reasons; the runtime keeps working."""

from __future__ import annotations

import base64
import io
import time

import aiohttp
import orjson
import pytest

from flame_async import AuthenticationError, PeerFailed

from .conftest import running

pytestmark = pytest.mark.slow


def token_with(exp: float) -> str:
    def seg(obj: object) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256'})}.{seg({'exp': exp, 'client_id': 'x'})}.c2ln"


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


JSON = {"Content-Type": "application/json"}

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
    ("POST", "/webhook", b"{}", {"Content-Type": "text/plain"}, 415),
    ("GET", "/webhook", b"", {}, 405),
    ("POST", "/token_refresh", b"{}", JSON, 400),
    ("POST", "/token_refresh", b'{"token": 5}', JSON, 400),
    ("POST", "/token_refresh", b'{"token": "abc"}', JSON, 400),
    ("POST", "/partner_status", b"{}", JSON, 400),
    ("POST", "/partner_status", b'{"partner_status": [1]}', JSON, 422),
    ("POST", "/partner_status", b'{"partner_status": {"a": 1}}', JSON, 422),
    ("GET", "/nope", b"", {}, 404),
]


async def test_malformed_requests_get_4xx_with_reason_and_messaging_survives() -> None:
    async with running(2, config={"max_api_body_bytes": 1024 * 1024}) as (_, (a, b)):
        url = f"http://127.0.0.1:{b.api_port}"
        reasons = set()
        async with aiohttp.ClientSession() as http:
            for method, path, body, headers, status in MALFORMED:
                data = io.BytesIO(body) if len(body) > 1024 * 1024 else body
                async with http.request(method, url + path, data=data, headers=headers) as r:
                    payload = await r.json(content_type=None)
                    assert r.status == status, (path, body[:60], r.status, payload)
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


async def test_healthz_reports_status_and_token_time() -> None:
    async with running(2) as (_, (a, _b)), aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{a.api_port}/healthz") as r:
            body = await r.json()
        assert body["status"] == "executing"
        assert 3000 < body["token_remaining_time"] <= 3600


async def test_token_refresh_swaps_the_bearer_token_in_place() -> None:
    async with running(2) as (platform, (a, b)):
        fresh = platform.token(a.node_id)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{a.api_port}/token_refresh", json={"token": fresh}
            ) as r:
                assert r.status == 200
                assert (await r.json()) == {"message": "Token refreshed successfully"}
            # an expired token is accepted by the node (the services judge it), and then used
            async with http.post(
                f"http://127.0.0.1:{a.api_port}/token_refresh",
                json={"token": token_with(time.time() - 10)},
            ) as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{a.api_port}/healthz") as r:
                assert (await r.json())["token_remaining_time"] == 0
        with pytest.raises(AuthenticationError):
            await a.send_message(b.node_id, {}, category="x", timeout=2)


async def test_partner_status_is_ignored_during_grace_then_adopted() -> None:
    async with running(2, partner_status_grace=3600) as (_, (a, b)):
        url = f"http://127.0.0.1:{a.api_port}/partner_status"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json={"partner_status": {b.node_id: "failed"}}) as r,
        ):
            assert (await r.json()) == {"status": "executing"}  # still in the grace period
    async with running(2, partner_status_grace=0) as (_, (a, b)):
        url = f"http://127.0.0.1:{a.api_port}/partner_status"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json={"partner_status": {b.node_id: "failed"}}) as r,
        ):
            assert (await r.json()) == {"status": "failed"}
        with pytest.raises(PeerFailed):
            await a.await_message(b.node_id, timeout=5)
