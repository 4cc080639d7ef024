"""One HTTP exchange with the Hub: URL, token, retries, re-authentication, error mapping.

Rules:

- Every exchange goes through :func:`flame_async._transport.aiohttp_send`, which translates
  aiohttp's exceptions (also while a body is read) into FlameErrors; nothing here catches an
  aiohttp exception.
- Error answers become typed errors (:func:`hub_error`): 400/422 ``HubRequestInvalid``, 401
  ``AuthenticationError``, 403 ``PermissionDenied``, 404 ``NotFoundError``, 409
  ``HubConflict``, other statuses ``ServiceError``; each carries the Hub's ``code``,
  ``message`` and ``issues``, or the first 200 characters of a body that is not JSON.
- Retries (:func:`flame_async._transport.retry_call`): reads (GET, HEAD) on connection
  failures, timeouts, 429 (honouring ``Retry-After``), 502, 503 and 504. Other methods only on
  429 (the Hub did not take the request) unless the caller opts in with ``retry_unsafe``.
  (aiohttp itself resends an idempotent request, GET or DELETE, once when a pooled keep-alive
  connection turns out to be closed before any answer; that happens below this policy.)
- Re-authentication: an answer the token manager judges a token problem (401; 400/500 with a
  token never seen working or about to expire) is retried once with a new token, if the body
  can be sent again; otherwise it raises ``AuthenticationError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, TypeVar

import aiohttp
import orjson
from yarl import URL

from .._transport import Response, aiohttp_send, retry_call
from ..config import RetryPolicy
from ..errors import (
    AuthenticationError,
    HubConflict,
    HubRequestInvalid,
    HubResponseInvalid,
    InvalidArgument,
    NotFoundError,
    PermissionDenied,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    TransportError,
)
from ._auth import Credentials, TokenManager
from ._query import WireCase, encode_query

__all__ = [
    "DEFAULT_RETRY",
    "Payload",
    "Service",
    "Session",
    "hub_error",
    "hub_retryable",
]

log = logging.getLogger("flame_async.hub")

T = TypeVar("T")

Service: TypeAlias = Literal["auth", "core", "storage"]
"""The Hub's three services."""

DEFAULT_RETRY: Final = RetryPolicy(
    attempts=4, initial=0.2, multiplier=2.0, maximum=5.0, jitter=1.0, deadline=60.0
)
"""Four tries, backoff from 0.2 s doubling, full jitter, within 60 s."""

_RETRY_STATUS: Final = frozenset({429, 502, 503, 504})
_ERROR_BODY: Final = 64 * 1024
_SHOWN: Final = 200


