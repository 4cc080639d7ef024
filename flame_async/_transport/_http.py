"""The project's own HTTP exchange types: what a transport carries, whatever carries it.

A :class:`Request` goes to a node gateway (or, inbound, to a node API or a local platform
service); a :class:`Response` comes back with its body as an async byte iterator. Bodies are
``bytes``, an async iterable of byte chunks, a :class:`Multipart` form or, in answers, a
:class:`FileBody`. Nothing here imports aiohttp: the aiohttp transport translates these to and
from the wire, the in-memory transport hands them over as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode

import anyio

__all__ = [
    "Body",
    "BodyTooLarge",
    "FileBody",
    "Form",
    "FormPart",
    "Handler",
    "Multipart",
    "Part",
    "Request",
    "Response",
    "lower_headers",
    "read_limited",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""A chunk of bytes as it may be written (views avoid copies of large arrays)."""

_FILE_CHUNK: Final = 1 << 20


def lower_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """``headers`` for lookups by lower-case name (the one spelling used in the project).

    A plain ``dict`` is copied with its names lower-cased; any other mapping (aiohttp's
    case-insensitive ones) is used as it is, without copying.
    """
    if not headers:
        return {}
    if type(headers) is dict:
        return {k.lower(): v for k, v in headers.items()}
    return headers


class FormPart(Protocol):
    """One part of a multipart form as a reader sees it (whoever parsed it, or nobody)."""

    @property
    def name(self) -> str | None:
        """The form field name."""
        ...

    @property
    def filename(self) -> str | None:
        """The file name, for file parts."""
        ...

    @property
    def content_type(self) -> str:
        """The part's media type."""
        ...

    def chunks(self) -> AsyncIterator[Buffer]:
        """The part's content in chunks (read once)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """One part of a :class:`Multipart` form this side builds.

    Attributes:
        name: The form field name.
        data: The content as one or more buffers (written as they are, no joining).
        filename: Set for file parts.
        content_type: The part's media type.
    """

    name: str
    data: Sequence[Buffer]
    filename: str | None = None
    content_type: str = "text/plain; charset=utf-8"

    @property
    def size(self) -> int:
        """The content's size in bytes."""
        return sum(memoryview(b).nbytes for b in self.data)

    async def chunks(self) -> AsyncIterator[Buffer]:
        """The buffers, in order."""
        for buffer in self.data:
            yield buffer


class Form:
    """A ``multipart/form-data`` body as its reader sees it: parts, one after the other.

    Inbound, the aiohttp adapter parses the wire into one; the in-memory transport passes the
    sender's :class:`Multipart` (which is one) as it is.
    """

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[FormPart]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, slots=True)
class Multipart(Form):
    """A ``multipart/form-data`` body, kept structured until a transport needs bytes.

    The aiohttp transport encodes it on the wire; the in-memory transport hands it to the
    service, which reads the same parts without any encoding or parsing in between.
    """

    parts: tuple[Part, ...]

    @classmethod
    def form(
        cls,
        fields: Mapping[str, str],
        *,
        file: Sequence[Buffer],
        filename: str,
        content_type: str = "application/octet-stream",
        file_field: str = "file",
    ) -> Multipart:
        """Text fields followed by one file part."""
        parts = [Part(name, (value.encode(),)) for name, value in fields.items()]
        parts.append(Part(file_field, file, filename=filename, content_type=content_type))
        return cls(tuple(parts))

    def __aiter__(self) -> AsyncIterator[FormPart]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[FormPart]:
        for part in self.parts:
            yield part


@dataclasses.dataclass(frozen=True, slots=True)
class FileBody:
    """An answer's body that is a file on disk.

    Attributes:
        path: The file.
        on_complete: Called once the whole file was delivered.
        on_abort: Called instead when the delivery did not complete.
    """

    path: Path
    on_complete: Callable[[], Awaitable[None]] | None = None
    on_abort: Callable[[], None] | None = None


Body: TypeAlias = bytes | AsyncIterable[Buffer] | Form | None
"""A request body."""


