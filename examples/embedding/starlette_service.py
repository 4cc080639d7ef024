"""A web service that is also a FLAME node, with Starlette (FastAPI works the same way).

The node lives in the application's ``lifespan``: entered when the server starts, left when it
stops. The service answers its own routes (``GET /status``, ``POST /ask``) while the node takes
part in the analysis. An ASGI application cannot host the node API's routes, so the node runs
its own small API server on ``FLAME_API_HOST:FLAME_API_PORT`` (on the FLAME platform: port
8000, where nginx forwards the platform's calls); run the service itself on another port, e.g.
``uvicorn starlette_service:app --port 8080``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flame_async import FlameConfig, FlameSDK, Transport


def create_app(config: FlameConfig, transport: Transport | None = None) -> Starlette:
    """The service; ``transport`` is for tests on a local platform (default: HTTP)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with FlameSDK(config, transport=transport) as flame:
            app.state.flame = flame
            yield

    async def status(request: Request) -> JSONResponse:
        flame: FlameSDK = request.app.state.flame
        return JSONResponse({"node": flame.node_id, "peers": flame.get_participant_ids()})

    async def ask(request: Request) -> JSONResponse:
        """Ask every peer a question through the analysis and return their answers."""
        flame: FlameSDK = request.app.state.flame
        x = int((await request.json())["x"])
        replies = await flame.send_message_and_wait_for_responses(
            None, {"x": x}, category="question", timeout=30
        )
        return JSONResponse(
            {node: reply.data["answer"] if reply else None for node, reply in replies.items()}
        )

    return Starlette(
        routes=[Route("/status", status), Route("/ask", ask, methods=["POST"])],
        lifespan=lifespan,
    )


if os.environ.get("ANALYSIS_ID"):  # under uvicorn on a FLAME node
    app = create_app(FlameConfig.from_env(os.environ))
