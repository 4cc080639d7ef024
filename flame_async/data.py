"""Data access: the node's data sources (hub-adapter listing) and FHIR / S3 clients.

Everything goes through the node gateway's ``/kong`` route with the node's ``apikey``
(the node's data proxy). FHIR searches follow ``next`` links; S3 objects can be streamed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ._transport import GatewayClient
from ._wire import DatastoreList, KongService
from .errors import (
    DataAccessError,
    InvalidArgument,
    MissingExtra,
    NotFoundError,
    ServiceError,
    TransportError,
    UnknownDataSource,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DataService",
    "DataSource",
    "DataSourceKind",
    "FhirClient",
    "S3Client",
    "fhir_to_dataframe",
    "fhir_to_dataframe_async",
]

_KEY = re.compile(r"<Key>(.*?)</Key>", re.DOTALL)
_NO_DATA_HINT = (
    " (no data store is linked to this node; on the local platform give the nodes data with "
    "'flame-async run ... --data DIR', DIR/<node>/fhir/ and DIR/<node>/s3/)"
)


class DataSourceKind(StrEnum):
    """What a data source serves."""

    FHIR = "fhir"
    S3 = "s3"
    UNKNOWN = "unknown"


class DataSource(BaseModel):
    """One data store linked to the analysis' project on this node.

    Attributes:
        id: The Kong service id.
        name: The Kong service name (the route prefix under ``/kong``).
        kind: ``fhir`` or ``s3``, from the service's ``type:`` tag (or its name).
        tags: The service's tags.
        raw: The Kong service object as the hub-adapter returned it.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    kind: DataSourceKind
    tags: tuple[str, ...] = ()
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @classmethod
    def from_kong(cls, service: Mapping[str, Any] | KongService) -> DataSource:
        """Build from a Kong Service object."""
        if isinstance(service, KongService):
            service = service.model_dump(exclude_none=True)
        tags = tuple(str(t) for t in service.get("tags") or ())
        name = str(service.get("name") or service.get("id"))
        kind = DataSourceKind.UNKNOWN
        for tag in tags:
            if tag.startswith("type:") and tag[5:] in ("fhir", "s3"):
                kind = DataSourceKind(tag[5:])
        if kind is DataSourceKind.UNKNOWN:
            for candidate in (DataSourceKind.FHIR, DataSourceKind.S3):
                if name.endswith(f"-{candidate.value}"):
                    kind = candidate
        return cls(
            id=str(service.get("id", name)), name=name, kind=kind, tags=tags, raw=dict(service)
        )


class _SourceClient:
    def __init__(self, gateway: GatewayClient, source: DataSource, apikey: SecretStr) -> None:
        self._gateway = gateway
        self.source = source
        self._apikey = apikey  # unwrapped per request only: never in a repr, log or error

    def __repr__(self) -> str:
        return f"<{type(self).__name__} source={self.source.name!r}>"

    @property
    def _headers(self) -> dict[str, str]:
        return {"apikey": self._apikey.get_secret_value()}

    def _error(self, target: str, exc: TransportError) -> DataAccessError:
        if isinstance(exc, DataAccessError):
            return exc
        status = exc.status if isinstance(exc, ServiceError) else None
        detail = exc.detail if isinstance(exc, ServiceError) else str(exc)
        if status in (401, 403):
            detail += " (the data source token was refused: is DATA_SOURCE_TOKEN right?)"
        elif status == 404:
            detail += " (no such resource, key or route)"
        return DataAccessError(
            self.source.name, target, status, detail, method=exc.method, url=exc.url
        )


class FhirClient(_SourceClient):
    """Read-only FHIR access to one data source."""

    def _path(self, query: str) -> str:
        return f"/kong/{self.source.name}/fhir/{query.lstrip('/')}"

    async def get(self, query: str) -> dict[str, Any]:
        """One request, e.g. ``"Patient/123"`` or ``"Observation?code=x"``; the JSON answer.

        Raises:
            DataAccessError: The proxy answered an error (names the source, query and status).
        """
        try:
            body = await self._gateway.request_json(
                "GET",
                self._path(query),
                service="data",
                headers=self._headers,
                params=None,
                expect=(200,),
            )
        except TransportError as exc:
            raise self._error(query, exc) from exc
        if not isinstance(body, dict):
            raise DataAccessError(
                self.source.name,
                query,
                200,
                "the answer is not a JSON object",
                url=self._path(query),
            )
        return body

    async def bundle(self, query: str) -> dict[str, Any]:
        """The first page of a search as a FHIR Bundle.

        Raises:
            DataAccessError: The proxy answered an error.
        """
        return await self.get(query)

    async def pages(self, query: str) -> AsyncIterator[dict[str, Any]]:
        """Every page of a search, following the Bundle's ``next`` links.

        Raises:
            DataAccessError: A page could not be read.
        """
        current: str | None = query
        seen: set[str] = set()
        while current is not None and current not in seen:
            seen.add(current)
            page = await self.get(current)
            yield page
            current = _next_query(page)

    async def search(self, query: str) -> AsyncIterator[dict[str, Any]]:
        """Every resource a search returns, across pages.

        Raises:
            DataAccessError: A page could not be read.
        """
        async for page in self.pages(query):
            if page.get("resourceType") != "Bundle":
                yield page
                continue
            for entry in page.get("entry") or ():
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    yield resource

    async def search_all(self, query: str) -> list[dict[str, Any]]:
        """:meth:`search` collected into a list."""
        return [resource async for resource in self.search(query)]


