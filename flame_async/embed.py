"""Embedding a FLAME node in a service you already run.

A service (an aiohttp or ASGI application) can be a FLAME node too: enter ``FlameSDK`` in the
application's lifetime hook (aiohttp ``cleanup_ctx``, Starlette/FastAPI ``lifespan``), and the
node exchanges messages while the service answers its own routes. With aiohttp the node API
can live inside your application (:func:`mount_node_api`): no second server. See the how-to
"Embedding in a service".
"""

from __future__ import annotations

from aiohttp import web

from ._transport._server import NODE_API_PATHS, NodeApiMount

__all__ = ["NODE_API_PATHS", "NodeApiMount", "mount_node_api"]


def mount_node_api(app: web.Application, *, prefix: str = "") -> NodeApiMount:
    """Add the node API's routes (``/webhook``, ``/healthz``, ``/token_refresh``,
    ``/partner_status``) to ``app``; give the result to the node's transport::

        mount = mount_node_api(app)
        FlameSDK(config, transport=AiohttpTransport.from_config(config, api=mount))

    Call it before the application starts. Until a ``FlameSDK`` runs with it, the routes
    answer 503.

    Args:
        app: Your aiohttp application.
        prefix: A path prefix for the routes (the FLAME platform forwards to the root).
    """
    return NodeApiMount(app, prefix=prefix)
