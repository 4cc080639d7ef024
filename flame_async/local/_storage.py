"""The storage service (PROTOCOL.md §3.2, the current node-storage-service) behind every gateway.

nginx forwards ``/storage/(final|local|intermediate)…`` with the ``/storage`` prefix stripped,
so URLs in answers are built from the request's ``Host`` and the service-local path, exactly
like the real service. Every route needs a bearer token of the analysis (401 ``Not
authenticated`` without one, 403 ``JWT is malformed`` for a bad one); the node is the one whose
gateway was called. Errors are FastAPI-style ``{"detail": ...}``.

* ``PUT /final`` writes the file to ``{final_dir}/{node_id}/{filename}`` (a later upload with
  the same filename replaces it, like a bucket). ``PUT /final/localdp`` adds Laplace noise with
  scale ``sensitivity / epsilon`` to the uploaded number and stores it as text.
* ``PUT /intermediate`` keeps the file for one receiver in the platform's temporary folder;
  ``GET /intermediate/{id}?remote_node_id={uploader}`` hands it to that receiver once, then
  deletes it. A read the client does not take in full leaves the object in place.
  A refused read (wrong receiver or sender: 400, as when the real service cannot decrypt)
  does not consume the object; ``HEAD`` is not offered, so nothing but a full read does.
* ``/local…`` stores objects and tags in the state folder per project and node, since every
  real node has its own object store and storage database (:mod:`._localstore`).

Uploads stream to disk part by part and downloads stream from disk, so memory stays flat
whatever the size.

Who may do what: a token works only on its own node's gateway (403 naming both nodes
otherwise), so a node writes its own final results, uploads intermediate objects as itself and
reads and tags only its own local objects. An intermediate object is read only by the receiver
it was uploaded for (403 for any other node), naming its uploader.

Limits, each refusal naming it: an upload is at most ``max_upload_bytes`` (4 GiB by default,
413); a form has at most 16 parts (400), a text field at most 4 KiB (413); a file name (of a
final result, or recorded with a tag) at most 255 bytes as UTF-8 after the path and control
characters are dropped (400); a part's content type a media type of at most 255 characters
(400). Whatever the client sends that cannot be parsed as a form is a 400, never a 500.
"""

from __future__ import annotations

import math
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
from yarl import URL

from .._transport import Buffer, FileBody, Form, FormPart, Response
from .._wire import TagAnswer, TagEntry, TaggedAnswer, TaggedEntry, TagsAnswer, UploadAnswer
from ._core import PlatformCore
from ._http import (
    Call,
    Route,
    RouteHandler,
    detail_response,
    json_response,
    require_bearer,
    shown,
)
from ._localstore import (
    InvalidName,
    LocalStore,
    TagError,
    check_media_type,
    check_name,
    check_tag,
)
from ._node import LocalNode

__all__ = ["StorageService", "laplace_noise"]

_CHUNK: Final = 1 << 20  # bytes per disk write
_FIELD_LIMIT: Final = 4 * 1024
_MAX_PARTS: Final = 16
_NUMBER_LIMIT: Final = 1024
_OCTET_STREAM: Final = "application/octet-stream"
_FALLBACK_FILENAME: Final = "result.bin"
DEFAULT_MAX_UPLOAD_BYTES: Final = 4 << 30
"""The largest upload the storage service takes by default (4 GiB)."""


def laplace_noise(rng: random.Random, scale: float) -> float:
    """A sample of the Laplace distribution with mean 0 and ``scale`` (``b``).

    The difference of two independent exponential samples with mean ``b`` is Laplace(0, b).

    Args:
        rng: The source of randomness (the service uses a :class:`secrets.SystemRandom`).
        scale: ``b`` > 0.
    """
    rate = 1.0 / scale
    return rng.expovariate(rate) - rng.expovariate(rate)


class _Refused(Exception):
    """An error answer, raised from deep inside a route."""

    def __init__(self, status: int, detail: Any) -> None:
        self.response = detail_response(status, detail)
        super().__init__(detail)


def _answers(handler: RouteHandler) -> RouteHandler:
    """``handler`` with :class:`_Refused` turned into its answer."""

    async def answered(call: Call) -> Response:
        try:
            return await handler(call)
        except _Refused as refused:
            return refused.response

    return answered