def _next_query(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            url = str(link["url"])
            if "/fhir/" in url:
                return url.rsplit("/fhir/", 1)[1]
            return url.rsplit("/", 1)[-1]
    return None


class S3Client(_SourceClient):
    """Read-only S3 access (through the data proxy) to one bucket."""

    def _path(self, key: str = "") -> str:
        base = f"/kong/{self.source.name}/s3"
        return f"{base}/{quote(key.lstrip('/'), safe='/')}" if key else base

    async def list(self, prefix: str = "") -> list[str]:
        """Object keys, optionally only those under ``prefix``.

        Raises:
            DataAccessError: The listing failed.
        """
        params = {"prefix": prefix} if prefix else None
        try:
            body = await self._gateway.request(
                "GET",
                self._path(),
                service="data",
                headers={**self._headers, "Accept": "*/*"},
                params=params,
            )
        except TransportError as exc:
            raise self._error(f"list {prefix or '/'}", exc) from exc
        keys = [_xml_unescape(k) for k in _KEY.findall(body.decode("utf-8", "replace"))]
        return [k for k in keys if k.startswith(prefix)]

    async def get(self, key: str) -> bytes:
        """The whole object.

        Raises:
            DataAccessError: No such key, or reading failed.
        """
        async with self.open(key) as stream:
            return b"".join([chunk async for chunk in stream])

    @asynccontextmanager
    async def open(
        self, key: str, *, chunk_size: int = 1 << 20
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream an object: ``async with s3.open(key) as chunks: async for b in chunks: ...``.

        Chunks are at most ``chunk_size`` bytes.

        Raises:
            DataAccessError: No such key, or reading failed (also when the connection breaks
                while the chunks are read; it is a :class:`~flame_async.errors.TransportError`).

        Cancellation:
            Closes the connection.
        """
        if chunk_size < 1:
            raise InvalidArgument(f"chunk_size must be at least 1, got {chunk_size}")
        try:
            async with self._gateway.stream(
                "GET", self._path(key), service="data", headers={**self._headers, "Accept": "*/*"}
            ) as response:

                async def chunks() -> AsyncIterator[bytes]:
                    async for chunk in response.iter_chunks():
                        if len(chunk) <= chunk_size:
                            yield bytes(chunk)  # no copy for bytes
                            continue
                        view = memoryview(chunk)
                        for start in range(0, len(view), chunk_size):
                            yield bytes(view[start : start + chunk_size])

                yield chunks()
        except TransportError as exc:
            raise self._error(key, exc) from exc


def _xml_unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&amp;", "&")
    )


class DataService:
    """The node's data sources and clients for them.

    Args:
        gateway: Calls to the node's services (the borrowed transport underneath).
        project_id: The project whose stores are listed.
        apikey: The node's ``DATA_SOURCE_TOKEN`` (kept secret: it never appears in a repr,
            a log or an error).
    """

    def __init__(self, gateway: GatewayClient, *, project_id: str, apikey: SecretStr) -> None:
        self._gateway = gateway
        self._project_id = project_id
        self._apikey = apikey
        self._sources: list[DataSource] | None = None

    async def load_sources(self) -> list[DataSource]:
        """Ask the hub-adapter for the project's data stores (a 404 means: none linked).

        Raises:
            TransportError: The hub-adapter could not be reached or failed.
        """
        try:
            listing = await self._gateway.request_model(
                DatastoreList,
                "GET",
                f"/hub-adapter/kong/datastore/{self._project_id}",
                service="hub-adapter",
            )
        except NotFoundError:
            listing = DatastoreList()
        self._sources = [DataSource.from_kong(s) for s in listing.data]
        return self._sources

    @property
    def sources(self) -> list[DataSource]:
        """The sources found at start-up (empty before :meth:`load_sources`)."""
        return list(self._sources or ())

    def source(self, source: DataSource | str) -> DataSource:
        """Find a source by id or name.

        Raises:
            UnknownDataSource: No such source (the message lists the available ones).
        """
        if isinstance(source, DataSource):
            return source
        for candidate in self._sources or ():
            if source in (candidate.id, candidate.name):
                return candidate
        names = ", ".join(s.name for s in self._sources or ())
        if not names:
            raise UnknownDataSource(f"no data source {source!r}: this node has none{_NO_DATA_HINT}")
        raise UnknownDataSource(f"no data source {source!r}; available: {names}")

    def client(self, source: DataSource | str) -> FhirClient | S3Client:
        """A client bound to ``source`` (FHIR or S3 by its kind).

        Raises:
            UnknownDataSource: No such source, or its kind is unknown.
        """
        found = self.source(source)
        if found.kind is DataSourceKind.FHIR:
            return FhirClient(self._gateway, found, self._apikey)
        if found.kind is DataSourceKind.S3:
            return S3Client(self._gateway, found, self._apikey)
        raise UnknownDataSource(
            f"data source {found.name!r} is neither FHIR nor S3 (tags {found.tags})"
        )

    def _of_kind(self, kind: DataSourceKind) -> list[DataSource]:
        found = [s for s in self._sources or () if s.kind is kind]
        if not found:
            raise UnknownDataSource(
                f"this node has no {kind.value} data source{_NO_DATA_HINT}"
                if not self._sources
                else f"this node has no {kind.value} data source (it has: "
                f"{', '.join(s.name for s in self._sources)})"
            )
        return found

    async def get_fhir_data(self, queries: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Run each FHIR query against every FHIR source; all pages, resources per query.

        Raises:
            UnknownDataSource: This node has no FHIR source.
            DataAccessError: A query failed (names the source, query and status).
        """
        result: dict[str, list[dict[str, Any]]] = {}
        for source in self._of_kind(DataSourceKind.FHIR):
            client = FhirClient(self._gateway, source, self._apikey)
            for query in queries:
                result.setdefault(query, []).extend(await client.search_all(query))
        return result

    async def get_s3_data(self, keys: Iterable[str] | None = None) -> dict[str, bytes]:
        """Objects by key from every S3 source (all objects when ``keys`` is None).

        Raises:
            UnknownDataSource: This node has no S3 source.
            DataAccessError: A key is missing or reading failed.
        """
        result: dict[str, bytes] = {}
        for source in self._of_kind(DataSourceKind.S3):
            client = S3Client(self._gateway, source, self._apikey)
            wanted = list(keys) if keys is not None else await client.list()
            for key in wanted:
                result[key] = await client.get(key)
        return result


def _lookup(resource: Any, path: str) -> Any:
    value = resource
    for part in path.split("."):
        if isinstance(value, list):
            if part.isdigit():
                index = int(part)
                value = value[index] if index < len(value) else None
            else:
                value = value[0].get(part) if value and isinstance(value[0], dict) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
        if value is None:
            return None
    return value


def fhir_to_dataframe(
    resources: Iterable[Mapping[str, Any]],
    fields: Mapping[str, str] | Sequence[str],
) -> pd.DataFrame:
    """Flatten FHIR resources into a table, one row per resource.

    Args:
        resources: FHIR resources (e.g. from :meth:`FhirClient.search`), or Bundles whose
            entries are used.
        fields: Dotted paths to pick (``"subject.reference"``, ``"valueQuantity.value"``,
            ``"code.coding.0.code"``; a list step without an index takes the first item), as a
            list (column = path) or a mapping ``{column: path}``.

    Returns:
        A pandas DataFrame; missing values are null.

    Raises:
        MissingExtra: pandas is not installed.
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise MissingExtra("pandas", "pandas") from exc
    columns = dict(fields) if isinstance(fields, Mapping) else {f: f for f in fields}
    rows: list[dict[str, Any]] = []
    for item in resources:
        if item.get("resourceType") == "Bundle":
            items = [e.get("resource", {}) for e in item.get("entry") or () if isinstance(e, dict)]
        else:
            items = [item]
        rows.extend({col: _lookup(r, path) for col, path in columns.items()} for r in items)
    return pd.DataFrame(rows, columns=list(columns))


async def fhir_to_dataframe_async(
    resources: Iterable[Mapping[str, Any]], fields: Mapping[str, str] | Sequence[str]
) -> pd.DataFrame:
    """:func:`fhir_to_dataframe` in a worker thread (for large inputs)."""
    materialised = list(resources)
    return await anyio.to_thread.run_sync(lambda: fhir_to_dataframe(materialised, fields))
