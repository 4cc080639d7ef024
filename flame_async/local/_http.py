"""How the local platform's services answer requests, whatever carried them.

Each service is plain logic behind a few :class:`Route` objects whose handlers take a
:class:`Call` (the project's own :class:`~flame_async._transport.Request`, the node whose gateway
was called, the path parameters) and answer a :class:`~flame_async._transport.Response`. A node's
gateway (:mod:`._gateway`) matches routes; over HTTP, aiohttp only carries the exchange
(:func:`flame_async._transport.aiohttp_app`), in memory nothing does.

The helpers here are where every service meets its caller's input, so the rules live here too:

* **Identity.** :func:`require_bearer` lets a request through only with a token of this
  analysis whose node (``sub``) owns the gateway that was called; anything else gets 401 (no
  or a bad token) or 403 (another node's token) with a ``detail`` that says which.
* **Bounded input.** :func:`read_body` and :func:`read_json_object` read at most the route's
  limit (413 naming it, before reading anything when ``Content-Length`` already says so); a
  body that cannot be read (cut off, malformed framing) is a 400, never a 500.
* **Safe error answers.** :func:`validation_response` turns a pydantic error into FastAPI's 422
  shape without echoing what cannot be serialised (integers beyond 64 bits) or is large.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import orjson
from pydantic import ValidationError

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
    "read_body",
    "read_json_object",
    "require_bearer",
    "shown",
    "too_large",
    "validation_response",
]

_PARAM = re.compile(r"\{(\w+)(?::([^{}]*(?:\{[^{}]*\}[^{}]*)*))?\}")
SMALL_JSON_LIMIT: Final = 64 * 1024
"""Default body limit of a JSON call that carries no payload (subscriptions, announcements)."""
# A Host header answers may be built from: a name or an IP literal, with an optional port.
_HOST = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
_ECHO_LIMIT: Final = 200


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
        """The ``Host`` the caller used (answers build absolute URLs from it).

        ``nginx-{DEPLOYMENT_NAME}`` when the request has none, or one that is not a host name
        or IP literal with an optional port.
        """
        host = self.request.headers.get("host", "")
        if host and _HOST.fullmatch(host):
            return host
        return f"nginx-{self.node.deployment_name}"


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
        self._matched: dict[tuple[str, str], tuple[Route, dict[str, str]]] = {}
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
        key = (request.method, path)
        hit = self._matched.get(key)
        if hit is not None:
            route, params = hit
            call.params = dict(params)
            return await route.handler(call)
        allowed: set[str] = set()
        for regex, route in self._routes:
            match = regex.fullmatch(path)
            if match is None:
                continue
            if route.method in ("*", request.method) or (
                route.method == "GET" and request.method == "HEAD"
            ):
                call.params = {k: v for k, v in match.groupdict().items() if v is not None}
                if len(self._matched) >= 256:
                    self._matched.clear()
                self._matched[key] = (route, dict(call.params))
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


def _size(count: int) -> str:
    """``count`` bytes in words: ``16 MiB``, ``16.06 MiB``, ``64 KiB`` or ``1000 bytes``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            value = count / (1 << shift)
            return f"{value:.0f} {unit}" if count % (1 << shift) == 0 else f"{value:.2f} {unit}"
    return f"{count} bytes"


def too_large(limit: int, what: str, size: int | None = None) -> Response:
    """413 naming the limit: ``what`` takes at most ``limit`` bytes (the body was ``size``)."""
    was = f"{size} bytes" if size is not None else "larger"
    return detail_response(
        413, f"{what} takes at most {limit} bytes ({_size(limit)}); this body is {was}"
    )


async def read_body(call: Call, *, limit: int, what: str = "this route") -> bytes | Response:
    """The whole request body, at most ``limit`` bytes, or the 4xx answer to send instead.

    A declared ``Content-Length`` over the limit is refused before anything is read.

    Args:
        call: The request.
        limit: The most bytes accepted.
        what: Names the route in the 413 reason, e.g. ``"a log request"``.

    Returns:
        The body, or 413 (too large), 415 (a multipart form where bytes are expected) or 400
        (the body could not be read: malformed framing, or the client went away).
    """
    declared = call.request.content_length
    if declared is not None and declared > limit:
        return too_large(limit, what, declared)
    try:
        return await call.request.read(limit)
    except BodyTooLarge:
        return too_large(limit, what)
    except TypeError:
        return detail_response(415, "the body is a multipart form; this route takes JSON")
    # Reading fails only because of what the client sent (aiohttp's parser errors, a
    # connection cut mid-body); whatever the transport raised, it is the client's 400.
    except Exception as exc:  # noqa: BLE001
        return detail_response(400, f"the body could not be read: {exc}")