def _unprocessable(where: str, name: str, kind: str, message: str, value: Any) -> _Refused:
    """422 as FastAPI words it: ``{"detail": [{"type", "loc", "msg", "input"}]}``."""
    detail = [{"type": kind, "loc": [where, name], "msg": message, "input": shown(value)}]
    return _Refused(422, detail)


def _missing(where: str, name: str) -> _Refused:
    return _unprocessable(where, name, "missing", "Field required", None)


def _object_id(value: str, where: str = "path", name: str = "object_id") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _unprocessable(
            where, name, "uuid_parsing", "Input should be a valid UUID", value
        ) from None


def _positive(fields: dict[str, str], name: str) -> float:
    if (raw := fields.get(name)) is None:
        raise _missing("body", name)
    try:
        value = float(raw)
    except ValueError:
        raise _unprocessable(
            "body", name, "float_parsing", "Input should be a valid number", raw
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise _unprocessable("body", name, "greater_than", "Input should be greater than 0", raw)
    return value


def _url(call: Call, path: str, **query: str) -> str:
    return str(URL.build(scheme="http", authority=call.host, path=path, query=query or None))


def _safe_filename(name: str | None) -> str:
    """The last path component of ``name`` without control characters or leading dots.

    Raises:
        _Refused: What is left is longer than 255 bytes as UTF-8 (400).
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".")
    return _checked_name(base) or _FALLBACK_FILENAME


def _checked_name(name: str) -> str:
    try:
        return check_name(name)
    except InvalidName as exc:
        raise _Refused(400, str(exc)) from None


def _malformed(exc: Exception) -> _Refused:
    return _Refused(400, f"the multipart body is malformed: {exc or type(exc).__name__}")


async def _guarded_parts(form: Form) -> AsyncIterator[FormPart]:
    """The parts of ``form``; whatever parsing them raises becomes a 400.

    Only the client's bytes can make a form parser fail (aiohttp's parser raises its own
    errors, not only ``ValueError``, e.g. for control characters in a part header or a header
    line over 8190 bytes), so every error of the parser is the client's.
    """
    parts = aiter(form)
    while True:
        try:
            part = await anext(parts)
        except StopAsyncIteration:
            return
        except _Refused:
            raise
        except Exception as exc:  # see above: the parser's errors are the client's
            raise _malformed(exc) from exc
        yield part


async def _guarded_chunks(part: FormPart) -> AsyncIterator[Buffer]:
    """The content of ``part``; whatever reading it raises becomes a 400 (see above)."""
    chunks = aiter(part.chunks())
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except Exception as exc:  # a part's decoding fails on the client's bytes
            raise _malformed(exc) from exc
        yield chunk


@dataclass(slots=True)
class _Upload:
    path: Path  # a temporary file next to where the object will live
    filename: str | None
    content_type: str
    size: int


@dataclass(slots=True)
class _Form:
    fields: dict[str, str]
    upload: _Upload | None

    def file(self) -> _Upload:
        if self.upload is None:
            raise _missing("body", "file")
        return self.upload

    def discard(self) -> None:
        """Remove the upload's temporary file unless it was moved to its place."""
        if self.upload is not None:
            self.upload.path.unlink(missing_ok=True)


async def _receive(call: Call, directory: Path, max_upload: int) -> _Form:
    """Read a multipart form, streaming the part ``file`` into ``directory``.

    Raises:
        _Refused: The body is not a multipart form (422), malformed or has too many parts or
            a second file (400), a field or the file is too large (413), or the file's content
            type is not a media type (400).

    Cancellation: the partial upload is removed.
    """
    body = call.request.body
    if not isinstance(body, Form):
        raise _missing("body", "file")
    declared = call.request.content_length
    if declared is not None and declared > max_upload + _MAX_PARTS * _FIELD_LIMIT:
        raise _Refused(413, f"the body is {declared} bytes; an upload is at most {max_upload}")
    form = _Form({}, None)
    try:
        await _read_form(body, form, directory, max_upload)
    except BaseException:
        form.discard()
        raise
    return form


