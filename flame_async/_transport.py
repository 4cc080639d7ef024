"""HTTP transport: the one borrowed ``aiohttp.ClientSession``, auth, JSON, errors and retries.

This is the only module that catches aiohttp exceptions; everything above it sees
:class:`~flame_async.errors.FlameError` subclasses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import anyio
import orjson
from yarl import URL

from ._jwt import TokenStore
from .config import RetryPolicy
from .errors import (
    AuthenticationError,
    NotFoundError,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    TransportError,
)

__all__ = ["JSON_HEADERS", "Transport", "is_retryable", "retry_call"]

log = logging.getLogger("flame_async.transport")

T = TypeVar("T")

JSON_HEADERS = {"Accept": "application/json"}
RETRYABLE_STATUS = frozenset({502, 503, 504})


def is_retryable(exc: BaseException) -> bool:
    """Connection failures, timeouts and 502/503/504 are worth another try; 4xx never."""
    if isinstance(exc, ServiceUnavailable | RequestTimeout):
        return True
    return isinstance(exc, ServiceError) and exc.status in RETRYABLE_STATUS


async def retry_call(
    policy: RetryPolicy,
    call: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    what: str = "request",
) -> T:
    """Run ``call`` until it succeeds, retrying retryable failures per ``policy``.

    Raises:
        TransportError: The last failure, once attempts or the deadline are used up, or at once
            when it is not retryable.

    Cancellation:
        Cancelling stops at once, also during a backoff sleep.
    """
    started = time.monotonic()
    delays = policy.delays()
    while True:
        try:
            return await call()
        except TransportError as exc:
            if not retryable(exc):
                raise
            delay = next(delays, None)
            if delay is None or time.monotonic() - started + delay > policy.deadline:
                raise
            log.debug("%s failed (%s); retrying in %.3f s", what, exc, delay)
            await anyio.sleep(delay)


def _detail(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace").strip()
    if isinstance(parsed, dict) and "detail" in parsed:
        detail = parsed["detail"]
        return detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    return body[:500].decode("utf-8", "replace").strip()


class Transport:
    """Requests to the node gateway on a session it borrows (never closes).

    Args:
        session: The SDK's session.
        base_url: The gateway base URL (``http://nginx-{DEPLOYMENT_NAME}`` on the platform).
        tokens: Where the bearer token is read from on every request.
        retry: The default retry policy.
        timeout: Total seconds allowed for one request (per attempt).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: URL,
        tokens: TokenStore,
        *,
        retry: RetryPolicy,
        timeout: float,
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.tokens = tokens
        self.retry_policy = retry
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._base = str(base_url).rstrip("/")
        self._urls: dict[str, URL] = {}

    def url(self, path: str) -> URL:
        """The absolute URL of a gateway path (``/message-broker/...``), query string kept as is."""
        url = self._urls.get(path)
        if url is None:
            url = URL(self._base + path, encoded=True)
            if len(self._urls) < 256:  # the fixed service paths; not every object id
                self._urls[path] = url
        return url

    def _headers(
        self, headers: Mapping[str, str] | None, auth: bool, *, json: bool = False
    ) -> dict[str, str]:
        merged = dict(JSON_HEADERS)
        if json:
            merged["Content-Type"] = "application/json"
        if auth:
            merged["Authorization"] = self.tokens.authorization()
        if headers:
            merged.update(headers)
        return merged

    async def request(
        self,
        method: str,
        path: str,
        *,
        service: str,
        json: Any = None,
        data: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Collection[int] = (200,),
        auth: bool = True,
        retry: RetryPolicy | bool | None = True,
        timeout: float | None = None,
    ) -> bytes:
        """Send one request and return the response body.

        Args:
            method: HTTP method.
            path: Gateway path starting with ``/``.
            service: Service name used in errors.
            json: A value to send as JSON (serialised with orjson).
            data: A raw body (bytes, form data or async iterable) instead of ``json``.
            params: Query parameters.
            headers: Extra headers.
            expect: Statuses that count as success.
            auth: Send the bearer token.
            retry: ``True`` for the default policy, a policy, or ``False``/``None`` for one try.
            timeout: Per-attempt timeout in seconds instead of the default.

        Raises:
            ServiceUnavailable: The gateway could not be reached.
            RequestTimeout: No answer in time.
            NotFoundError: 404.
            AuthenticationError: 401 or 403.
            ServiceError: Any other unexpected status.

        Cancellation:
            Cancelling abandons the request; the connection is released.
        """
        body = orjson.dumps(json) if json is not None else data
        url = self.url(path)
        client_timeout = aiohttp.ClientTimeout(total=timeout) if timeout else self._timeout
        merged = self._headers(headers, auth, json=json is not None)

        async def once() -> bytes:
            # the hot path of every message: one session call, no extra context managers
            try:
                async with self.session.request(
                    method, url, data=body, params=params, headers=merged, timeout=client_timeout
                ) as response:
                    status = response.status
                    payload = await response.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._translate(exc, service, method, url) from exc
            if status not in expect:
                raise self._status_error(status, payload, service, method, url)
            return payload

        policy = self.retry_policy if retry is True else retry or None
        if policy is None:
            return await once()
        return await retry_call(policy, once, what=f"{method} {url}")

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like :meth:`request`, returning the decoded JSON body.

        Raises:
            ServiceError: The body is not JSON (besides everything :meth:`request` raises).
        """
        body = await self.request(method, path, **kwargs)
        try:
            return orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            service = kwargs.get("service", "gateway")
            raise ServiceError(
                service=service,
                method=method,
                url=str(self.url(path)),
                status=200,
                detail=f"response is not JSON: {body[:200]!r}",
            ) from exc

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        service: str,
        data: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Collection[int] = (200,),
        timeout: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a request and yield the response for streaming its body (no retries).

        Raises:
            TransportError: As :meth:`request`, when opening fails or the status is unexpected.
        """
        url = self.url(path)
        client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout or self._timeout.total
        )
        async with self._open(
            method,
            url,
            service=service,
            data=data,
            params=params,
            headers=self._headers(headers, True),
            expect=expect,
            timeout=client_timeout,
        ) as response:
            yield response

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        url: URL,
        *,
        service: str,
        data: Any,
        params: Mapping[str, str] | None,
        headers: dict[str, str],
        expect: Collection[int],
        timeout: aiohttp.ClientTimeout,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            response = await self.session.request(
                method, url, data=data, params=params, headers=headers, timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._translate(exc, service, method, url) from exc
        try:
            if response.status not in expect:
                try:
                    text = await response.read()
                except (TimeoutError, aiohttp.ClientError):
                    text = b""
                raise self._status_error(response.status, text, service, method, url)
            yield response
        finally:
            response.release()

    @staticmethod
    def _status_error(
        status: int, body: bytes, service: str, method: str, url: URL
    ) -> ServiceError:
        kwargs: dict[str, Any] = {
            "service": service,
            "method": method,
            "url": str(url),
            "status": status,
            "detail": _detail(body),
        }
        if status == 404:
            return NotFoundError(**kwargs)
        if status in (401, 403):
            return AuthenticationError(**kwargs)
        return ServiceError(**kwargs)

    @staticmethod
    def _translate(exc: BaseException, service: str, method: str, url: URL) -> TransportError:
        if isinstance(exc, asyncio.TimeoutError):
            return RequestTimeout(
                f"{service} did not answer {method} {url} in time",
                service=service,
                method=method,
                url=str(url),
            )
        if isinstance(exc, aiohttp.ClientResponseError):
            return ServiceError(
                service=service,
                method=method,
                url=str(url),
                status=exc.status,
                detail=exc.message,
            )
        return ServiceUnavailable(
            f"cannot reach {service} at {url}: {exc}", service=service, method=method, url=str(url)
        )
