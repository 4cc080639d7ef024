"""How the local platform's services answer requests, whatever carried them.

Each service is plain logic behind a few :class:`Route` objects whose handlers take a
:class:`Call` (the project's own :class:`~flame_async._transport.Request`, the node whose gateway
was called, the path parameters) and answer a :class:`~flame_async._transport.Response`. A node's
gateway (:mod:`._gateway`) matches routes; over HTTP, aiohttp only carries the exchange
(:func:`flame_async._transport.aiohttp_app`), in memory nothing does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import orjson

from .._transport import BodyTooLarge, Request, Response
from ._node import LocalNode
from ._tokens import InvalidToken, TokenIssuer

__all__ = [
    "Call",
    "Route",
    "RouteHandler",
    "RouteTable",
    "detail_response",
    "json_response",
    "read_json_object",
    "require_bearer",
]

_PARAM = re.compile(r"\{(\w+)(?::([^{}]*(?:\{[^{}]*\}[^{}]*)*))?\}")
_JSON_LIMIT: Final = 64 * 1024 * 1024


@dataclasses.dataclass(slots=True)
class Call:
    """One request to a service, as the service sees it.

    Attributes:
        request: The request (path still with its gateway prefix).
        node: The node whose gateway was called ("self" for the service).
        params: The path parameters of the matched route (decoded).
        claims: The verified token claims, once a route's auth check passed.
    """

    request: Request
    node: LocalNode
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    claims: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def host(self) -> str:
        """The ``Host`` the caller used (answers build absolute URLs from it)."""
        return self.request.headers.get("host", "") or f"nginx-{self.node.deployment_name}"


RouteHandler = Callable[[Call], Awaitable[Response]]
"""What answers a matched route."""


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """A method (or ``*``) and a path pattern with ``{name}`` / ``{name:regex}`` parameters."""

    method: str
    pattern: str
    handler: RouteHandler

    def compile(self) -> re.Pattern[str]:
        """The pattern as a regular expression matching the whole decoded path."""
        parts: list[str] = []
        position = 0
        for match in _PARAM.finditer(self.pattern):
            parts.append(re.escape(self.pattern[position : match.start()]))
            parts.append(f"(?P<{match.group(1)}>{match.group(2) or '[^/]+'})")
            position = match.end()
        parts.append(re.escape(self.pattern[position:]))
        return re.compile("".join(parts))


class RouteTable:
    """Routes matched in the order they were added; 404 and 405 like aiohttp answers them."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._routes: list[tuple[re.Pattern[str], Route]] = []
        self._exact: dict[tuple[str, str], Route] = {}
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        """Add a route (exact paths are looked up in a dict, the rest by regex)."""
        if "{" not in route.pattern and route.method != "*":
            self._exact.setdefault((route.method, route.pattern), route)
        self._routes.append((route.compile(), route))

    async def dispatch(self, call: Call) -> Response:
        """Answer ``call`` with the first route that matches its method and path."""
        request = call.request
        path = request.decoded_path
        exact = self._exact.get((request.method, path))
        if exact is not None:
            return await exact.handler(call)
        allowed: set[str] = set()
        for regex, route in self._routes:
            match = regex.fullmatch(path)
            if match is None:
                continue
            if route.method in ("*", request.method) or (
                route.method == "GET" and request.method == "HEAD"
            ):
                call.params = {k: v for k, v in match.groupdict().items() if v is not None}
                return await route.handler(call)
            allowed.add(route.method)
        if allowed:
            return detail_response(405, f"{request.method} is not allowed on {path}")
        return detail_response(404, f"no such path: {path}")


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """An answer with ``data`` serialised by orjson."""
    return Response(
        status,
        orjson.dumps(data),
        headers={"content-type": "application/json", **(headers or {})},
    )


def detail_response(status: int, detail: Any) -> Response:
    """A FastAPI/Spring-style error answer ``{"detail": detail}``."""
    return json_response({"detail": detail}, status=status)


async def read_json_object(call: Call, *, limit: int = _JSON_LIMIT) -> dict[str, Any] | Response:
    """The request body as a JSON object, or the 4xx answer to send instead."""
    try:
        raw = await call.request.read(limit)
    except BodyTooLarge:
        return detail_response(413, f"the body is larger than {limit} bytes")
    except TypeError:
        return detail_response(400, "the body must be a JSON object, not a form")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return detail_response(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return detail_response(400, "the body must be a JSON object")
    return body


def require_bearer(
    handler: RouteHandler,
    issuer: TokenIssuer,
    analysis_id: str,
    *,
    rejected: tuple[int, str] | None = None,
) -> RouteHandler:
    """``handler`` behind a bearer-token check: only valid tokens of this analysis pass.

    The token must verify with ``issuer`` and its ``client_id`` claim must equal
    ``analysis_id`` (the real nginx pins the analysis, the real services check the token). The
    claims are put on the call. A request without a bearer token gets 401
    ``{"detail": "Not authenticated"}``, one with a bad token ``rejected``.

    Args:
        handler: What answers once the check passed.
        issuer: Verifies the tokens.
        analysis_id: The only analysis the tokens may be for.
        rejected: Status and ``detail`` for a token that does not verify or is for another
            analysis (the storage service answers 403 ``JWT is malformed``); by default 401
            with the reason.
    """

    async def checked(call: Call) -> Response:
        header = call.request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return detail_response(401, "Not authenticated")
        try:
            claims = issuer.verify(token.strip())
        except InvalidToken as exc:
            return detail_response(*rejected or (401, f"invalid token: {exc}"))
        if claims.get("client_id") != analysis_id:
            return detail_response(*rejected or (401, "the token is not for this analysis"))
        call.claims = claims
        return await handler(call)

    return checked
