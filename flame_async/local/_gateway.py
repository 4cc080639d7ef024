"""The node gateways: what ``http://nginx-{DEPLOYMENT_NAME}`` is on the real platform.

Every node gets an aiohttp application on its own port with the nginx routes of PROTOCOL.md §1.3:
``/healthz`` answered by the gateway itself, and the rest contributed by the platform's services
(:class:`~flame_async.local._service.NodeService`). Prefixes of the real nginx that no service
serves yet answer 501.

One more server, the shared port, hosts every node application behind its
``nginx-{DEPLOYMENT_NAME}`` host name (aiohttp domain sub-applications), so a container that
knows nothing about the local platform reaches its gateway with
``HTTP_PROXY=http://127.0.0.1:{shared_port}``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Final

from aiohttp import hdrs, web

from ._node import LocalNode
from ._service import Handler, NodeService, detail_response

__all__ = [
    "NGINX_PREFIXES",
    "NODE",
    "bind_socket",
    "node_app",
    "serve",
    "shared_app",
]

NODE: Final = web.AppKey("node", LocalNode)
"""The node a gateway application belongs to."""

NGINX_PREFIXES = ("/storage", "/hub-adapter", "/kong")
"""Prefixes the real nginx forwards that answer 501 until a service serves them."""

# nginx runs with client_max_body_size 0 (unlimited); services stream what may be large.
_MAX_BODY = 1 << 40
_SHUTDOWN_TIMEOUT = 1.0


def node_app(node: LocalNode, services: Iterable[NodeService]) -> web.Application:
    """Build one gateway application of ``node``.

    Args:
        node: The node the gateway belongs to; it is "self" for every service behind it.
        services: The platform's services; each mounts its routes.
    """
    app = web.Application(client_max_size=_MAX_BODY)
    app[NODE] = node
    app.router.add_get("/healthz", _healthz)
    claimed: set[str] = set()
    for service in services:
        service.mount(app, node)
        claimed.update(service.prefixes)
    for prefix in NGINX_PREFIXES:
        if prefix not in claimed:
            app.router.add_route("*", prefix + "{tail:(/.*)?}", _not_emulated)
    return app


def shared_app(nodes: Sequence[LocalNode], services: Sequence[NodeService]) -> web.Application:
    """Build the shared-port application: every node gateway behind its nginx host name.

    Requests whose ``Host`` is no node's ``nginx-{DEPLOYMENT_NAME}`` get 404 with a JSON detail.
    Absolute-form request targets (what HTTP clients send to a proxy) work as well.
    """
    known = frozenset(node.nginx_host for node in nodes)

    @web.middleware
    async def known_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST, "").partition(":")[0]
        if host.lower() not in known:
            return detail_response(
                404, f"no node gateway is called {host!r}; use Host: nginx-{{DEPLOYMENT_NAME}}"
            )
        return await handler(request)

    app = web.Application(client_max_size=_MAX_BODY, middlewares=[known_host])
    for node in nodes:
        app.add_domain(node.nginx_host, node_app(node, services))
    return app


def bind_socket(host: str, port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: an ephemeral port).

    Raises:
        OSError: The address cannot be bound.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family)


async def serve(app: web.Application, sock: socket.socket, stack: AsyncExitStack) -> None:
    """Serve ``app`` on the listening ``sock`` until ``stack`` closes.

    Raises:
        OSError: The server cannot start on the socket.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="healthy")


async def _not_emulated(request: web.Request) -> web.Response:
    prefix = "/" + request.path.split("/", 2)[1]
    return detail_response(501, f"{prefix} is not emulated yet by the local platform")
