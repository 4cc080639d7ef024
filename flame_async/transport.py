"""Transports: how a node reaches its gateway, and how the platform reaches the node.

A :class:`Transport` carries the node's exchanges as the project's own :class:`Request` and
:class:`Response` objects. :class:`AiohttpTransport` speaks real HTTP (what runs on the FLAME
platform, and the default); :class:`flame_async.local.MemoryTransport` connects a node to a
:class:`~flame_async.local.LocalPlatform` in the same event loop, without sockets. Pass one to
``FlameSDK(config, transport=...)``; the SDK enters and closes it. Wrapping a transport is how
tests inject faults (answers, resets, delays) on either.
"""

from ._transport import (
    AiohttpTransport,
    Body,
    FileBody,
    Form,
    FormPart,
    Handler,
    Multipart,
    Part,
    Request,
    Response,
    Transport,
)

__all__ = [
    "AiohttpTransport",
    "Body",
    "FileBody",
    "Form",
    "FormPart",
    "Handler",
    "Multipart",
    "Part",
    "Request",
    "Response",
    "Transport",
]