@dataclasses.dataclass(slots=True)
class Request:
    """One HTTP request, outbound (to the node gateway) or inbound (to a handler).

    Attributes:
        method: The HTTP method, upper case.
        path: The path as sent on the wire (percent-encoded), starting with ``/``, no query.
        query_string: The query as sent on the wire (percent-encoded, without ``?``); a FHIR
            search, for one, travels verbatim. :attr:`query` has it decoded.
        headers: Header fields; look them up by lower-case name (inbound they may be a
            case-insensitive mapping, outbound a dict with lower-case names).
        body: The body.
        service: Which node service this is for (named in errors), outbound only.
        timeout: Seconds for the whole exchange; None for no limit (outbound only).
        connect_timeout: Seconds to get a connection; None for no limit (outbound only).
    """

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: Body = None
    service: str = "gateway"
    timeout: float | None = None
    connect_timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or "?" in self.path:
            raise ValueError(f"a request path starts with '/' and has no query: {self.path!r}")

    @classmethod
    def to(
        cls,
        method: str,
        target: str,
        params: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Request:
        """A request for ``target`` (a path, optionally with a verbatim ``?query``), with
        ``params`` encoded and appended to the query."""
        path, _, query_string = target.partition("?")
        if params:
            extra = urlencode(params)
            query_string = f"{query_string}&{extra}" if query_string else extra
        return cls(method, path, query_string=query_string, **fields)

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, decoded (the first value of a repeated name)."""
        if not self.query_string:
            return {}
        found: dict[str, str] = {}
        for name, value in parse_qsl(self.query_string, keep_blank_values=True):
            found.setdefault(name, value)
        return found

    @property
    def decoded_path(self) -> str:
        """The path with percent-escapes decoded (what routes are matched against)."""
        return unquote(self.path) if "%" in self.path else self.path

    @property
    def content_type(self) -> str:
        """The media type of the body, without parameters, lower case ('' when absent)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        """The declared body size, when there is one."""
        if isinstance(self.body, bytes):
            return len(self.body)
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None

    def __repr__(self) -> str:
        # never the headers: they carry the bearer token and the data proxy's apikey
        return f"Request({self.method} {self.path}, service={self.service!r})"

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body as bytes.

        Raises:
            BodyTooLarge: The body is longer than ``limit`` bytes.
            TypeError: The body is a :class:`Form` (read its parts instead).
        """
        return await read_limited(self.body, limit)


class Response:
    """One HTTP answer; its body is read once, as bytes or in chunks.

    On the client side the transport fills it and maps every failure while reading to a
    :class:`~flame_async.errors.TransportError`. Handlers build it with ``bytes``, an async
    iterable of chunks or a :class:`FileBody`.

    Args:
        status: The HTTP status.
        body: The body.
        headers: Header fields, looked up by lower-case name (see :func:`lower_headers`).
        content_length: The body size when known (taken from ``bytes`` bodies automatically).
        on_close: Called once when the response is closed (e.g. to release a connection).
    """

    __slots__ = (
        "_closed",
        "_on_close",
        "_started",
        "body",
        "content_length",
        "headers",
        "status",
    )

    def __init__(
        self,
        status: int,
        body: bytes | AsyncIterable[Buffer] | FileBody = b"",
        *,
        headers: Mapping[str, str] | None = None,
        content_length: int | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = lower_headers(headers)
        if content_length is None and isinstance(body, bytes):
            content_length = len(body)
        self.content_length = content_length
        self._on_close = on_close
        self._closed = False
        self._started = False

    def __repr__(self) -> str:
        return f"<Response {self.status}>"

    @property
    def content_type(self) -> str:
        """The media type of the body, without parameters, lower case ('' when absent)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def iter_chunks(self) -> AsyncIterator[Buffer]:
        """The body in chunks as they come.

        Raises:
            TransportError: Reading failed (the transport maps its errors).
        """
        body = self.body
        self._started = True
        if isinstance(body, bytes):
            if body:
                yield body
        elif isinstance(body, FileBody):
            completed = False
            try:
                async with await anyio.open_file(body.path, "rb") as file:
                    while data := await file.read(_FILE_CHUNK):
                        yield data
                completed = True
            finally:
                if completed and body.on_complete is not None:
                    await body.on_complete()
                elif not completed and body.on_abort is not None:
                    body.on_abort()
        else:
            async for chunk in body:
                yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body.

        Raises:
            BodyTooLarge: It is longer than ``limit`` bytes.
            TransportError: Reading failed.
        """
        body = self.body
        if isinstance(body, bytes) and type(self).iter_chunks is Response.iter_chunks:
            self._started = True  # already in memory: no chunk iterator needed
            if limit is not None and len(body) > limit:
                raise BodyTooLarge(limit)
            return body
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.iter_chunks():
            size += len(chunk)
            if limit is not None and size > limit:
                raise BodyTooLarge(limit)
            chunks.append(bytes(chunk))
        return b"".join(chunks)

    def mark_consumed(self) -> None:
        """Record that the body was delivered by other means (e.g. ``sendfile``): closing it
        then reports nothing."""
        self._started = True

    async def aclose(self) -> None:
        """Release what the response holds; an unread :class:`FileBody` counts as aborted."""
        if self._closed:
            return
        self._closed = True
        body = self.body
        if isinstance(body, FileBody) and not self._started and body.on_abort is not None:
            body.on_abort()  # never delivered (iter_chunks() reports it when it ran)
        if self._on_close is not None:
            await self._on_close()


Handler: TypeAlias = Callable[[Request], Awaitable[Response]]
"""Something that answers requests: a node API, a local platform gateway."""


class ConnectionDropped(Exception):
    """Raised by a handler: drop the connection without answering, as a crashing server or a
    reset does. Over HTTP the client sees the connection close; in memory, a
    :class:`~flame_async.errors.ServiceUnavailable`. (The local platform's chaos mode uses it.)
    """


class BodyTooLarge(Exception):
    """A body is longer than the reader's limit (an HTTP 413 in the making)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the body is larger than {limit} bytes")


async def read_limited(body: Body, limit: int | None = None) -> bytes:
    """Collect a request body into bytes.

    Raises:
        BodyTooLarge: The body is longer than ``limit``.
        TypeError: The body is a :class:`Form`.
    """
    if body is None:
        return b""
    if isinstance(body, bytes):
        if limit is not None and len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    if isinstance(body, Form):
        raise TypeError("a multipart body is read part by part, not as bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(limit)
        chunks.append(bytes(chunk))
    return b"".join(chunks)
