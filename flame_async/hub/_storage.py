"""The Hub storage service's resources (``hub.storage``): buckets, files, up- and downloads.

Rules:

- Uploads stream: bytes as they are, a path read in chunks by aiohttp (never whole into
  memory), an async byte iterator as it yields. Bytes and paths can be sent again (retries,
  re-authentication); an async iterator cannot.
- Downloads stream in chunks of 1 MiB by default and go to a temporary file next to the
  destination, renamed into place only once complete.
- A bucket arrives as a tar; it is unpacked only if every member is a regular file or a
  directory whose path stays inside the destination (no absolute paths, no ``..``, no links
  or devices), checked for all members before anything is written.
"""

from __future__ import annotations

import dataclasses
import tarfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

import aiohttp
import anyio
import anyio.to_thread

from .._transport import Buffer, Response, retry_call
from ..errors import HubResponseInvalid, InvalidArgument
from ._resource import ReadResource, Ref, Resource, id_of, parse
from ._session import Payload, Session, hub_retryable
from .models import Bucket, BucketCreate, BucketFile, HubModel

__all__ = [
    "CHUNK",
    "BucketFilesResource",
    "BucketsResource",
    "Storage",
    "UploadFile",
    "safe_extract",
]

CHUNK: Final = 1 << 20
"""Download chunk size (1 MiB)."""


@dataclasses.dataclass(frozen=True, slots=True)
class UploadFile:
    """One file to upload.

    Attributes:
        name: The file's name in the bucket (may hold ``/`` for directories).
        content: The bytes, a path to read them from, or an async iterator of chunks (sent
            once: not retried, not re-sent after a refused token).
        content_type: The part's media type.
    """

    name: str
    content: bytes | Path | AsyncIterator[bytes]
    content_type: str = "application/octet-stream"

    @property
    def replayable(self) -> bool:
        """Whether the content can be sent again."""
        return isinstance(self.content, bytes | Path)


def _multipart(files: Sequence[UploadFile]) -> Payload:
    opened: list[IO[bytes]] = []

    def make() -> aiohttp.MultipartWriter:
        writer = aiohttp.MultipartWriter("form-data")
        for index, upload in enumerate(files):
            content: Any = upload.content
            if isinstance(content, Path):
                # aiohttp reads it in chunks (in its executor) and knows its size
                content = open(content, "rb")  # noqa: SIM115 - closed by close() after the try
                opened.append(content)
            part = writer.append(content, {"Content-Type": upload.content_type})
            part.set_content_disposition(
                "form-data", quote_fields=False, name=f"file{index}", filename=upload.name
            )
        return writer

    def close() -> None:
        while opened:
            opened.pop().close()

    return Payload(make, replayable=all(f.replayable for f in files), close=close)


def _check_member(member: tarfile.TarInfo) -> PurePosixPath | None:
    """The member's relative path, None for a directory, or the refusal as an exception."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"{name!r} is an absolute path")
    if ".." in path.parts or "\\" in name:
        raise ValueError(f"{name!r} leaves the destination ('..' or a backslash)")
    if member.issym() or member.islnk():
        raise ValueError(f"{name!r} is a link")
    if member.isdir():
        return None
    if not member.isfile():
        raise ValueError(f"{name!r} is not a regular file (device, FIFO, ...)")
    return path


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Unpack the tar ``archive`` into ``dest`` if every member is safe; the files written.

    Blocking; run it in a worker thread.

    Raises:
        ValueError: A member is an absolute path, leaves ``dest``, is a link or not a regular
            file or directory; nothing is written then.
    """
    written: list[Path] = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        plan = [(m, _check_member(m)) for m in members]
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for member, rel in plan:
            target = (root / (rel if rel is not None else member.name)).resolve()
            if target != root and root not in target.parents:
                raise ValueError(f"{member.name!r} leaves the destination")
            if rel is None:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - isfile() members always have data
                raise ValueError(f"{member.name!r} has no data")
            with source, open(target, "wb") as out:
                while block := source.read(CHUNK):
                    out.write(block)
            written.append(target)
    return written


async def _stream_chunks(
    response: Response, chunk_size: int, *, exact: bool = True
) -> AsyncIterator[bytes]:
    """The body in chunks of ``chunk_size`` bytes (the last one shorter); with ``exact=False``
    in chunks of *at least* ``chunk_size`` as the pieces arrive (one copy less: for writing to
    a file, where the chunk boundaries do not matter)."""
    pending: list[Buffer] = []
    size = 0
    try:
        async for piece in response.iter_chunks():
            pending.append(piece)
            size += len(piece)
            if size < chunk_size:
                continue
            data = b"".join(pending)
            if not exact:
                pending, size = [], 0
                yield data
                continue
            whole = len(data) - len(data) % chunk_size
            rest = data[whole:]
            pending, size = ([rest] if rest else []), len(rest)
            for start in range(0, whole, chunk_size):
                yield data[start : start + chunk_size]
        if pending:
            yield b"".join(pending)
    finally:
        await response.aclose()


