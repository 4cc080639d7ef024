"""The node's own REST API: ``/webhook``, ``/healthz``, ``/token_refresh``,
``/partner_status``.

Reached by the broker and the PO through the gateway (``/analysis/...``). :meth:`NodeApi.handle`
answers the project's own :class:`~flame_async._transport.Request` type, so any transport can
serve it: the aiohttp transport over HTTP, the in-memory transport by calling it directly.

Rules:

* Bad input of any kind (wrong method, content type or size, invalid UTF-8 or JSON, wrong
  types, out-of-range values) gets a 4xx with a ``{"detail": reason}`` body and is counted in
  :attr:`NodeApi.rejected`; it never reaches the runtime's background tasks and never gives a
  5xx. Webhook bodies are judged by the protocol core, which answers a typed rejection with its
  status (a 503 there means "later": the node is starting, ending, or its backlog is full).
* ``/token_refresh`` takes only a signed JWT for this node's analysis whose ``exp`` lies in the
  future, at most :data:`~flame_async._jwt.MAX_TOKEN_LIFETIME` ahead (400: not a JWT; 422: a JWT
  the node does not take). It then proves the token with one authenticated call through the
  node's gateway (``GET .../participants/self`` at the broker) before swapping it in: a token the
  broker refuses (401/403) gets 422, and when the broker cannot be asked (unreachable, slow, or
  any other answer) the node answers 503 and the PO tries again on its next round. Whatever the
  answer, a refused token is never used: the old one stays.
* ``/healthz`` always answers 200, whatever token is held (``token_remaining_time`` is clamped
  to ``0 .. MAX_TOKEN_LIFETIME``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
from pydantic import ValidationError

from ._jwt import MalformedToken, TokenRefused, check_token
from ._protocol import Rejection
from ._transport import BodyTooLarge, GatewayClient, Request, Response
from ._wire import (
    HealthAnswer,
    PartnerStatusAnswer,
    PartnerStatusRequest,
    TokenRefreshAnswer,
    TokenRefreshRequest,
)
from .errors import AuthenticationError, ServiceError, TransportError
from .status import StatusService

__all__ = ["NodeApi"]

log = logging.getLogger("flame_async.api")

WebhookSink = Callable[[bytes], Awaitable[Rejection | None]]
PartnerSink = Callable[[dict[str, str | None]], None]

_JSON_TYPES: Final = frozenset({"application/json", "text/json"})
_NULL: Final = b"null"
_SHOWN: Final = 80  # characters of a caller's value quoted in a reason
_TOKEN_CHECK_TIMEOUT: Final = 3.0


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status,
        orjson.dumps(payload) if payload is not None else _NULL,
        headers={"content-type": "application/json", **(headers or {})},
    )


def _shown(value: str) -> str:
    """``value`` quoted for a reason, cut to a readable length."""
    text = repr(value)  # escapes control characters and lone surrogates
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class NodeApi:
    """The node API of one node, as a request handler.

    Args:
        gateway: The node's service calls: ``/token_refresh`` swaps the token in its token store,
            after proving the new token with one call through it.
        analysis_id: The node's analysis; a refreshed token must be for it (``client_id``).
        status: Run status for ``/healthz`` and partner-status sync.
        on_webhook: Where webhook bodies go; answers a rejection or None (taken).
        on_partner_status: Told about every partner status push after it was applied.
        max_body: Largest request body accepted, in bytes.
        waiting_for: Reports current waits; ``/healthz`` adds them as ``waiting_for`` (an
            extra field the platform's PO ignores; the local runner shows it).
        webhook_ready: Whether ``on_webhook`` takes a body without waiting (see
            :meth:`takes_webhooks_at_once`); never, when not given.
        token_check_timeout: Longest time, in seconds, the proof of a refreshed token may take
            (the PO waits for the answer).
    """

    def __init__(
        self,
        *,
        gateway: GatewayClient,
        analysis_id: str,
        status: StatusService,
        on_webhook: WebhookSink,
        on_partner_status: PartnerSink,
        max_body: int,
        waiting_for: Callable[[], list[str]] | None = None,
        webhook_ready: Callable[[], bool] | None = None,
        token_check_timeout: float = _TOKEN_CHECK_TIMEOUT,
    ) -> None:
        self._gateway = gateway
        self._tokens = gateway.tokens
        self._analysis_id = analysis_id
        # the cheapest authenticated call there is: the one broker.discover() makes at start-up
        self._probe_path = f"/message-broker/analyses/{analysis_id}/participants/self"
        self._token_check_timeout = token_check_timeout
        self._refreshing = asyncio.Lock()  # one refresh at a time: the last to arrive wins
        self._status = status
        self._on_webhook = on_webhook
        self._on_partner_status = on_partner_status
        self._max_body = max_body
        self._waiting_for = waiting_for
        self._webhook_ready = webhook_ready
        self.rejected: collections.Counter[str] = collections.Counter()
        self._routes: dict[str, tuple[str, Callable[[Request], Awaitable[Response]]]] = {
            "/webhook": ("POST", self._webhook),
            "/healthz": ("GET", self._healthz),
            "/token_refresh": ("POST", self._token_refresh),
            "/partner_status": ("POST", self._partner_status),
        }

    async def __call__(self, request: Request) -> Response:
        """:meth:`handle`: the API object is itself the handler a transport serves."""
        return await self.handle(request)

    async def deliver_webhook(self, body: bytes) -> int:
        """Take one webhook body as ``POST /webhook`` with a JSON body would; the status it
        would answer (an in-process transport's delivery, without a request around it).

        A body over the size limit or refused by the broker is counted in :attr:`rejected`
        under the same key as over HTTP.

        Cancellation:
            As the webhook route's.
        """
        if len(body) > self._max_body:
            self.rejected["body too large"] += 1
            return 413
        if not body:
            self.rejected["empty body"] += 1
            return 400
        rejection = await self._on_webhook(body)
        if rejection is not None:
            self.rejected[rejection.key] += 1
            return rejection.status
        return 200

    def takes_webhooks_at_once(self) -> bool:
        """True when a webhook body is taken without waiting (the node's broker runs)."""
        return self._webhook_ready is not None and self._webhook_ready()

    async def handle(self, request: Request) -> Response:
        """Answer one request (any transport's).

        Never raises for bad input: that gets a 4xx ``{"detail": reason}`` and is counted (as
        does a token refresh the node could not check: 503).

        Cancellation:
            A refresh cancelled while its token is being checked leaves the old token in place.
        """
        route = self._routes.get(request.path)
        if route is None:
            return self._reject(
                request, 404, "unknown path", f"no such endpoint: {_shown(request.path)}"
            )
        method, answer = route
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            allowed = "GET, HEAD" if method == "GET" else method
            return self._reject(
                request,
                405,
                "method not allowed",
                f"{_shown(request.method)} is not allowed on {request.path}; use {allowed}",
                headers={"allow": allowed},
            )
        try:
            return await answer(request)
        except _Rejected as exc:
            return self._reject(request, exc.status, exc.key, exc.reason)

    def _reject(
        self,
        request: Request,
        status: int,
        key: str,
        reason: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        self.rejected[key] += 1
        # a reason quoting the caller's text may hold lone surrogates, which JSON cannot carry
        detail = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        log.debug("rejected %s %s: %s", _shown(request.method), _shown(request.path), detail)
        return _json({"detail": detail}, status, headers)

    def _declared_length(self, request: Request) -> int | None:
        """The body size the request declares, if any.

        Raises:
            _Rejected: ``Content-Length`` is not a number (400).
        """
        if isinstance(request.body, bytes):
            return len(request.body)
        raw = request.headers.get("content-length")
        if raw is None:
            return None
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit()):
            raise _Rejected(
                400, "bad content-length", f"Content-Length must be a number, got {_shown(raw)}"
            )
        return int(raw)

    async def _body(self, request: Request) -> bytes:
        """The JSON body's bytes, after the size and content-type checks.

        Raises:
            _Rejected: Too large (413), not JSON by its content type (415), or empty (400).
        """
        too_large = _Rejected(
            413, "body too large", f"request body is larger than {self._max_body} bytes"
        )
        size = self._declared_length(request)
        if size is not None and size > self._max_body:
            raise too_large
        if "content-type" in request.headers and request.content_type not in _JSON_TYPES:
            raise _Rejected(
                415,
                "not json",
                f"Content-Type must be application/json, got {_shown(request.content_type)}",
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
            token_remaining_time=self._tokens.remaining_seconds(),  # clamped: never fails
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
            check_token(token, analysis_id=self._analysis_id)
        except MalformedToken as exc:
            raise _Rejected(400, "invalid token", f"'token' is not a JWT: {exc.reason}") from exc
        except TokenRefused as exc:
            raise _Rejected(
                422, "token refused", f"{exc.reason}; the node keeps its current token"
            ) from exc
        async with self._refreshing:
            await self._prove(token)
            self._tokens.replace(token)
        log.info("token refreshed; %d s remaining", self._tokens.remaining_seconds())
        return _json(TokenRefreshAnswer().wire())

    async def _prove(self, token: str) -> None:
        """One authenticated call through the gateway with ``token`` (the node's broker checks
        the signature, the expiry and the analysis); a failure to reach it is retried per the
        gateway's policy, all within ``token_check_timeout``.

        Raises:
            _Rejected: The broker refused the token (422), or could not be asked in time or
                answered anything but 200 (503).
        """
        limit = self._token_check_timeout
        try:
            async with asyncio.timeout(limit):
                await self._gateway.request(
                    "GET",
                    self._probe_path,
                    service="broker",
                    headers={"authorization": f"Bearer {token}"},
                    timeout=limit,
                )
        except AuthenticationError as exc:
            raise _Rejected(
                422,
                "token refused",
                f"the node's broker refused the token (HTTP {exc.status}"
                + (f": {exc.detail}" if exc.detail else "")
                + "): it is not signed by the platform, or no longer valid; the node keeps its "
                "current token",
            ) from exc
        except TransportError as exc:  # unreachable, slow, or any other answer
            status = f"answered HTTP {exc.status}" if isinstance(exc, ServiceError) else str(exc)
            raise _Rejected(
                503,
                "token not checked",
                f"the token could not be checked with the node's broker ({status}); the node "
                "keeps its current token, send the new one again later",
            ) from exc
        except TimeoutError as exc:  # retries included, the check took too long
            raise _Rejected(
                503,
                "token not checked",
                f"the token could not be checked with the node's broker (no answer within "
                f"{limit:g} s); the node keeps its current token, send the new one again later",
            ) from exc

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
            bad = sorted(k for k, v in statuses.items() if v is not None and not isinstance(v, str))
            shown = ", ".join(_shown(k) for k in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise _Rejected(
                422,
                "invalid partner_status",
                f"partner statuses must be strings or null; not so for {len(bad)}: {shown}",
            ) from None
        own = self._status.partner_status(parsed, time.monotonic())
        self._on_partner_status(dict(parsed))
        return _json(PartnerStatusAnswer(status=own.value).wire())


class _Rejected(Exception):
    def __init__(self, status: int, key: str, reason: str) -> None:
        self.status, self.key, self.reason = status, key, reason
        super().__init__(reason)
