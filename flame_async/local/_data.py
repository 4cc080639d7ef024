"""Data access (PROTOCOL.md §4): the hub-adapter listing and the Kong proxy over a data folder.

A node's data comes from ``DIR/<node_id>/`` of the platform's ``data_dir``: ``fhir/`` holds FHIR
resources as ``.json`` (a resource, a Bundle whose entries are loaded, or a JSON array of
either) or ``.ndjson`` (one per line), ``s3/`` any files (sub-folders are key prefixes). A node
with ``fhir/`` gets the source ``{node_id}-fhir``, with ``s3/`` the source ``{node_id}-s3``.
FHIR files are read once when the platform starts; S3 is served straight from disk.

Behind each node gateway:

* ``GET /hub-adapter/kong/datastore/{PROJECT_ID}`` (bearer token) lists the node's sources as
  Kong Service objects. Like the current hub adapter, a node without sources, or another id
  than the project's, answers 404 with ``detail = {"message", "service": "Kong",
  "status_code": 404}``.
* ``/kong/{name}/fhir/{query}`` and ``/kong/{name}/s3[/{key}]`` need the header ``apikey`` =
  the node's ``DATA_SOURCE_TOKEN``, like Kong's key-auth (401 without or with a wrong key, 404
  for a route that does not exist). The FHIR search is described in :mod:`._fhir`. S3 lists
  every key in one ``ListBucketResult`` (``prefix`` filters; other listing parameters such as
  ``delimiter`` or ``max-keys`` are ignored) and streams objects.

Nothing outside a node's ``fhir/`` or ``s3/`` folder is ever served: a FHIR file that is a
symbolic link to somewhere else stops the platform at start (:class:`DataFolderError`), and an
S3 key that resolves outside the folder is neither listed nor served. Symbolic links to folders
are not followed when listing. The listing needs the token of the node whose gateway is called
(403 for another node's), the Kong routes that node's own ``apikey``.
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import anyio
import orjson
from yarl import URL

from .._transport import FileBody, Response
from .._wire import DatastoreList, KongService
from ..errors import InvalidArgument
from ._core import PlatformCore
from ._fhir import FhirSearchError, FhirStore, operation_outcome
from ._http import Call, Route, json_response, require_bearer
from ._node import LocalNode

__all__ = ["DataFolderError", "DataService", "NodeData", "load_data_folder"]

logger = logging.getLogger("flame_async.local.data")

SourceKind = Literal["fhir", "s3"]

_NAMESPACE: Final = uuid.UUID("5b0d1c52-0f6e-4d4e-9a51-6c6f63616c21")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_RESOURCE_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_FHIR_JSON = "application/fhir+json"
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_TIMEOUT_MS = 60_000
_MAX_KEY = 1024  # S3's own limit on a key, in bytes


class DataFolderError(InvalidArgument):
    """The platform's data folder cannot be served; the message names the file."""


@dataclass(frozen=True, slots=True)
class NodeData:
    """The data sources of one node.

    Attributes:
        fhir: The node's FHIR resources, if it has a ``fhir/`` folder.
        s3: The node's resolved ``s3/`` folder, if it has one.
    """

    fhir: FhirStore | None = None
    s3: Path | None = None


# -- loading ---------------------------------------------------------------------------------


def load_data_folder(data_dir: Path, node_ids: Sequence[str]) -> dict[str, NodeData]:
    """Read the data folder for the nodes ``node_ids`` (blocking: run it in a thread).

    Folders of other nodes are ignored with a warning.

    Raises:
        DataFolderError: The folder is missing, or a FHIR file is not valid JSON or holds
            something that is not a FHIR resource, or two resources share type and id.
    """
    if not data_dir.is_dir():
        raise DataFolderError(f"the data folder {data_dir} does not exist or is not a folder")
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name not in node_ids and not child.name.startswith("."):
            logger.warning("data folder %s belongs to no node of this platform, ignored", child)
    data: dict[str, NodeData] = {}
    for node_id in node_ids:
        fhir, s3 = data_dir / node_id / "fhir", data_dir / node_id / "s3"
        for folder in (fhir, s3):
            if folder.exists() and not folder.is_dir():
                raise DataFolderError(f"{folder} must be a folder")
        data[node_id] = NodeData(
            fhir=_load_fhir(fhir) if fhir.is_dir() else None,
            s3=s3.resolve() if s3.is_dir() else None,
        )
    return data


