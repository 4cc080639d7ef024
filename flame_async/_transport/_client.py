"""Calls to the node's services through its gateway, on any transport.

:class:`GatewayClient` adds what every service call needs on top of a bare transport: the
bearer token (read on every request, so a refresh needs nothing else), JSON in and out, the
statuses that count as success, the error for any other status, and retries per policy.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from .._jwt import TokenStore
from ..config import RetryPolicy
from ..errors import RequestTimeout, ServiceError, ServiceUnavailable, TransportError
from ._base import Transport
from ._errors import retry_call, status_error
from ._http import Body, BodyTooLarge, Request, Response

__all__ = ["GatewayClient", "GatewayHealth", "parse_answer"]

M = TypeVar("M", bound=BaseModel)

_ACCEPT_JSON = {"accept": "application/json"}


class GatewayHealth:
    """Whether the node's gateway answers, as every call through it sees it.

    Any answer (whatever its status) counts as reachable; a connection that cannot be made or
    breaks, or no answer in time, as not. A watcher (the SDK's) declares the gateway *lost*
    once it has not answered for its grace period; the first answer after that declares it
    back. Listeners hear both.
    """

    __slots__ = ("_listeners", "failing_since", "last_answer", "last_error", "lost")

    def __init__(self) -> None:
        self.last_answer = time.monotonic()
        """When the gateway last answered (monotonic seconds)."""
        self.failing_since: float | None = None
        """When calls started failing to reach it, if they fail now."""
        self.last_error: TransportError | None = None
        """The last failure to reach it (no connection, or no answer in time)."""
        self.lost: ServiceUnavailable | None = None
        """Set while the gateway is declared lost (see :meth:`lose`)."""
        self._listeners: list[Callable[[ServiceUnavailable | None], None]] = []

    def listen(self, listener: Callable[[ServiceUnavailable | None], None]) -> None:
        """Call ``listener(error)`` when the gateway is declared lost, ``listener(None)`` when
        it answers again."""
        self._listeners.append(listener)

    def answered(self) -> None:
        """A call got an answer."""
        self.last_answer = time.monotonic()
        self.failing_since = None
        if self.lost is not None:
            self.lost = None
            for listener in self._listeners:
                listener(None)

    def failed(self, error: TransportError) -> None:
        """A call could not reach the gateway, or got no answer in time."""
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def lose(self, error: ServiceUnavailable) -> None:
        """Declare the gateway lost (once; until it answers again)."""
        if self.lost is None:
            self.lost = error
            for listener in self._listeners:
                listener(error)


class GatewayClient:
    """The node's service calls over a borrowed transport (never closed here).

    Args:
        transport: The transport, entered by its owner.
        tokens: Where the bearer token is read from on every request.
        retry: The default retry policy.
        timeout: Seconds allowed for one request (per attempt) unless a call says otherwise.
    """

    def __init__(
        self, transport: Transport, tokens: TokenStore, *, retry: RetryPolicy, timeout: float
    ) -> None:
        self.transport = transport
        self.tokens = tokens
        self.retry_policy = retry
        self.timeout = timeout
        self.health = GatewayHealth()
        """Whether the gateway answers (every call reports to it)."""

    def _headers(
        self, headers: Mapping[str, str] | None, auth: bool, *, json: bool
    ) -> dict[str, str]:
        merged = dict(_ACCEPT_JSON)
        if json:
            merged["content-type"] = "application/json"
        if auth:
            merged["authorization"] = self.tokens.authorization()
        if headers:
            merged.update((k.lower(), v) for k, v in headers.items())
        return merged

    async def _open(self, stack: AsyncExitStack, request: Request) -> Response:
        """Open ``request`` on the transport (closed with ``stack``), telling :attr:`health`
        whether the gateway answered."""
        try:
            response = await stack.enter_async_context(self.transport.open(request))
        except (ServiceUnavailable, RequestTimeout) as exc:
            self.health.failed(exc)
            raise
        self.health.answered()
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        service: str,
        json: Any = None,
        body: Body = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Collection[int] = (200,),
        auth: bool = True,
        retry: RetryPolicy | bool | None = True,
        timeout: float | None = None,
    ) -> bytes:
        """Send one request and return the answer's body.

        Args:
            method: HTTP method.
            path: Gateway path starting with ``/``; a query string after ``?`` is sent verbatim.
            service: Service name used in errors.
            json: A value to send as JSON (serialised with orjson).
            body: A raw body instead of ``json``.
            params: Query parameters.
            headers: Extra headers.
            expect: Statuses that count as success.
            auth: Send the bearer token.
            retry: ``True`` for the default policy, a policy, or ``False``/``None`` for one try.
            timeout: Per-attempt timeout in seconds instead of the default.

        Raises:
            ServiceUnavailable: The gateway could not be reached (also: the answer was cut off).
            RequestTimeout: No answer in time.
            NotFoundError: 404.
            AuthenticationError: 401 or 403.
            ServiceError: Any other unexpected status.

        Cancellation:
            Cancelling abandons the request; the connection is released.
        """
        request = Request.to(
            method,
            path,
            params,
            body=orjson.dumps(json) if json is not None else body,
            service=service,
            timeout=timeout or self.timeout,
        )

        async def once() -> bytes:
            # the token is read for every attempt: a retry uses a refreshed one
            request.headers = self._headers(headers, auth, json=json is not None)
            opened = False
            try:
                async with self.transport.open(request) as response:
                    opened = True
                    self.health.answered()
                    payload = await response.read()
                    status = response.status
            except (ServiceUnavailable, RequestTimeout) as exc:
                if not opened:  # as _open(): only reaching the gateway counts, not the body
                    self.health.failed(exc)
                raise
            if status not in expect:
                raise status_error(status, payload, service=service, method=method, url=path)
            return payload

        policy = self.retry_policy if retry is True else retry or None
        if policy is None:
            return await once()
        return await retry_call(policy, once, what=f"{method} {path}")

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like :meth:`request`, returning the decoded JSON body (None for an empty body).

        Raises:
            ServiceError: The body is not JSON (besides everything :meth:`request` raises).
        """
        body = await self.request(method, path, **kwargs)
        try:
            return orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            raise ServiceError(
                service=kwargs.get("service", "gateway"),
                method=method,
                url=path,
                status=200,
                detail=f"the answer is not JSON: {body[:200]!r}",
            ) from exc

    async def request_model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        """Like :meth:`request`, returning the body validated as ``model``.

        Raises:
            ServiceError: The body is not what the service should answer (besides everything
                :meth:`request` raises).
        """
        body = await self.request(method, path, **kwargs)
        return parse_answer(
            model, body, service=kwargs.get("service", "gateway"), method=method, url=path
        )

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        service: str,
        body: Body = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Collection[int] = (200,),
        timeout: float | None = None,
    ) -> AsyncIterator[Response]:
        """Open a request and yield the answer for streaming its body (no retries).

        Only getting a connection is bounded in time (``timeout``); the body may take as long
        as it takes.

        Raises:
            TransportError: As :meth:`request`, when opening fails or the status is unexpected.
                Reading the body raises :class:`~flame_async.errors.TransportError` subclasses.
        """
        request = Request.to(
            method,
            path,
            params,
            headers=self._headers(headers, True, json=False),
            body=body,
            service=service,
            connect_timeout=timeout or self.timeout,
        )
        async with AsyncExitStack() as stack:
            response = await self._open(stack, request)
            if response.status not in expect:
                try:
                    text = await response.read(64 * 1024)
                except (TransportError, BodyTooLarge):  # the status is the error; text a bonus
                    text = b""
                raise status_error(response.status, text, service=service, method=method, url=path)
            yield response


def parse_answer(model: type[M], body: bytes, *, service: str, method: str, url: str) -> M:
    """``body`` validated as ``model``.

    Raises:
        ServiceError: The body is not what the service should answer (names the first
            problems and shows the start of the body).
    """
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        first = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise ServiceError(
            service=service,
            method=method,
            url=url,
            status=200,
            detail=f"unexpected answer ({first}): {body[:200]!r}",
        ) from exc