async def read_json_object(
    call: Call, *, limit: int = SMALL_JSON_LIMIT, what: str = "this route"
) -> dict[str, Any] | Response:
    """The request body as a JSON object, or the 4xx answer to send instead.

    Args:
        call: The request.
        limit: The most bytes accepted (see :func:`read_body`).
        what: Names the route in the 413 reason.

    Returns:
        The object, or an answer as :func:`read_body` gives it, or 400 when the body is not
        valid JSON (also invalid UTF-8, or nested deeper than 1024 levels) or not an object.
    """
    raw = await read_body(call, limit=limit, what=what)
    if isinstance(raw, Response):
        return raw
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return detail_response(400, f"the body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return detail_response(400, f"the body must be a JSON object, not {_json_kind(body)}")
    return body


def _json_kind(value: Any) -> str:
    kinds = {
        dict: "an object",
        list: "an array",
        tuple: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return kinds.get(type(value), "a number")


def shown(value: Any) -> Any:
    """``value`` as a 422 answer may show it: short, and serialisable by orjson."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if -(1 << 63) <= value < 1 << 64:
            return value
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return value if len(value) <= _ECHO_LIMIT else value[:_ECHO_LIMIT] + "…"
    if isinstance(value, dict | list | tuple):
        return f"{_json_kind(value)} of {len(value)} items"
    return type(value).__name__


def validation_response(exc: ValidationError, where: str = "body") -> Response:
    """422 as FastAPI words it, ``{"detail": [{"type", "loc", "msg", "input"}]}``.

    The ``input`` is shown only as far as it is short and serialisable.
    """
    errors = [
        {
            "type": error["type"],
            "loc": [where, *error["loc"]],
            "msg": error["msg"],
            "input": shown(error.get("input")),
        }
        for error in exc.errors(include_url=False, include_context=False)
    ]
    return json_response({"detail": errors}, status=422)


def require_bearer(
    handler: RouteHandler,
    issuer: TokenIssuer,
    analysis_id: str,
    *,
    node_id: str,
    rejected: tuple[int, str] | None = None,
) -> RouteHandler:
    """``handler`` behind a bearer-token check: only the gateway's own node passes.

    The token must verify with ``issuer``, its ``client_id`` claim must equal ``analysis_id``
    (the real nginx pins the analysis, the real services check the token) and its ``sub``
    claim must be ``node_id``, the node whose gateway was called: a node's token never acts
    as another node. The claims are put on the call.

    Answers instead of calling ``handler``: 401 ``{"detail": "Not authenticated"}`` without a
    bearer token; ``rejected`` for a token that does not verify or is for another analysis;
    403 naming both nodes for another node's token.

    Args:
        handler: What answers once the check passed.
        issuer: Verifies the tokens.
        analysis_id: The only analysis the tokens may be for.
        node_id: The only node the tokens may be of (the gateway's).
        rejected: Status and ``detail`` for a token that does not verify or is for another
            analysis (the storage service answers 403 ``JWT is malformed``); by default 401
            with the reason.
    """

    async def checked(call: Call) -> Response:
        header = call.request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return detail_response(401, "Not authenticated")
        try:
            claims = issuer.verify(token.strip())
        except InvalidToken as exc:
            return detail_response(*rejected or (401, f"invalid token: {exc}"))
        if claims["client_id"] != analysis_id:
            return detail_response(*rejected or (401, "the token is not for this analysis"))
        owner = claims["sub"]
        if owner != node_id:
            return detail_response(
                403,
                f"this token belongs to {owner}, not to {node_id}: a node calls only its own "
                "gateway, with its own token (KEYCLOAK_TOKEN)",
            )
        call.claims = claims
        return await handler(call)

    return checked
