"""What a platform service is, and the HTTP helpers the services share.

A service contributes routes to every node gateway (:meth:`NodeService.mount`) and declares the
path prefixes it serves. The gateway answers 501 for the prefixes of the real nginx that no
service claims yet, so adding storage or the data proxy later means adding a service object to
the platform's list, not changing the gateway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from ._node import LocalNode
from ._tokens import InvalidToken, TokenIssuer

__all__ = [
    "CLAIMS",
    "Handler",
    "NodeService",
    "bearer_auth",
    "detail_response",
    "json_response",
]

CLAIMS: Final = web.RequestKey[dict[str, Any]]("claims")
"""The verified token claims of an authenticated request."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""An aiohttp request handler."""


class NodeService(Protocol):
    """A node service reachable through every node gateway."""

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The gateway path prefixes this service serves, e.g. ``("/message-broker",)``."""
        ...

    def mount(self, app: web.Application, node: LocalNode) -> None:
        """Add the service's routes for ``node`` to ``app``, the node's gateway application.

        Called once per gateway application of a node (the node's own port and the shared
        port each get one), before the application starts.
        """
        ...


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A response with ``data`` serialised by orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def detail_response(status: int, detail: str) -> web.Response:
    """A FastAPI/Spring-style error response ``{"detail": detail}``."""
    return json_response({"detail": detail}, status=status)


def bearer_auth(
    issuer: TokenIssuer, analysis_id: str, *, rejected: tuple[int, str] | None = None
) -> Middleware:
    """Middleware that admits only requests with a valid token of this analysis.

    The token must verify with ``issuer`` and its ``client_id`` claim must equal
    ``analysis_id`` (the real nginx pins the analysis, the real services check the token). The
    claims are stored under :data:`CLAIMS` on the request. A request without a bearer token
    gets 401 ``{"detail": "Not authenticated"}``, one with a bad token ``rejected``.

    Args:
        issuer: Verifies the tokens.
        analysis_id: The only analysis the tokens may be for.
        rejected: Status and ``detail`` for a token that does not verify or is for another
            analysis (the storage service answers 403 ``JWT is malformed``); by default 401
            with the reason.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return detail_response(401, "Not authenticated")
        try:
            claims = issuer.verify(token.strip())
        except InvalidToken as exc:
            return detail_response(*rejected or (401, f"invalid token: {exc}"))
        if claims.get("client_id") != analysis_id:
            return detail_response(*rejected or (401, "the token is not for this analysis"))
        request[CLAIMS] = claims
        return await handler(request)

    return middleware
