"""The transport seam: the project's own HTTP types, the transports, and calls to the gateway.

Nothing above this package uses an aiohttp type: services build :class:`Request` objects (or
call :class:`GatewayClient`), transports carry them, and every failure, also while a body is
read, arrives as a :class:`~flame_async.errors.TransportError`.

The server side (:func:`aiohttp_app`, :func:`serve_handler`) is imported on first use: it needs
``aiohttp.web``, whose import adds a filter to the host program's ``warnings.filters``, and a
program that only makes requests (``flame_async.hub``) should not pay for, or be changed by, it.
"""

from typing import TYPE_CHECKING, Any

from ._aiohttp import AiohttpTransport, aiohttp_data, aiohttp_send
from ._base import DirectWebhook, Transport
from ._client import GatewayClient, GatewayHealth, parse_answer
from ._errors import RETRYABLE_STATUS, detail_of, is_retryable, retry_call, status_error
from ._http import (
    Body,
    BodyTooLarge,
    Buffer,
    ConnectionDropped,
    FileBody,
    Form,
    FormPart,
    Handler,
    Multipart,
    Part,
    Request,
    Response,
    lower_headers,
    read_limited,
)

if TYPE_CHECKING:
    from ._server import aiohttp_app, serve_handler

__all__ = [
    "RETRYABLE_STATUS",
    "AiohttpTransport",
    "Body",
    "BodyTooLarge",
    "Buffer",
    "ConnectionDropped",
    "DirectWebhook",
    "FileBody",
    "Form",
    "FormPart",
    "GatewayClient",
    "GatewayHealth",
    "Handler",
    "Multipart",
    "Part",
    "Request",
    "Response",
    "Transport",
    "aiohttp_app",
    "aiohttp_data",
    "aiohttp_send",
    "detail_of",
    "is_retryable",
    "lower_headers",
    "parse_answer",
    "read_limited",
    "retry_call",
    "serve_handler",
    "status_error",
]

_LAZY = frozenset({"aiohttp_app", "serve_handler"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
