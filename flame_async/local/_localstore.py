"""A node's local objects and tags in one project, kept on disk across platform runs.

On the real platform ``PUT /storage/local`` puts objects into the node's own MinIO and tags
into the storage service's database, both kept per project, so a later analysis of the same
project on the same node finds them. Locally they live in the platform's state folder::

    {state_dir}/projects/{project_id}/nodes/{node_id}/index.json
    {state_dir}/projects/{project_id}/nodes/{node_id}/objects/{object_id}

``index.json`` (replaced atomically on every change) records each object's content type, size,
creation time and, once tagged, its filename, and each tag's objects in tagging order. Nothing
is created before the first upload.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import orjson

__all__ = [
    "DEFAULT_FILENAME",
    "MAX_NAME_BYTES",
    "InvalidName",
    "LocalObject",
    "LocalStore",
    "TagError",
    "check_media_type",
    "check_name",
    "check_tag",
]

DEFAULT_FILENAME: Final = "data.bin"
MAX_NAME_BYTES: Final = 255
"""Longest file name (as UTF-8) recorded or written: what most file systems take."""
_MAX_MEDIA_TYPE: Final = 255
_TAG = re.compile(r"[a-z0-9]{1,2}|[a-z0-9][a-z0-9-]{0,30}[a-z0-9]")
_TCHARS = r"[\w!#$%&'*+.^`|~-]+"  # RFC 9110 token characters
_MEDIA_TYPE = re.compile(rf"{_TCHARS}/{_TCHARS}(?:[ \t]*;[\x20-\x7e]*)?", re.ASCII)
_INDEX_VERSION = 1


class TagError(ValueError):
    """A tag is invalid, or tagging conflicts with the object's recorded filename."""


class InvalidName(ValueError):
    """A file name or content type cannot be recorded (the message says why)."""


def check_name(name: str) -> str:
    """``name`` without the characters a file name must not hold (controls, unpaired
    surrogates, separators other than the space).

    Raises:
        InvalidName: What is left is longer than :data:`MAX_NAME_BYTES` as UTF-8.
    """
    if len(name) > 4 * MAX_NAME_BYTES:  # too long whatever is dropped: don't scan it all
        raise InvalidName(
            f"the file name is {len(name)} characters long; at most {MAX_NAME_BYTES} bytes "
            "(as UTF-8) are accepted"
        )
    cleaned = "".join(ch for ch in name if ch.isprintable())
    size = len(cleaned.encode())
    if size > MAX_NAME_BYTES:
        raise InvalidName(
            f"the file name is {size} bytes long as UTF-8; at most {MAX_NAME_BYTES} are "
            "accepted, use a shorter one"
        )
    return cleaned


def check_media_type(value: str) -> str:
    """``value`` if it is a media type such as ``text/csv; charset=utf-8``.

    Raises:
        InvalidName: It is longer than 255 characters or not ``type/subtype[; parameters]``
            in printable ASCII.
    """
    if len(value) > _MAX_MEDIA_TYPE or not _MEDIA_TYPE.fullmatch(value):
        raise InvalidName(
            f"content type {value[:_MAX_MEDIA_TYPE]!r} is not a media type "
            f"(type/subtype[; parameters], printable ASCII, at most {_MAX_MEDIA_TYPE} characters)"
        )
    return value


def check_tag(tag: str) -> None:
    """Check a tag the way the storage service does.

    Raises:
        TagError: The tag is not 1-32 lowercase letters, digits and hyphens with no hyphen at
            either end.
    """
    if not _TAG.fullmatch(tag):
        raise TagError(
            f"Invalid tag `{tag}`: use 1-32 lowercase letters, digits and '-', "
            "not starting or ending with '-'"
        )


@dataclass(slots=True)
class LocalObject:
    """What the index records about one object.

    Attributes:
        content_type: The content type it was uploaded with.
        size: Its size in bytes.
        created_at: When it was uploaded (UTC, ISO 8601).
        filename: The filename it is tagged under; None while untagged.
    """

    content_type: str
    size: int
    created_at: str
    filename: str | None = None