async def _read_form(body: Form, form: _Form, directory: Path, max_upload: int) -> None:
    """Fill ``form`` from ``body`` (see :func:`_receive`)."""
    count = 0
    async for part in _guarded_parts(body):
        count += 1
        if count > _MAX_PARTS:
            raise _Refused(400, f"the form has more than {_MAX_PARTS} parts")
        if part.name == "file" and form.upload is None:
            form.upload = await _save(part, directory, max_upload)
        elif part.filename is not None:
            raise _Refused(
                400,
                f"the form has a second file part ({shown(part.name)!r}); "
                "upload one file, in the part 'file'",
            )
        else:  # read even without a name: an unnamed part is bounded like any field
            value = await _read_field(part)
            if part.name:
                form.fields[part.name] = value


async def _save(part: FormPart, directory: Path, max_upload: int) -> _Upload:
    content_type = part.content_type or _OCTET_STREAM
    try:
        check_media_type(content_type)
    except InvalidName as exc:
        raise _Refused(400, f"the file part's {exc}") from None
    path = directory / f".{uuid.uuid4().hex}.part"
    try:
        async with await anyio.open_file(path, "xb") as file:
            size = await _write(part, file, max_upload)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return _Upload(path, part.filename, content_type, size)


async def _write(part: FormPart, file: anyio.AsyncFile[bytes], max_upload: int) -> int:
    """Write the part's content to ``file`` as it is read (no joining, no extra copy).

    Raises:
        _Refused: It is larger than ``max_upload`` (413) or cannot be read (400).
    """
    size = 0
    async for chunk in _guarded_chunks(part):
        size += len(chunk)
        if size > max_upload:
            raise _Refused(
                413, f"the file is larger than {max_upload} bytes, the most one upload takes"
            )
        await file.write(chunk)
    return size


async def _read_field(part: FormPart) -> str:
    data = bytearray()
    async for chunk in _guarded_chunks(part):
        data += chunk
        if len(data) > _FIELD_LIMIT:
            raise _Refused(
                413,
                f"the form field {shown(part.name or '')!r} is larger than {_FIELD_LIMIT} bytes, "
                "the most a text field takes",
            )
    charset = "utf-8"
    if "charset=" in part.content_type:
        charset = part.content_type.split("charset=", 1)[1].split(";", 1)[0].strip() or "utf-8"
    try:
        return data.decode(charset)
    except (UnicodeError, LookupError):
        raise _Refused(
            400, f"the form field {shown(part.name)!r} is not text in {shown(charset)}"
        ) from None