def _files_within(root: Path) -> tuple[list[tuple[str, Path]], list[Path]]:
    """The regular files under ``root`` (blocking), and the links that lead out of it.

    Symbolic links to files are followed when their target is inside ``root`` (resolved);
    symbolic links to folders are not followed.

    Returns:
        ``(key, path)`` of each file inside, ``key`` its ``/``-separated path below ``root``
        (sorted by key), and the paths below ``root`` that resolve outside it.
    """
    real_root = root.resolve()
    inside: list[tuple[str, Path]] = []
    outside: list[Path] = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            try:
                real = path.resolve()
            except (OSError, RuntimeError):  # a loop of links
                continue
            if not real.is_relative_to(real_root):
                outside.append(path)
            elif real.is_file():
                inside.append((path.relative_to(root).as_posix(), path))
    inside.sort()
    return inside, outside


def _load_fhir(folder: Path) -> FhirStore:
    resources: list[dict[str, Any]] = []
    origin: dict[tuple[str, str], str] = {}
    found, outside = _files_within(folder)
    if outside:
        raise DataFolderError(
            f"{outside[0]} is a link to {outside[0].resolve()}, outside the node's FHIR folder "
            f"{folder}: the platform serves only what is inside it; copy the file there"
        )
    files = [path for _, path in found if path.suffix in (".json", ".ndjson")]
    for path in files:
        for number, (where, value) in enumerate(_read_resources(path)):
            # servers assign missing ids; ours stay the same across runs
            default_id = uuid.uuid5(_NAMESPACE, f"{path.relative_to(folder).as_posix()}#{number}")
            resource = _checked_resource(value, where, str(default_id))
            key = (resource["resourceType"], resource["id"])
            if key in origin:
                raise DataFolderError(f"{where}: {'/'.join(key)} is also defined in {origin[key]}")
            origin[key] = where
            resources.append(resource)
    return FhirStore(resources)


