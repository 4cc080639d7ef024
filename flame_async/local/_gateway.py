"""The node gateways: what ``http://nginx-{DEPLOYMENT_NAME}`` is on the real platform.

Every node gets a :class:`Gateway` with the nginx routes of PROTOCOL.md §1.3: ``/healthz``
answered by the gateway itself, and the rest contributed by the platform's services
(:class:`~flame_async.local._service.NodeService`). Prefixes of the real nginx that no service
serves answer 501. A gateway is a request handler on the project's own types: the HTTP platform
serves it on the node's own port (and behind the shared port, routed by the
``Host: nginx-{DEPLOYMENT_NAME}`` header, so a container that knows nothing about the local
platform reaches it with ``HTTP_PROXY``); the in-memory transport calls it directly.

Who may call a service is the service's business (:func:`~flame_async.local._http.require_bearer`
binds every token to its node's gateway, on the node's own port and behind the shared port
alike). The gateway only guarantees that no input gets a 5xx: a request aiohttp's parser fails
on while a service reads it is answered 400, and only the platform's own bugs answer 500.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .._transport import ConnectionDropped, Handler, Request, Response, aiohttp_app
from ._faults import FaultPlan
from ._http import Call, Route, RouteTable, detail_response
from ._node import LocalNode
from ._service import NodeService

__all__ = ["NGINX_PREFIXES", "Gateway", "bind_socket", "serve", "shared_handler"]

logger = logging.getLogger("flame_async.local.gateway")

NGINX_PREFIXES: Final = ("/storage", "/hub-adapter", "/kong")
"""Prefixes the real nginx forwards that answer 501 unless a service serves them."""

_SHUTDOWN_TIMEOUT: Final = 1.0
_SERVICE_PREFIXES: Final = ("/message-broker/analyses", "/storage", "/po", "/hub-adapter", "/kong")
"""Requests chaos mode may hurt: the node services (not health checks or the node API)."""
_ID_LENGTH: Final = 20
"""Path segments this long are ids (UUIDs, object ids): routes leave them out."""


class Gateway:
    """One node's gateway: the routes of every service, with the node as "self".

    Args:
        node: The node the gateway belongs to.
        services: The platform's services; each adds its routes.
        faults: Chaos mode: service requests (not ``/healthz``, the node API ingress or the
            platform's own routes) may be answered 502/503 unserved, or lose their
            connection before or after they are served.
    """

    def __init__(
        self, node: LocalNode, services: Iterable[NodeService], faults: FaultPlan | None = None
    ) -> None:
        self.node = node
        self._faults = faults
        table = RouteTable([Route("GET", "/healthz", _healthz)])
        claimed: set[str] = set()
        for service in services:
            for route in service.routes(node):
                table.add(route)
            claimed.update(service.prefixes)
        for prefix in NGINX_PREFIXES:
            if prefix not in claimed:
                table.add(Route("*", prefix + "{tail:(/.*)?}", _not_emulated))
        self._table = table

    async def handle(self, request: Request) -> Response:
        """Answer one request to this node's gateway.

        Raises:
            ConnectionDropped: Only in chaos mode: the connection is lost (the transport
                closes it without an answer).
        """
        fault = None
        if self._faults is not None and request.path.startswith(_SERVICE_PREFIXES):
            fault = self._faults.service(self.node.node_id, request.method, _route(request.path))
        if fault in ("502", "503"):
            return detail_response(int(fault), "injected by the local platform's chaos mode")
        if fault == "reset-before":
            raise ConnectionDropped
        response = await self._answer(request)
        if fault == "reset-after":  # served, but the client never hears of it
            await response.aclose()
            raise ConnectionDropped
        return response

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._table.dispatch(Call(request, self.node))
        except HttpProcessingError as exc:  # what the client sent cannot be parsed
            reason = exc.message or type(exc).__name__
            return detail_response(400, f"the request is malformed: {reason}")
        except Exception:  # a server answers 500 for its own bugs; so does this one
            logger.exception("%s %s on %s failed", request.method, request.path, self.node.node_id)
            return detail_response(500, "Internal Server Error")


def shared_handler(gateways: Mapping[str, Gateway]) -> Handler:
    """The shared port: each request goes to the gateway named by its ``Host`` header.

    Requests whose ``Host`` is no node's ``nginx-{DEPLOYMENT_NAME}`` get 404 with a JSON detail.
    """
    by_host = {gateway.node.nginx_host: gateway for gateway in gateways.values()}

    async def handle(request: Request) -> Response:
        host = request.headers.get("host", "").partition(":")[0].lower()
        gateway = by_host.get(host)
        if gateway is None:
            return detail_response(
                404, f"no node gateway is called {host!r}; use Host: nginx-{{DEPLOYMENT_NAME}}"
            )
        return await gateway.handle(request)

    return handle


def bind_socket(host: str, port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: an ephemeral port).

    Raises:
        OSError: The address cannot be bound.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family)


async def serve(handler: Handler, sock: socket.socket, stack: AsyncExitStack) -> None:
    """Serve ``handler`` over HTTP on the listening ``sock`` until ``stack`` closes.

    Raises:
        OSError: The server cannot start on the socket.
    """
    runner = web.AppRunner(
        aiohttp_app(handler), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()


def _route(path: str) -> str:
    """A request path without its ids (long segments), for chaos mode's dice."""
    return "/".join(part if len(part) < _ID_LENGTH else "*" for part in path.split("/"))


async def _healthz(call: Call) -> Response:
    return Response(200, b"healthy", headers={"content-type": "text/plain; charset=utf-8"})


async def _not_emulated(call: Call) -> Response:
    prefix = "/" + call.request.path.split("/", 2)[1]
    return detail_response(501, f"{prefix} is not emulated yet by the local platform")