class LocalStore:
    """The local objects and tags of one node in one project.

    Args:
        root: ``{state_dir}/projects/{project_id}/nodes/{node_id}``.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._objects_dir = root / "objects"
        self._lock = anyio.Lock()
        self._objects: dict[str, LocalObject] | None = None
        self._tags: dict[str, list[str]] = {}

    async def objects_dir(self) -> Path:
        """The folder of the object files, created if needed (uploads stream into it)."""
        await anyio.Path(self._objects_dir).mkdir(parents=True, exist_ok=True)
        return self._objects_dir

    async def add(
        self,
        upload: Path,
        *,
        content_type: str,
        size: int,
        tag: str | None = None,
        filename: str | None = None,
    ) -> str:
        """Store the file ``upload`` (in :meth:`objects_dir`) as a new object.

        Args:
            upload: The uploaded file; it is moved, not copied.
            content_type: Served back with the object.
            size: Its size in bytes.
            tag: Tag the object right away (checked by the caller).
            filename: The filename it is tagged under (``data.bin`` when None).

        Returns:
            The new object id.

        Cancellation: once the file is being moved the object is committed regardless.
        """
        objects = await self._index()
        object_id = str(uuid.uuid4())
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await anyio.Path(upload).replace(self._objects_dir / object_id)
                created = datetime.now(UTC).isoformat(timespec="milliseconds")
                objects[object_id] = LocalObject(content_type, size, created)
                if tag is not None:
                    self._link(object_id, tag, filename)
                await self._save()
        return object_id

    async def get(self, object_id: str) -> tuple[LocalObject, Path] | None:
        """The object's record and file, or None if it does not exist."""
        found = (await self._index()).get(object_id)
        path = self._objects_dir / object_id
        if found is None or not await anyio.Path(path).is_file():
            return None
        return found, path

    async def tags(self) -> list[str]:
        """Every tag, oldest first."""
        await self._index()
        return list(self._tags)

    async def tagged(self, tag: str) -> list[tuple[str, str]]:
        """``(filename, object_id)`` of the objects under ``tag``; empty for unknown tags."""
        objects = await self._index()
        return [(objects[i].filename or DEFAULT_FILENAME, i) for i in self._tags.get(tag, [])]

    async def tag(self, object_id: str, tag: str, filename: str | None) -> str:
        """Tag an existing object; returns the filename it is tagged under.

        Raises:
            KeyError: The object does not exist.
            TagError: The tag is invalid, or the object is tagged under another filename
                (``filename`` None means ``data.bin``, as in the storage service).

        Cancellation: once the index is being written the change is committed regardless.
        """
        if await self.get(object_id) is None:
            raise KeyError(object_id)
        check_tag(tag)
        with anyio.CancelScope(shield=True):
            async with self._lock:
                name = self._link(object_id, tag, filename)
                await self._save()
        return name

    def _link(self, object_id: str, tag: str, filename: str | None) -> str:
        assert self._objects is not None
        found = self._objects[object_id]
        name = filename or DEFAULT_FILENAME
        if found.filename is not None and found.filename != name:
            raise TagError(
                f"The object ID {object_id} is already persisted, but with a different "
                f"filename than {name}."
            )
        found.filename = name
        tagged = self._tags.setdefault(tag, [])
        if object_id not in tagged:
            tagged.append(object_id)
        return name

    async def _index(self) -> dict[str, LocalObject]:
        if self._objects is None:
            async with self._lock:
                if self._objects is None:
                    raw = await anyio.to_thread.run_sync(_read_index, self._root / "index.json")
                    self._objects = {
                        object_id: LocalObject(**fields)
                        for object_id, fields in raw.get("objects", {}).items()
                    }
                    self._tags = raw.get("tags", {})
        return self._objects

    async def _save(self) -> None:
        snapshot = orjson.dumps(
            {
                "version": _INDEX_VERSION,
                "objects": {k: asdict(v) for k, v in (self._objects or {}).items()},
                "tags": self._tags,
            },
            option=orjson.OPT_INDENT_2,
        )
        await anyio.to_thread.run_sync(_write_atomically, self._root / "index.json", snapshot)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    if not isinstance(raw, dict) or raw.get("version") != _INDEX_VERSION:
        raise ValueError(f"{path} is not a local-storage index of this version")
    return raw


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
