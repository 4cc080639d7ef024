"""Ingress to the node's analysis API: nginx's ``/analysis/*`` location.

nginx strips ``/analysis`` and forwards to the analysis container on port 8000, passing the Host
header through. Locally the upstream is ``http://{FLAME_API_HOST}:{api_port}``.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from ._core import PlatformCore
from ._node import LocalNode
from ._service import detail_response

__all__ = ["AnalysisProxy"]

logger = logging.getLogger("flame_async.local.proxy")

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are not forwarded.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        "Proxy-Connection",
    )
)
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=120.0)


class AnalysisProxy:
    """Reverse proxy from ``{gateway}/analysis/{path}`` to ``{node API}/{path}``.

    Args:
        core: The running platform (its session makes the upstream requests).
    """

    prefixes = ("/analysis",)

    def __init__(self, core: PlatformCore) -> None:
        self._core = core

    def mount(self, app: web.Application, node: LocalNode) -> None:
        """Forward ``/analysis/...`` of ``node``'s gateway to its API."""
        upstream = URL(node.api_url)

        async def forward(request: web.Request) -> web.StreamResponse:
            return await self._forward(request, upstream)

        app.router.add_route("*", "/analysis/{tail:.*}", forward)

    async def _forward(self, request: web.Request, upstream: URL) -> web.StreamResponse:
        """Forward one request and stream the answer back.

        A refused or failed connection gives 502 (what nginx answers), a timeout 504. If the
        upstream fails after the answer started, the client's connection is cut.

        Cancellation: the upstream request is abandoned with the client's.
        """
        target = URL.build(
            scheme=upstream.scheme,
            host=upstream.raw_host or "",
            port=upstream.port,
            path=request.rel_url.raw_path[len("/analysis") :],
            query_string=request.rel_url.raw_query_string,
            encoded=True,
        )
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        response: web.StreamResponse | None = None
        try:
            async with self._core.session.request(
                request.method,
                target,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                timeout=_TIMEOUT,
                auto_decompress=False,
            ) as answer:
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for name, value in answer.headers.items():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        response.headers.add(name, value)
                if answer.content_length is not None:
                    response.content_length = answer.content_length
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            if response is not None and response.prepared:
                raise
            logger.debug("proxy to %s failed: %r", target, exc)
            if isinstance(exc, TimeoutError):
                return detail_response(504, "the analysis API did not answer in time")
            return detail_response(502, f"the analysis API is not reachable: {exc}")