def _checked_resource(value: Any, where: str, default_id: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise DataFolderError(f"{where}: not a FHIR resource (no resourceType)")
    if not _RESOURCE_TYPE.fullmatch(value["resourceType"]):
        raise DataFolderError(f"{where}: invalid resourceType {value['resourceType']!r}")
    resource_id = value.get("id")
    if resource_id is None:
        return {**value, "id": default_id}
    if not isinstance(resource_id, str) or not _RESOURCE_ID.fullmatch(resource_id):
        raise DataFolderError(f"{where}: invalid id {resource_id!r}")
    return value


def _read_resources(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, resource)`` for each resource in a file, Bundles expanded into their entries."""
    raw = path.read_bytes()
    if path.suffix == ".ndjson":
        values = [
            (f"{path}, line {n}", _parse(line, f"{path}, line {n}"))
            for n, line in enumerate(raw.splitlines(), 1)
            if line.strip()
        ]
    else:
        value = _parse(raw, str(path))
        values = (
            [(f"{path}, item {n}", item) for n, item in enumerate(value)]
            if isinstance(value, list)
            else [(str(path), value)]
        )
    for where, value in values:
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            entries = value.get("entry") or []
            if not isinstance(entries, list):
                raise DataFolderError(f"{where}: the Bundle's entry is not a list")
            for n, entry in enumerate(entries):
                if isinstance(entry, dict) and entry.get("resource") is not None:
                    yield f"{where}, entry {n}", entry["resource"]
        else:
            yield where, value


def _parse(raw: bytes, where: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DataFolderError(f"{where}: not valid JSON ({exc})") from exc


# -- serving ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    kind: SourceKind
    fhir: FhirStore | None
    s3: Path | None


class DataService:
    """The hub-adapter listing and the Kong data proxy of every node.

    Args:
        core: The running platform.
        data: Each node's sources; nodes missing here have none.
    """

    prefixes = ("/hub-adapter", "/kong")

    def __init__(self, core: PlatformCore, data: Mapping[str, NodeData]) -> None:
        self._core = core
        self._data = data
        self._created = int(time.time())

    def routes(self, node: LocalNode) -> Iterable[Route]:
        """``/hub-adapter/kong/datastore/...`` and ``/kong/...`` for ``node``."""
        node_data = self._data.get(node.node_id, NodeData())
        sources = {
            source.name: source
            for source in (
                _Source(f"{node.node_id}-fhir", "fhir", node_data.fhir, None),
                _Source(f"{node.node_id}-s3", "s3", None, node_data.s3),
            )
            if source.fhir is not None or source.s3 is not None
        }
        listing = [self._kong_service(node, source) for source in sources.values()]
        project_id = self._core.project_id

        async def datastores(call: Call) -> Response:
            wanted = call.params["project_id"]
            if wanted != project_id:
                return _kong_detail(404, f"No data store or project found matching {wanted!r}")
            if not listing:
                return _kong_detail(404, f"Project {wanted} has no linked data stores or consumers")
            detailed = call.request.query.get("detailed", "").lower() == "true"
            data = listing if detailed else [_without_routes(s) for s in listing]
            answer = DatastoreList(data=[KongService.model_validate(s) for s in data])
            return json_response(answer.model_dump())

        apikey = node.env["DATA_SOURCE_TOKEN"].encode()

        async def kong(call: Call) -> Response:
            source = sources.get(call.params["name"])
            if source is None or source.kind != call.params["kind"]:
                return _no_route()
            given = call.request.headers.get("apikey")
            if given is None:
                return _kong_message(401, "No API key found in request")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), apikey):
                return _kong_message(401, "Invalid authentication credentials")
            tail = call.params.get("tail", "").removeprefix("/")
            if source.fhir is not None:
                return _fhir(call, source.fhir, tail)
            assert source.s3 is not None
            return await _s3(call, source, source.s3, tail)

        async def no_route(call: Call) -> Response:
            return _no_route()

        core = self._core
        return [
            Route(
                "GET",
                "/hub-adapter/kong/datastore/{project_id}",
                require_bearer(
                    datastores,
                    core.issuer,
                    core.analysis_id,
                    node_id=node.node_id,
                    rejected=(403, "JWT is malformed"),
                ),
            ),
            Route("GET", "/kong/{name}/{kind:fhir|s3}{tail:(/.*)?}", kong),
            Route("*", "/kong{tail:.*}", no_route),
        ]

    def _kong_service(self, node: LocalNode, source: _Source) -> dict[str, Any]:
        """The Kong Service of a source; its upstream is the node gateway's Kong route."""
        tags = [f"type:{source.kind}", f"project:{self._core.project_id}"]
        route_path = f"/{source.name}/{source.kind}"
        return {
            "id": str(uuid.uuid5(_NAMESPACE, f"{node.node_id}/{source.name}")),
            "name": source.name,
            "protocol": "http",
            "host": self._core.host,
            "port": node.gateway_port,
            "path": "/kong" + route_path,
            "retries": 5,
            "connect_timeout": _TIMEOUT_MS,
            "write_timeout": _TIMEOUT_MS,
            "read_timeout": _TIMEOUT_MS,
            "tags": tags,
            "client_certificate": None,
            "tls_verify": None,
            "tls_verify_depth": None,
            "ca_certificates": None,
            "enabled": True,
            "created_at": self._created,
            "updated_at": self._created,
            "routes": [
                {
                    "id": str(uuid.uuid5(_NAMESPACE, f"{node.node_id}/{source.name}/route")),
                    "name": source.name,
                    "paths": [route_path],
                    "methods": ["GET"],
                    "protocols": ["http"],
                    "strip_path": True,
                    "tags": tags,
                    "created_at": self._created,
                    "updated_at": self._created,
                }
            ],
        }


def _without_routes(service: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in service.items() if k != "routes"}


def _kong_detail(status: int, message: str) -> Response:
    """A hub-adapter error: FastAPI ``detail`` holding the Kong error."""
    detail = {"message": message, "service": "Kong", "status_code": status}
    return json_response({"detail": detail}, status=status)


def _kong_message(status: int, message: str) -> Response:
    """An error as Kong itself answers it."""
    headers = {"WWW-Authenticate": 'Key realm="kong"'} if status == 401 else None
    return json_response({"message": message}, status=status, headers=headers)


def _no_route() -> Response:
    return _kong_message(404, "no Route matched with those values")


# -- FHIR ------------------------------------------------------------------------------------


def _fhir(call: Call, store: FhirStore, tail: str) -> Response:
    base = URL.build(scheme="http", authority=call.host, path=f"/kong/{call.params['name']}/fhir")
    parts = tail.split("/")
    if not _RESOURCE_TYPE.fullmatch(parts[0]) or len(parts) > 2:
        return _fhir_response(
            operation_outcome("not-found", f"the local platform does not serve /{tail}"), 404
        )
    if len(parts) == 2:
        resource = store.read(parts[0], parts[1])
        if resource is None:
            return _fhir_response(
                operation_outcome("not-found", f"{parts[0]}/{parts[1]} is not known"), 404
            )
        return _fhir_response(resource)
    lenient = "handling=lenient" in call.request.headers.get("prefer", "")
    query = parse_qsl(call.request.query_string, keep_blank_values=True)
    try:
        page = store.search(parts[0], query, lenient=lenient)
    except FhirSearchError as exc:
        return _fhir_response(operation_outcome(exc.code, str(exc)), 400)
    return _fhir_response(page.bundle(str(base)))


def _fhir_response(resource: dict[str, Any], status: int = 200) -> Response:
    return Response(
        status,
        orjson.dumps(resource),
        headers={"content-type": f"{_FHIR_JSON}; charset=utf-8"},
    )


# -- S3 --------------------------------------------------------------------------------------


async def _s3(call: Call, source: _Source, root: Path, key: str) -> Response:
    if not key:
        prefix = call.request.query.get("prefix", "")
        objects = await anyio.to_thread.run_sync(_list_objects, root, prefix)
        return Response(
            200,
            _list_bucket(source.name, prefix, objects),
            headers={"content-type": "application/xml"},
        )
    path = await anyio.to_thread.run_sync(_object_path, root, key)
    if path is None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
            f"<Message>The specified key does not exist.</Message><Key>{escape(key)}</Key>"
            f"<BucketName>{escape(source.name)}</BucketName></Error>"
        )
        return Response(
            404, body.encode(), headers={"content-type": "application/xml; charset=utf-8"}
        )
    size = (await anyio.Path(path).stat()).st_size
    return Response(
        200,
        FileBody(path),
        headers={"content-type": _media_type(path)},
        content_length=size,
    )


