"""Ingress to the node's analysis API: nginx's ``/analysis/*`` location.

nginx strips ``/analysis`` and forwards to the analysis container on port 8000, passing the Host
header through. Locally the upstream is the node's API wherever it is (its announced port, or
its handler in memory): :meth:`~flame_async.local._core.PlatformCore.call_node`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Final

from .._transport import Request, Response
from ._core import NodeUnreachable, PlatformCore
from ._http import Call, Route, detail_response
from ._node import LocalNode

__all__ = ["AnalysisProxy"]

logger = logging.getLogger("flame_async.local.proxy")

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are not forwarded.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
_READ_TIMEOUT: Final = 120.0


class AnalysisProxy:
    """Reverse proxy from ``{gateway}/analysis/{path}`` to ``{node API}/{path}``.

    Args:
        core: The running platform (it knows where each node's API is).
    """

    prefixes = ("/analysis",)

    def __init__(self, core: PlatformCore) -> None:
        self._core = core

    def routes(self, node: LocalNode) -> Iterable[Route]:
        """Forward ``/analysis/...`` of ``node``'s gateway to its API."""

        async def forward(call: Call) -> Response:
            return await self._forward(node.node_id, call.request)

        return [Route("*", "/analysis/{tail:.*}", forward)]

    async def _forward(self, node_id: str, request: Request) -> Response:
        """Forward one request; the answer streams back.

        A refused or failed connection gives 502 (what nginx answers), a timeout 504.

        Cancellation: the upstream request is abandoned with the client's.
        """
        upstream = Request(
            request.method,
            request.path[len("/analysis") :] or "/",
            query_string=request.query_string,
            headers={k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP},
            body=request.body,
        )
        stack = AsyncExitStack()
        try:
            answer = await stack.enter_async_context(
                self._core.call_node(node_id, upstream, timeout=_READ_TIMEOUT)
            )
        except (NodeUnreachable, OSError) as exc:
            await stack.aclose()
            logger.debug("proxy to %s failed: %r", node_id, exc)
            return detail_response(502, f"the analysis API is not reachable: {exc}")
        except TimeoutError:
            await stack.aclose()
            return detail_response(504, "the analysis API did not answer in time")
        except BaseException:
            await stack.aclose()
            raise
        headers = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        }
        return Response(
            answer.status,
            answer.iter_chunks(),
            headers=headers,
            content_length=answer.content_length,
            on_close=stack.aclose,
        )
