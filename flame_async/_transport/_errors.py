"""Error statuses to errors, which failures deserve another try, and the retry loop itself."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import orjson

from ..config import RetryPolicy
from ..errors import (
    AuthenticationError,
    NotFoundError,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    TransportError,
)

__all__ = ["RETRYABLE_STATUS", "is_retryable", "retry_call", "status_error"]

log = logging.getLogger("flame_async.transport")

T = TypeVar("T")

RETRYABLE_STATUS: Final = frozenset({502, 503, 504})
"""Statuses of a gateway or service that is (re)starting: worth another try."""


def is_retryable(exc: BaseException) -> bool:
    """Connection failures, timeouts and 502/503/504 are worth another try; 4xx never."""
    if isinstance(exc, ServiceUnavailable | RequestTimeout):
        return True
    return isinstance(exc, ServiceError) and exc.status in RETRYABLE_STATUS


def detail_of(body: bytes) -> str:
    """The error text of an answer: its JSON ``detail`` field, else its first 500 characters."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace").strip()
    if isinstance(parsed, dict) and "detail" in parsed:
        detail = parsed["detail"]
        return detail if isinstance(detail, str) else orjson.dumps(detail).decode()[:500]
    return body[:500].decode("utf-8", "replace").strip()


def status_error(status: int, body: bytes, *, service: str, method: str, url: str) -> ServiceError:
    """The error for an unexpected answer: 404, 401/403 and the rest each have their type."""
    kwargs: dict[str, Any] = {
        "service": service,
        "method": method,
        "url": url,
        "status": status,
        "detail": detail_of(body),
    }
    if status == 404:
        return NotFoundError(**kwargs)
    if status in (401, 403):
        return AuthenticationError(**kwargs)
    return ServiceError(**kwargs)


async def retry_call(
    policy: RetryPolicy,
    call: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    what: str = "request",
) -> T:
    """Run ``call`` until it succeeds, retrying retryable failures per ``policy``.

    A :class:`~flame_async.errors.ServiceError` carrying ``retry_after`` (a ``Retry-After``
    header) waits at least that long before the next try, also under ``policy.instant``: the
    service asked for it, and a deadline too short for the wait ends the retrying instead.

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
            if delay is not None and isinstance(exc, ServiceError) and exc.retry_after:
                delay = max(delay, exc.retry_after)  # the service asked for at least this
            if delay is None or time.monotonic() - started + delay > policy.deadline:
                raise
            log.debug("%s failed (%s); retrying in %.3f s", what, exc, delay)
            await anyio.sleep(delay)
