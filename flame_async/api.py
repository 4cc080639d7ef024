"""The node's own REST API: ``/webhook``, ``/healthz``, ``/token_refresh``,
``/partner_status``.

Reached by the broker and the PO through the gateway (``/analysis/...``). :meth:`NodeApi.handle`
answers the project's own :class:`~flame_async._transport.Request` type, so any transport can
serve it: the aiohttp transport over HTTP, the in-memory transport by calling it directly. Bad
input gets a 4xx with a ``{"detail": reason}`` body and is counted in :attr:`NodeApi.rejected`;
it never reaches the runtime's background tasks. Webhook bodies are judged by the protocol core,
which answers a typed rejection with its status.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from pydantic import ValidationError

from ._jwt import TokenStore, decode_claims
from ._protocol import Rejection
from ._transport import BodyTooLarge, Request, Response
from ._wire import (
    HealthAnswer,
    PartnerStatusAnswer,
    PartnerStatusRequest,
    TokenRefreshAnswer,
    TokenRefreshRequest,
)
from .status import StatusService

__all__ = ["NodeApi"]

log = logging.getLogger("flame_async.api")

WebhookSink = Callable[[bytes], Awaitable[Rejection | None]]
PartnerSink = Callable[[dict[str, str | None]], None]

_JSON_TYPES: Final = frozenset({"application/json", "text/json"})
_NULL: Final = b"null"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        status,
        orjson.dumps(payload) if payload is not None else _NULL,
        headers={"content-type": "application/json"},
    )


class NodeApi:
    """The node API of one node, as a request handler.

    Args:
        tokens: The token store ``/token_refresh`` updates.
        status: Run status for ``/healthz`` and partner-status sync.
        on_webhook: Where webhook bodies go; answers a rejection or None (taken).
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
        self._routes: dict[str, tuple[str, Callable[[Request], Awaitable[Response]]]] = {
            "/webhook": ("POST", self._webhook),
            "/healthz": ("GET", self._healthz),
            "/token_refresh": ("POST", self._token_refresh),
            "/partner_status": ("POST", self._partner_status),
        }

    async def handle(self, request: Request) -> Response:
        """Answer one request (any transport's).

        Never raises for bad input: that gets a 4xx ``{"detail": reason}`` and is counted.
        """
        route = self._routes.get(request.path)
        if route is None:
            return self._reject(request, 404, "unknown path", f"no such endpoint: {request.path}")
        method, answer = route
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            return self._reject(
                request,
                405,
                "method not allowed",
                f"{request.method} is not allowed on {request.path}",
            )
        try:
            return await answer(request)
        except _Rejected as exc:
            return self._reject(request, exc.status, exc.key, exc.reason)

    def _reject(self, request: Request, status: int, key: str, reason: str) -> Response:
        self.rejected[key] += 1
        log.debug("rejected %s %s: %s", request.method, request.path, reason)
        return _json({"detail": reason}, status)

    async def _body(self, request: Request) -> bytes:
        """The JSON body's bytes, after the size and content-type checks.

        Raises:
            _Rejected: Too large (413), not JSON by its content type (415), or empty (400).
        """
        too_large = _Rejected(
            413, "body too large", f"request body is larger than {self._max_body} bytes"
        )
        size = request.content_length
        if size is not None and size > self._max_body:
            raise too_large
        if "content-type" in request.headers and request.content_type not in _JSON_TYPES:
            raise _Rejected(
                415,
                "not json",
                f"Content-Type must be application/json, got {request.content_type!r}",
            )
        try:
            raw = await request.read(self._max_body)
        except BodyTooLarge:
            raise too_large from None
        except TypeError:  # a multipart form
            raise _Rejected(
                415, "not json", "the body is a form; a JSON object is required"
            ) from None
        if not raw:
            raise _Rejected(
                400, "empty body", "the request body is empty; a JSON object is required"
            )
        return raw

    async def _json_object(self, request: Request) -> dict[str, Any]:
        raw = await self._body(request)
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

    # -- endpoints -------------------------------------------------------------------------

    async def _webhook(self, request: Request) -> Response:
        rejection = await self._on_webhook(await self._body(request))
        if rejection is not None:
            raise _Rejected(rejection.status, rejection.key, rejection.reason)
        return _json(None)

    async def _healthz(self, request: Request) -> Response:
        answer = HealthAnswer(
            status=self._status.status.value,
            token_remaining_time=self._tokens.remaining_seconds(),
            waiting_for=self._waiting_for() if self._waiting_for is not None else None,
        )
        return _json(answer.wire())

    async def _token_refresh(self, request: Request) -> Response:
        body = await self._json_object(request)
        if "token" not in body:
            raise _Rejected(400, "missing token", "the body has no 'token' field")
        try:
            token = TokenRefreshRequest.model_validate(body).token
        except ValidationError:
            raise _Rejected(400, "invalid token", "'token' must be a non-empty string") from None
        if not token:
            raise _Rejected(400, "invalid token", "'token' must be a non-empty string")
        try:
            decode_claims(token)
        except ValueError as exc:
            raise _Rejected(400, "invalid token", f"'token' is not a JWT: {exc}") from exc
        self._tokens.replace(token)
        log.info("token refreshed; %d s remaining", self._tokens.remaining_seconds())
        return _json(TokenRefreshAnswer().wire())

    async def _partner_status(self, request: Request) -> Response:
        body = await self._json_object(request)
        statuses = body.get("partner_status")
        if statuses is None:
            raise _Rejected(
                400, "missing partner_status", "the body has no 'partner_status' object"
            )
        if not isinstance(statuses, dict):
            raise _Rejected(422, "invalid partner_status", "'partner_status' must be an object")
        try:
            parsed = PartnerStatusRequest.model_validate(body).partner_status
        except ValidationError:
            bad = [k for k, v in statuses.items() if v is not None and not isinstance(v, str)]
            raise _Rejected(
                422,
                "invalid partner_status",
                f"partner statuses must be strings or null; not so for: {', '.join(sorted(bad))}",
            ) from None
        own = self._status.partner_status(parsed, time.monotonic())
        self._on_partner_status(dict(parsed))
        return _json(PartnerStatusAnswer(status=own.value).wire())


class _Rejected(Exception):
    def __init__(self, status: int, key: str, reason: str) -> None:
        self.status, self.key, self.reason = status, key, reason
        super().__init__(reason)
