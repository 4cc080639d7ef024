"""A web service that is also a FLAME node, with aiohttp: one application, one server.

The service answers its own routes (``GET /status``) while its ``FlameSDK`` takes part in the
analysis. The node API's routes (``/webhook``, ``/healthz``, ``/token_refresh``,
``/partner_status``) are mounted into the same application, so there is no second server. On
the FLAME platform the application listens on port 8000, where nginx forwards the platform's
calls.

The node answers ``question`` requests of its peers with a handler, so no task of its own is
needed. Run it on the platform with ``python aiohttp_service.py``; the node's configuration
comes from the environment, as always.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from flame_async import AiohttpTransport, FlameConfig, FlameSDK, Message
from flame_async.embed import mount_node_api

FLAME = web.AppKey("flame", FlameSDK)
ANSWERED = web.AppKey("answered", list)


def create_app(config: FlameConfig) -> web.Application:
    """The service: its own routes, the node API's routes, and the node's lifetime."""
    app = web.Application()
    mount = mount_node_api(app)  # the node API is answered by this application
    app[ANSWERED] = []

    async def status(request: web.Request) -> web.Response:
        flame = request.app[FLAME]
        return web.json_response({"node": flame.node_id, "answered": len(request.app[ANSWERED])})

    app.router.add_get("/status", status)

    async def flame_node(app: web.Application) -> AsyncIterator[None]:
        # entered when the service starts, left when it stops: the node lives as long
        transport = AiohttpTransport.from_config(config, api=mount)
        async with FlameSDK(config, transport=transport) as flame:

            @flame.handler("question")
            async def answer(message: Message) -> dict[str, Any]:
                app[ANSWERED].append(message.sender)
                return {"answer": message.data["x"] * 2}

            app[FLAME] = flame
            yield

    app.cleanup_ctx.append(flame_node)
    return app


if __name__ == "__main__":
    node_config = FlameConfig.from_env(os.environ)
    web.run_app(create_app(node_config), host=node_config.api_host, port=node_config.api_port)
