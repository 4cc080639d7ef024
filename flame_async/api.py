"""The node's own REST API (PROTOCOL §5.2): ``/webhook``, ``/healthz``, ``/token_refresh``,
``/partner_status``.

Reached by the broker and the PO through the gateway (``/analysis/...``). Bad input gets a 4xx with
a ``{"detail": reason}`` body and is counted in :attr:`NodeApi.rejected`; it never reaches the
runtime's background tasks.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus
from pydantic import ValidationError

from ._jwt import TokenStore, decode_claims
from .errors import StartupError
from .models import WireMeta
from .status import StatusService

__all__ = ["NodeApi"]

log = logging.getLogger("flame_async.api")

WebhookSink = Callable[[WireMeta, dict[str, Any]], Awaitable[str | None]]
PartnerSink = Callable[[dict[str, str | None]], None]


class _Rejected(Exception):
    def __init__(self, status: int, key: str, reason: str) -> None:
        self.status, self.key, self.reason = status, key, reason
        super().__init__(reason)


def _json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


class NodeApi:
    """The aiohttp application of one node and its server lifecycle.

    Args:
        tokens: The token store ``/token_refresh`` updates.
        status: Run status for ``/healthz`` and partner-status sync.
        on_webhook: Where validated webhook messages go; returns a rejection reason or None.
        on_partner_status: Told about every partner status push after it was applied.
        max_body: Largest request body accepted, in bytes.
        waiting_for: Reports current waits; ``/healthz`` adds them as ``waiting_for`` (an
            extra field the platform's PO ignores; the local runner shows it).
    """

    def __init__(
        self,
        *,
        tokens: TokenStore,
        status: StatusService,
        on_webhook: WebhookSink,
        on_partner_status: PartnerSink,
        max_body: int,
        waiting_for: Callable[[], list[str]] | None = None,
    ) -> None:
        self._tokens = tokens
        self._status = status
        self._on_webhook = on_webhook
        self._on_partner_status = on_partner_status
        self._max_body = max_body
        self._waiting_for = waiting_for
        self.rejected: collections.Counter[str] = collections.Counter()
        self.port: int | None = None
        self.app = web.Application(client_max_size=max_body, middlewares=[self._errors_middleware])
        self.app.router.add_post("/webhook", self._webhook)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_post("/token_refresh", self._token_refresh)
        self.app.router.add_post("/partner_status", self._partner_status)

    async def serve(
        self, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` until cancelled; reports the bound port when listening.

        Raises:
            StartupError: The address cannot be bound (for example the port is in use).

        Cancellation:
            Closes the listening socket and open connections (shielded, bounded).
        """
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise StartupError(
                    f"the node API cannot listen on {host}:{port}: {exc} "
                    "(set FLAME_API_PORT to a free port)"
                ) from exc
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else port
            task_status.started(self.port)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await runner.cleanup()

    # ------------------------------------------------------------ plumbing

    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Rejected as exc:
            self.rejected[exc.key] += 1
            log.debug("rejected %s %s: %s", request.method, request.path, exc.reason)
            return _json_response({"detail": exc.reason}, exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            key = {404: "unknown path", 405: "method not allowed", 413: "body too large"}.get(
                exc.status, f"http {exc.status}"
            )
            self.rejected[key] += 1
            reason = {
                404: f"no such endpoint: {request.path}",
                405: f"{request.method} is not allowed on {request.path}",
                413: f"request body is larger than {self._max_body} bytes",
            }.get(exc.status, exc.reason)
            return _json_response({"detail": reason}, exc.status)

    async def _json_object(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self._max_body:
            raise _Rejected(
                413, "body too large", f"request body is larger than {self._max_body} bytes"
            )
        ctype = request.content_type
        if request.headers.get("Content-Type") and ctype not in ("application/json", "text/json"):
            raise _Rejected(
                415, "not json", f"Content-Type must be application/json, got {ctype!r}"
            )
        raw = await request.read()
        if not raw:
            raise _Rejected(
                400, "empty body", "the request body is empty; a JSON object is required"
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Rejected(
                400, "invalid json", f"the request body is not valid JSON: {exc}"
            ) from exc
        if not isinstance(body, dict):
            raise _Rejected(
                400,
                "not an object",
                f"the request body must be a JSON object, got {type(body).__name__}",
            )
        return body

    # ------------------------------------------------------------ handlers

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        meta = body.pop("meta", None)
        if meta is None:
            raise _Rejected(400, "missing meta", "the message has no 'meta' object")
        if not isinstance(meta, dict):
            raise _Rejected(
                400, "meta not an object", f"'meta' must be an object, got {type(meta).__name__}"
            )
        try:
            parsed = WireMeta.model_validate(meta)
        except ValidationError as exc:
            problems = "; ".join(
                f"meta.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise _Rejected(422, "invalid meta", f"invalid message meta: {problems}") from exc
        rejection = await self._on_webhook(parsed, body)
        if rejection is not None:
            status = 503 if "starting" in rejection else 422
            raise _Rejected(status, "rejected message", rejection)
        return _json_response(None)

    async def _healthz(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "status": self._status.status.value,
            "token_remaining_time": self._tokens.remaining_seconds(),
        }
        if self._waiting_for is not None:
            body["waiting_for"] = self._waiting_for()
        return _json_response(body)

    async def _token_refresh(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        token = body.get("token")
        if token is None:
            raise _Rejected(400, "missing token", "the body has no 'token' field")
        if not isinstance(token, str) or not token:
            raise _Rejected(400, "invalid token", "'token' must be a non-empty string")
        try:
            decode_claims(token)
        except ValueError as exc:
            raise _Rejected(400, "invalid token", f"'token' is not a JWT: {exc}") from exc
        self._tokens.replace(token)
        log.info("token refreshed; %d s remaining", self._tokens.remaining_seconds())
        return _json_response({"message": "Token refreshed successfully"})

    async def _partner_status(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        statuses = body.get("partner_status")
        if statuses is None:
            raise _Rejected(
                400, "missing partner_status", "the body has no 'partner_status' object"
            )
        if not isinstance(statuses, dict):
            raise _Rejected(422, "invalid partner_status", "'partner_status' must be an object")
        bad = [k for k, v in statuses.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise _Rejected(
                422,
                "invalid partner_status",
                f"partner statuses must be strings or null; not so for: {', '.join(sorted(bad))}",
            )
        own = self._status.partner_status(statuses, time.monotonic())
        self._on_partner_status(statuses)
        return _json_response({"status": own.value})
