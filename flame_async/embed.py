"""Embedding a FLAME node in a service you already run.

A service (an aiohttp or ASGI application) can be a FLAME node too: enter ``FlameSDK`` in the
application's lifetime hook (aiohttp ``cleanup_ctx``, Starlette/FastAPI ``lifespan``), and the
node exchanges messages while the service answers its own routes. With aiohttp the node API
can live inside your application (:func:`mount_node_api`): no second server. See the how-to
"Embedding in a service".
"""

from __future__ import annotations

from ._transport._server import NODE_API_PATHS, NodeApiMount, mount_node_api

__all__ = ["NODE_API_PATHS", "NodeApiMount", "mount_node_api"]