async def _download_to(
    session: Session, path: str, dest: Path, *, chunk_size: int, what: str
) -> Path:
    """GET ``path`` on storage into ``dest`` via a temporary file; retried as a whole."""
    dest = Path(dest)
    temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")

    async def attempt() -> Path:
        response = await session.stream("GET", "storage", path)
        try:
            async with await anyio.open_file(temp, "wb") as out:
                async for chunk in _stream_chunks(response, chunk_size, exact=False):
                    await out.write(chunk)
            await anyio.Path(temp).replace(dest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(temp).unlink(missing_ok=True)
            raise
        return dest

    await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
    return await retry_call(session.retry, attempt, retryable=hub_retryable, what=what)


class BucketsResource(Resource[Bucket, BucketCreate, HubModel]):
    """``/buckets`` on storage, with upload, stream (a tar) and download (unpacked)."""

    async def upload(
        self, bucket: Ref, files: Sequence[UploadFile], *, retry_unsafe: bool = False
    ) -> list[BucketFile]:
        """Upload ``files`` into the bucket in one multipart request; the files created.

        Raises:
            InvalidArgument: No files.
            HubRequestInvalid: The Hub refused the upload.
            TransportError: The request failed.

        Cancellation:
            The upload is abandoned; files already stored by the Hub stay.
        """
        if not files:
            raise InvalidArgument("upload() needs at least one file")
        bid = id_of(bucket)
        url = self._url(f"/{bid}/upload")
        answer = await self._session.json(
            "POST",
            "storage",
            f"/buckets/{bid}/upload",
            body=_multipart(files),
            retry_unsafe=retry_unsafe,
            long=True,
        )
        items = answer.get("data") if isinstance(answer, dict) else answer
        if not isinstance(items, list):
            raise HubResponseInvalid(
                "list[BucketFile]", url, [{"loc": ("data",), "msg": "no list"}]
            )
        return [parse(BucketFile, item, url) for item in items]

    async def stream(self, bucket: Ref, *, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        """The bucket as a tar archive, in chunks.

        Raises:
            NotFoundError: There is no such bucket.
            TransportError: The request failed (retried before the first byte only).

        Cancellation:
            Closing the iterator closes the connection.
        """
        response = await self._session.stream("GET", "storage", f"/buckets/{id_of(bucket)}/stream")
        async for chunk in _stream_chunks(response, chunk_size):
            yield chunk

    async def download(self, bucket: Ref, dest: Path) -> list[Path]:
        """Download the bucket's tar and unpack it safely into the directory ``dest``.

        Raises:
            NotFoundError: There is no such bucket.
            HubResponseInvalid: The tar holds a member that is absolute, leaves ``dest``, is
                a link or not a regular file; nothing is unpacked then.
            TransportError: The download failed.
        """
        bid = id_of(bucket)
        dest = Path(dest)
        await anyio.Path(dest).mkdir(parents=True, exist_ok=True)
        archive = dest / f".bucket-{bid}.tar"
        try:
            await _download_to(
                self._session,
                f"/buckets/{bid}/stream",
                archive,
                chunk_size=CHUNK,
                what=f"download of bucket {bid}",
            )
            try:
                return await anyio.to_thread.run_sync(safe_extract, archive, dest)
            except (ValueError, tarfile.TarError) as exc:
                raise HubResponseInvalid(
                    "bucket tar", self._url(f"/{bid}/stream"), [{"loc": (), "msg": str(exc)}]
                ) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(archive).unlink(missing_ok=True)


class BucketFilesResource(ReadResource[BucketFile]):
    """``/bucket-files`` on storage, with stream and download."""

    async def delete(self, ref: Ref, /) -> None:
        """Delete the file.

        Raises:
            NotFoundError: There is no such file.
            TransportError: The request failed.
        """
        await self._session.json("DELETE", "storage", f"/bucket-files/{id_of(ref)}")

    async def stream(self, file: Ref, *, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        """The file's bytes, in chunks of ``chunk_size`` (the last one shorter).

        Raises:
            NotFoundError: There is no such file.
            TransportError: The request failed (retried before the first byte only).

        Cancellation:
            Closing the iterator closes the connection.
        """
        if chunk_size < 1:
            raise InvalidArgument("chunk_size is at least 1 byte")
        path = f"/bucket-files/{id_of(file)}/stream"
        response = await self._session.stream("GET", "storage", path)
        async for chunk in _stream_chunks(response, chunk_size):
            yield chunk

    async def download(self, file: Ref, dest: Path, *, chunk_size: int = CHUNK) -> Path:
        """Download the file to ``dest`` (a temporary file renamed on success); retried as a
        whole on connection failures and 5xx.

        Raises:
            NotFoundError: There is no such file.
            TransportError: The download failed.

        Cancellation:
            The temporary file is removed; ``dest`` is untouched.
        """
        fid = id_of(file)
        return await _download_to(
            self._session,
            f"/bucket-files/{fid}/stream",
            Path(dest),
            chunk_size=chunk_size,
            what=f"download of file {fid}",
        )


class Storage:
    """The resources of the Hub's storage service.

    Attributes:
        buckets: ``/buckets`` (+ ``upload``, ``stream``, ``download``).
        bucket_files: ``/bucket-files`` (+ ``stream``, ``download``).
    """

    def __init__(self, session: Session) -> None:
        self.buckets = BucketsResource(
            session, "storage", "/buckets", Bucket, BucketCreate, HubModel
        )
        self.bucket_files = BucketFilesResource(session, "storage", "/bucket-files", BucketFile)
