"""Ingress to the node's analysis API: nginx's ``/analysis/*`` location.

nginx strips ``/analysis`` and forwards to the analysis container on port 8000, passing the Host
header through. Locally the upstream is the node's API wherever it is (its announced port, or
its handler in memory): :meth:`~flame_async.local._core.PlatformCore.call_node`.

On the real platform nginx takes ``/analysis`` requests only from the broker's and the PO's pod
addresses. Locally every caller shares 127.0.0.1, so the ingress is open to whoever can reach the
gateway; the platform itself skips it (deliveries and status calls go to node APIs directly).
Bodies stream through; the node API applies its own limit. A ``multipart/form-data`` body that
arrived over HTTP (parsed part by part) is written on as it is read, with a new boundary.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from typing import Final

from .._transport import Body, Buffer, Form, Multipart, Request, Response
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

        A refused or failed connection gives 502 (what nginx answers), a timeout 504, a
        request that cannot be sent on (a header an in-memory caller made that HTTP cannot
        carry) 400.

        Cancellation: the upstream request is abandoned with the client's.
        """
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body: Body = request.body
        form: _Reencoded | None = None
        if isinstance(body, Form) and not isinstance(body, Multipart):
            form = _Reencoded(body)
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            headers["content-type"] = f"multipart/form-data; boundary={form.boundary}"
            body = form.chunks()
        upstream = Request(
            request.method,
            request.path[len("/analysis") :] or "/",
            query_string=request.query_string,
            headers=headers,
            body=body,
        )
        stack = AsyncExitStack()
        try:
            answer = await stack.enter_async_context(
                self._core.call_node(node_id, upstream, timeout=_READ_TIMEOUT)
            )
        except (NodeUnreachable, OSError) as exc:
            await stack.aclose()
            if form is not None and form.failure is not None:  # the client's form, not the API
                return detail_response(400, f"the multipart body is malformed: {form.failure}")
            logger.debug("proxy to %s failed: %r", node_id, exc)
            return detail_response(502, f"the analysis API is not reachable: {exc}")
        except TimeoutError:
            await stack.aclose()
            return detail_response(504, "the analysis API did not answer in time")
        except ValueError as exc:  # aiohttp refuses to write what the request holds
            await stack.aclose()
            return detail_response(400, f"the request cannot be forwarded: {exc}")
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


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class _Reencoded:
    """An inbound form written on as ``multipart/form-data`` with a new boundary, part by part
    as it is read; remembers why reading it failed, if it did."""

    def __init__(self, form: Form) -> None:
        self.boundary = uuid.uuid4().hex
        self.failure: Exception | None = None
        self._form = form

    async def chunks(self) -> AsyncIterator[Buffer]:
        """The encoded form.

        Raises:
            Exception: Whatever reading the inbound form raises (also kept in ``failure``).
        """
        boundary = self.boundary
        try:
            async for part in self._form:
                disposition = "form-data"
                if part.name is not None:
                    disposition += f'; name="{_quoted(part.name)}"'
                if part.filename is not None:
                    disposition += f'; filename="{_quoted(part.filename)}"'
                head = (
                    f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                    f"Content-Type: {part.content_type}\r\n\r\n"
                )
                yield head.encode("utf-8", "surrogateescape")
                async for chunk in part.chunks():
                    yield chunk
                yield b"\r\n"
        except Exception as exc:
            self.failure = exc
            raise
        yield f"--{boundary}--\r\n".encode()