def _read_number(path: Path) -> float | None:
    if path.stat().st_size > _NUMBER_LIMIT:
        return None
    try:
        value = float(path.read_bytes().decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _write_text(path: Path, text: str, target: Path) -> None:
    path.write_text(text, encoding="utf-8")
    path.replace(target)


@dataclass(frozen=True, slots=True)
class _Intermediate:
    path: Path
    uploader: str
    receiver: str


class StorageService:
    """The storage service of every node.

    Args:
        core: The running platform.
        work_dir: The platform's temporary folder; intermediate objects live in
            ``work_dir/intermediate``.
        final_dir: Final results go to ``final_dir/{node_id}/``.
        state_dir: Root of the persistent local storage (see :mod:`._localstore`).
        max_upload_bytes: The largest file one upload may carry (413 beyond).
    """

    prefixes = ("/storage",)

    def __init__(
        self,
        core: PlatformCore,
        *,
        work_dir: Path,
        final_dir: Path,
        state_dir: Path,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self._core = core
        self.max_upload_bytes = max_upload_bytes
        self._intermediate_dir = work_dir / "intermediate"
        self._final_dir = final_dir
        project = state_dir / "projects" / core.project_id / "nodes"
        self._local = {node_id: LocalStore(project / node_id) for node_id in core.nodes}
        self._intermediates: dict[str, _Intermediate] = {}
        self._finals: dict[Path, str] = {}  # file -> node id, in writing order
        self._rng = secrets.SystemRandom()

    def final_results(self, node_id: str | None = None) -> list[Path]:
        """The files written by ``PUT /final`` (of ``node_id``, or of every node), oldest first.

        Raises:
            KeyError: There is no such node.
        """
        if node_id is not None and node_id not in self._core.nodes:
            raise KeyError(node_id)
        return [path for path, owner in self._finals.items() if node_id in (None, owner)]

    def routes(self, node: LocalNode) -> Iterable[Route]:
        """The storage routes of ``node`` under ``/storage``."""
        api = _NodeStorage(self, node)
        core = self._core

        def authed(handler: RouteHandler) -> RouteHandler:
            return require_bearer(
                _answers(handler),
                core.issuer,
                core.analysis_id,
                node_id=node.node_id,
                rejected=(403, "JWT is malformed"),
            )

        return [
            Route("PUT", "/storage/final", authed(api.put_final)),
            Route("PUT", "/storage/final/localdp", authed(api.put_final_localdp)),
            Route("PUT", "/storage/intermediate", authed(api.put_intermediate)),
            Route("GET", "/storage/intermediate/{object_id}", authed(api.get_intermediate)),
            Route("PUT", "/storage/local", authed(api.put_local)),
            Route("GET", "/storage/local/tags", authed(api.get_tags)),
            Route("POST", "/storage/local/tags", authed(api.post_tag)),
            Route("GET", "/storage/local/tags/{tag}", authed(api.get_tagged)),
            Route("GET", "/storage/local/{object_id}", authed(api.get_local)),
        ]


class _NodeStorage:
    """The storage routes as one node sees them."""

    __slots__ = ("_local", "_node_id", "_nodes", "_service")

    def __init__(self, service: StorageService, node: LocalNode) -> None:
        self._service = service
        self._node_id = node.node_id
        self._nodes = service._core.nodes
        self._local = service._local[node.node_id]

    # -- final -----------------------------------------------------------------------------

    async def _final_form(self, call: Call) -> tuple[_Form, Path]:
        directory = self._service._final_dir / self._node_id
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
        return await _receive(call, directory, self._service.max_upload_bytes), directory

    async def put_final(self, call: Call) -> Response:
        form, directory = await self._final_form(call)
        try:
            upload = form.file()
            target = directory / _safe_filename(upload.filename)
            await anyio.Path(upload.path).replace(target)
        finally:
            form.discard()
        self._service._finals[target] = self._node_id
        return Response(204)

    async def put_final_localdp(self, call: Call) -> Response:
        form, directory = await self._final_form(call)
        try:
            upload = form.file()
            epsilon = _positive(form.fields, "epsilon")
            sensitivity = _positive(form.fields, "sensitivity")
            scale = sensitivity / epsilon
            if not (math.isfinite(scale) and scale > 0):
                raise _Refused(
                    422,
                    f"sensitivity / epsilon = {scale!r} is no usable noise scale; choose values "
                    "whose ratio is a finite positive number",
                )
            value = await anyio.to_thread.run_sync(_read_number, upload.path)
            if value is None:
                raise _Refused(400, "The uploaded file does not contain a number")
            noisy = value + laplace_noise(self._service._rng, scale)
            target = directory / _safe_filename(upload.filename)
            await anyio.to_thread.run_sync(_write_text, upload.path, repr(noisy), target)
        finally:
            form.discard()
        self._service._finals[target] = self._node_id
        return Response(204)

    # -- intermediate ----------------------------------------------------------------------

    async def put_intermediate(self, call: Call) -> Response:
        directory = self._service._intermediate_dir
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
        form = await _receive(call, directory, self._service.max_upload_bytes)
        try:
            upload = form.file()
            receiver = form.fields.get("remote_node_id")
            if receiver is None:
                raise _missing("body", "remote_node_id")
            if receiver not in self._nodes:
                raise _Refused(404, f"Remote node with ID {shown(receiver)} does not exist.")
            object_id = str(uuid.uuid4())
            path = directory / object_id
            await anyio.Path(upload.path).replace(path)
        finally:
            form.discard()
        self._service._intermediates[object_id] = _Intermediate(path, self._node_id, receiver)
        url = _url(call, f"/intermediate/{object_id}", remote_node_id=self._node_id)
        return json_response(UploadAnswer(url=url, object_id=object_id).wire())

    async def get_intermediate(self, call: Call) -> Response:
        """Hand the object to its receiver once, then delete it.

        Only the receiver it was uploaded for reads it (403 for another node), naming its
        uploader (400 otherwise, as when the real service cannot decrypt it).

        Cancellation: an object not sent in full stays for another read.
        """
        object_id = _object_id(call.params["object_id"])
        sender = call.request.query.get("remote_node_id")
        if sender is None:
            raise _missing("query", "remote_node_id")
        objects = self._service._intermediates
        found = objects.get(object_id)
        if found is None:
            raise _Refused(404, f"Object with ID {object_id} does not exist")
        if sender not in self._nodes:
            raise _Refused(404, f"Remote node with ID {shown(sender)} does not exist.")
        if self._node_id != found.receiver:
            raise _Refused(
                403,
                f"object {object_id} was uploaded for {found.receiver}, not for "
                f"{self._node_id}: only its receiver reads it, on its own gateway",
            )
        if sender != found.uploader:
            raise _Refused(
                400,
                f"Failed to decrypt file with ID {object_id} which was encrypted by node {sender}.",
            )
        del objects[object_id]  # taken: a concurrent second read gets 404

        async def delete() -> None:
            await anyio.Path(found.path).unlink(missing_ok=True)

        def restore() -> None:  # not read in full: the object stays for another read
            objects.setdefault(object_id, found)

        return Response(
            200,
            FileBody(found.path, on_complete=delete, on_abort=restore),
            headers={"content-type": _OCTET_STREAM},
            content_length=found.path.stat().st_size,
        )

    # -- local -----------------------------------------------------------------------------

    async def put_local(self, call: Call) -> Response:
        form = await _receive(call, await self._local.objects_dir(), self._service.max_upload_bytes)
        try:
            upload = form.file()
            tag = form.fields.get("tag")
            if tag is not None:
                _checked_tag(tag)
            filename = None if upload.filename is None else _checked_name(upload.filename)
            object_id = await self._local.add(
                upload.path,
                content_type=upload.content_type,
                size=upload.size,
                tag=tag,
                filename=filename or None,
            )
        finally:
            form.discard()
        url = _url(call, f"/local/{object_id}")
        return json_response(UploadAnswer(url=url, object_id=object_id).wire())

    async def get_local(self, call: Call) -> Response:
        object_id = _object_id(call.params["object_id"])
        found = await self._local.get(object_id)
        if found is None:
            raise _Refused(404, f"Object with ID {object_id} does not exist")
        record, path = found
        try:  # the index may come from an earlier version: never send a header it spoils
            content_type = check_media_type(record.content_type)
        except InvalidName:
            content_type = _OCTET_STREAM
        return Response(
            200,
            FileBody(path),
            headers={"content-type": content_type},
            content_length=record.size,
        )

    async def get_tags(self, call: Call) -> Response:
        tags = [
            TagEntry(name=tag, url=_url(call, f"/local/tags/{tag}"))
            for tag in await self._local.tags()
        ]
        return json_response(TagsAnswer(tags=tags).wire())

    async def get_tagged(self, call: Call) -> Response:
        results = [
            TaggedEntry(filename=filename, url=_url(call, f"/local/{object_id}"))
            for filename, object_id in await self._local.tagged(call.params["tag"])
        ]
        return json_response(TaggedAnswer(results=results).wire())

    async def post_tag(self, call: Call) -> Response:
        query = call.request.query
        tag = query.get("tag_name")
        if tag is None:
            raise _missing("query", "tag_name")
        if (raw_id := query.get("object_id")) is None:
            raise _missing("query", "object_id")
        object_id = _object_id(raw_id, "query")
        wanted = query.get("filename")
        if wanted is not None:
            wanted = _checked_name(wanted) or None
        try:
            filename = await self._local.tag(object_id, tag, wanted)
        except KeyError:
            raise _Refused(404, f"Object with ID {object_id} does not exist") from None
        except TagError as exc:
            raise _Refused(400, str(exc)) from None
        return json_response(
            TagAnswer(filename=filename, url=_url(call, f"/local/{object_id}")).wire()
        )


def _checked_tag(tag: str) -> None:
    try:
        check_tag(tag)
    except TagError as exc:
        raise _Refused(400, str(exc)) from None