def hub_retryable(exc: BaseException) -> bool:
    """Connection failures, timeouts, 429, 502, 503 and 504 are worth another try."""
    if isinstance(exc, ServiceUnavailable | RequestTimeout):
        return True
    return isinstance(exc, ServiceError) and exc.status in _RETRY_STATUS


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait: ``Retry-After``, or ``RateLimit-Reset`` when that is sooner (authup's
    rate limiter answers ``Retry-After`` with its whole 60-s window, and the reset with the
    seconds until the budget actually refills)."""
    waits = [
        w
        for w in (
            _seconds(headers.get("retry-after") or headers.get("Retry-After")),
            _seconds(headers.get("ratelimit-reset") or headers.get("RateLimit-Reset")),
        )
        if w is not None
    ]
    return min(waits) if waits else None


def _seconds(raw: str | None) -> float | None:
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def hub_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    service: str,
    method: str,
    url: str,
) -> ServiceError:
    """The typed error for an error answer of the Hub.

    JSON bodies give ``code``, ``message`` and ``issues``; other bodies are shown by their
    first 200 characters.
    """
    code, detail, issues = "", "", ()
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
        detail = body[:_SHOWN].decode("utf-8", "replace").strip()
    if isinstance(parsed, dict):
        raw_code = parsed.get("code")
        code = str(raw_code) if raw_code not in (None, "undefined", "null") else ""
        message = parsed.get("message", parsed.get("detail", ""))
        detail = message if isinstance(message, str) else orjson.dumps(message).decode()[:_SHOWN]
        raw_issues = parsed.get("issues")
        issues = tuple(raw_issues) if isinstance(raw_issues, list) else ()
    elif parsed is not None:
        detail = body[:_SHOWN].decode("utf-8", "replace").strip()
    kwargs: dict[str, Any] = {
        "service": service,
        "method": method,
        "url": url,
        "status": status,
        "detail": detail,
        "code": code,
        "issues": issues,
        "retry_after": _retry_after(headers),
    }
    if status in (400, 422):
        return HubRequestInvalid(**kwargs)
    if status == 401:
        return AuthenticationError(**kwargs)
    if status == 403:
        return PermissionDenied(**kwargs)
    if status == 404:
        return NotFoundError(**kwargs)
    if status == 409:
        return HubConflict(**kwargs)
    return ServiceError(**kwargs)


class NotReplayable(Exception):
    """Raised by a :class:`Payload` asked for its body a second time when it cannot give it."""


@dataclasses.dataclass(slots=True)
class Payload:
    """A request body that knows whether it can be sent again.

    Attributes:
        make: Builds the body in aiohttp's terms, fresh for every try.
        replayable: Whether ``make`` may be called more than once.
        content_type: The Content-Type header, when ``make`` does not set one itself.
        close: Releases what the last ``make`` opened (files), after every try.
    """

    make: Callable[[], Any]
    replayable: bool = True
    content_type: str | None = None
    close: Callable[[], None] | None = None
    _made: bool = False

    @classmethod
    def json(cls, value: Any) -> Payload:
        """A JSON body."""
        data = orjson.dumps(value)
        return cls(lambda: data, content_type="application/json")

    def build(self) -> Any:
        """The body for one try.

        Raises:
            NotReplayable: It was built before and cannot be built again.
        """
        if self._made and not self.replayable:
            raise NotReplayable
        self._made = True
        return self.make()


class Session:
    """The Hub client's HTTP layer; owned by :class:`~flame_async.hub.HubClient`.

    Args:
        session: The aiohttp session (the owner opens and closes it).
        urls: Base URL of each service.
        credentials: Who to log in as.
        timeout: Seconds per request (per read of a stream).
        max_concurrency: Requests in flight at once.
        retry: The retry policy.
        wire_case: The Hub's casing, or ``auto`` to ask it once.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        urls: Mapping[Service, str],
        credentials: Credentials,
        timeout: float,
        max_concurrency: int,
        retry: RetryPolicy,
        wire_case: WireCase | Literal["auto"],
    ) -> None:
        self._session = session
        self._urls = {k: v.rstrip("/") for k, v in urls.items()}
        self._timeout = timeout
        self._retry = retry
        self._sem = asyncio.Semaphore(max_concurrency)
        self._case: WireCase | None = None if wire_case == "auto" else wire_case
        self._case_lock = asyncio.Lock()
        token_url = self._urls["auth"] + "/token"
        self.tokens = TokenManager(credentials, self._post_token, auth_url=token_url)

    def url(self, service: Service, path: str) -> str:
        """The full URL of ``path`` on ``service``."""
        return self._urls[service] + path

    # -- wire casing ---------------------------------------------------------------------------

    async def wire_case(self) -> WireCase:
        """The Hub's key casing; with ``auto``, asked once by reading one record.

        Raises:
            TransportError: The probe request failed.
        """
        if self._case is not None:
            return self._case
        async with self._case_lock:
            if self._case is None:
                self._case = await self._probe_case()
                log.debug("the Hub speaks %s case", self._case)
            return self._case

    async def _probe_case(self) -> WireCase:
        probes: tuple[tuple[Service, str], ...] = (
            ("core", "/nodes"),
            ("core", "/projects"),
            ("core", "/master-images"),
            ("core", "/registries"),
        )  # not authup: it speaks snake_case on every Hub line
        for service, path in probes:
            answer = await self.json("GET", service, path, params=[("page[limit]", "1")])
            items = answer.get("data") if isinstance(answer, dict) else None
            if isinstance(items, list) and items and isinstance(items[0], dict):
                keys = items[0].keys()
                if any(k != k.lower() for k in keys):
                    return "camel"
                if any("_" in k for k in keys):
                    return "snake"
        log.warning("could not tell the Hub's wire casing (no records); assuming snake_case")
        return "snake"

    # -- exchanges -----------------------------------------------------------------------------

    async def json(
        self,
        method: str,
        service: Service,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Payload | None = None,
        retry_unsafe: bool = False,
        gone_is_done: bool = False,
        long: bool = False,
    ) -> Any:
        """One exchange whose answer is JSON (or empty: None).

        Args:
            method: The HTTP method.
            service: Which service.
            path: The path below the service's base URL.
            params: Query parameters.
            body: The body.
            retry_unsafe: Retry a non-read method after it was sent.
            gone_is_done: A 404 after a retried try counts as success (DELETE).
            long: An upload: ``timeout`` limits each read and write, not the whole exchange.

        Raises:
            TransportError: Any failure, typed (see the module docstring).
            HubResponseInvalid: A 2xx answer that is not JSON.

        Cancellation:
            The request is abandoned and its connection closed; a retry sleep stops at once.
        """

        async def consume(response: Response, url: str) -> Any:
            try:
                raw = await response.read()
            finally:
                await response.aclose()
            if not raw:
                return None
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise HubResponseInvalid(
                    "JSON", url, [{"loc": (), "msg": raw[:_SHOWN].decode("utf-8", "replace")}]
                ) from exc

        timeout = self._stream_timeout() if long else aiohttp.ClientTimeout(total=self._timeout)
        async with self._sem:
            return await self._call(
                method,
                service,
                path,
                params=params,
                body=body,
                retry_unsafe=retry_unsafe,
                gone_is_done=gone_is_done,
                timeout=timeout,
                consume=consume,
            )

    async def stream(
        self,
        method: str,
        service: Service,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Payload | None = None,
        retry_unsafe: bool = False,
    ) -> Response:
        """Open an exchange whose body the caller reads (and then closes with
        ``await response.aclose()``); no overall time limit, ``timeout`` per read instead.

        Raises:
            TransportError: The exchange failed before the body (retried like :meth:`json`).
        """

        async def consume(response: Response, url: str) -> Response:
            return response

        return await self._call(
            method,
            service,
            path,
            params=params,
            body=body,
            retry_unsafe=retry_unsafe,
            gone_is_done=False,
            timeout=self._stream_timeout(),
            consume=consume,
        )

    def _stream_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._timeout
        )

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy."""
        return self._retry

    @property
    def semaphore(self) -> asyncio.Semaphore:
        """Bounds the requests in flight (streams hold a slot while open)."""
        return self._sem

    async def _call(
        self,
        method: str,
        service: Service,
        path: str,
        *,
        params: Sequence[tuple[str, str]],
        body: Payload | None,
        retry_unsafe: bool,
        gone_is_done: bool,
        timeout: aiohttp.ClientTimeout,
        consume: Callable[[Response, str], Awaitable[T]],
    ) -> T:
        base = self.url(service, path)
        query = encode_query(params)
        url = f"{base}?{query}" if query else base
        wire_url = URL(url, encoded=True)
        read = method in ("GET", "HEAD")
        tries = 0

        def retryable(exc: BaseException) -> bool:
            if not hub_retryable(exc) or (body is not None and not body.replayable):
                return False
            if read or retry_unsafe:
                return True
            return isinstance(exc, ServiceError) and exc.status == 429

        async def attempt() -> T:
            nonlocal tries
            tries += 1
            try:
                response = await self._authorized(
                    method, service, wire_url, url, body=body, timeout=timeout
                )
            except NotFoundError:
                if gone_is_done and tries > 1:
                    log.debug("%s %s: gone after a retried try, counted as done", method, url)
                    return await consume(Response(204), url)
                raise
            return await consume(response, url)

        return await retry_call(self._retry, attempt, retryable=retryable, what=f"{method} {url}")

    async def _authorized(
        self,
        method: str,
        service: Service,
        wire_url: URL,
        url: str,
        *,
        body: Payload | None,
        timeout: aiohttp.ClientTimeout,
    ) -> Response:
        token = await self.tokens.token()
        response = await self._send(method, service, wire_url, url, body, token, timeout)
        if response.status < 400:
            self.tokens.verified(token)
            return response
        error = await self._error(response, service, method, url)
        if not self.tokens.suspect(token, status=error.status, code=error.code):
            raise error
        log.debug("%s %s: %s looks like a token problem; new token, once", method, url, error)
        self.tokens.invalidate(token)
        if body is not None and not body.replayable:
            if error.status != 401:
                raise error  # as likely a real failure, and the body cannot be sent again
            raise AuthenticationError(
                service=f"hub {service}",
                method=method,
                url=url,
                status=error.status,
                detail=(
                    "the Hub refused the token and the body (a stream) cannot be sent again; "
                    f"the Hub said: {error.detail or error.code}"
                ),
                code=error.code,
            ) from error
        token = await self.tokens.token()
        response = await self._send(method, service, wire_url, url, body, token, timeout)
        if response.status < 400:
            self.tokens.verified(token)
            return response
        raise await self._error(response, service, method, url) from error

    async def _send(  # noqa: PLR0917 - private, two call sites
        self,
        method: str,
        service: Service,
        wire_url: URL,
        url: str,
        body: Payload | None,
        token: str | None,
        timeout: aiohttp.ClientTimeout,
    ) -> Response:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data: Any = None
        if body is not None:
            try:
                data = body.build()
            except NotReplayable:
                raise InvalidArgument(
                    f"{method} {url}: the body (a stream) was consumed and cannot be sent again"
                ) from None
            if body.content_type is not None:
                headers["Content-Type"] = body.content_type
        try:
            return await aiohttp_send(
                self._session,
                method,
                wire_url,
                data=data,
                headers=headers,
                timeout=timeout,
                service=f"hub {service}",
                shown_url=url,
            )
        finally:
            if body is not None and body.close is not None:
                body.close()

    async def _error(
        self, response: Response, service: Service, method: str, url: str
    ) -> ServiceError:
        try:
            raw = await response.read(None)
        except TransportError:
            raw = b""
        finally:
            await response.aclose()
        return hub_error(
            response.status,
            raw[:_ERROR_BODY],
            response.headers,
            service=f"hub {service}",
            method=method,
            url=url,
        )

    async def _post_token(self, grant: dict[str, str]) -> Any:
        """POST a grant to ``{auth}/token`` (no bearer token; retried only on 429 and, for
        non-refresh grants, on connection failures)."""
        url = self.url("auth", "/token")
        wire_url = URL(url, encoded=True)
        body = Payload.json(grant)
        replay = grant.get("grant_type") != "refresh_token"  # refresh tokens are single-use
        timeout = aiohttp.ClientTimeout(total=self._timeout)

        def retryable(exc: BaseException) -> bool:
            if not hub_retryable(exc):
                return False
            return replay or (isinstance(exc, ServiceError) and exc.status == 429)

        async def attempt() -> Any:
            response = await self._send("POST", "auth", wire_url, url, body, None, timeout)
            if response.status >= 400:
                raise await self._error(response, "auth", "POST", url)
            try:
                raw = await response.read()
            finally:
                await response.aclose()
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise HubResponseInvalid(
                    "TokenGrant", url, [{"loc": (), "msg": "the answer is not JSON"}]
                ) from exc

        started = time.monotonic()
        answer = await retry_call(self._retry, attempt, retryable=retryable, what="token request")
        log.debug("token request took %.3f s", time.monotonic() - started)
        return answer