def _media_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _list_objects(root: Path, prefix: str) -> list[tuple[str, int, float]]:
    """``(key, size, mtime)`` of every file under ``root`` whose key starts with ``prefix``
    (links leading out of ``root`` are left out, as :func:`_object_path` refuses them)."""
    found = []
    for key, path in _files_within(root)[0]:
        if key.startswith(prefix):
            try:
                stat = path.stat()
            except OSError:  # gone meanwhile
                continue
            found.append((key, stat.st_size, stat.st_mtime))
    return found


def _object_path(root: Path, key: str) -> Path | None:
    """The file of ``key``, or None if there is none (keys never leave ``root``)."""
    if (
        key.startswith("/")
        or ".." in PurePosixPath(key).parts
        or len(key.encode("utf-8", "replace")) > _MAX_KEY
        or not key.isprintable()
    ):
        return None
    try:
        path = (root / key).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
    except (OSError, ValueError, RuntimeError):  # too long for the OS, a loop of links
        return None


def _list_bucket(name: str, prefix: str, objects: list[tuple[str, int, float]]) -> bytes:
    parts = [
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{_S3_NS}">',
        f"<Name>{escape(name)}</Name><Prefix>{escape(prefix)}</Prefix>",
        f"<KeyCount>{len(objects)}</KeyCount><IsTruncated>false</IsTruncated>",
    ]
    for key, size, mtime in objects:
        modified = datetime.fromtimestamp(mtime, UTC).isoformat(timespec="milliseconds")
        parts.append(
            f"<Contents><Key>{escape(key)}</Key>"
            f"<LastModified>{modified.replace('+00:00', 'Z')}</LastModified>"
            f"<Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        )
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()
