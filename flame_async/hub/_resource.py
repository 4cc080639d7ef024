"""The generic Hub resource: get, find, iterate over every page, create, update, delete."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar
from uuid import UUID

import anyio
import pydantic

from ..errors import HubResponseInvalid, InvalidArgument, NotFoundError
from ._query import MAX_LIMIT, MISSING, FilterValue, Query, contradicts, field_value, to_snake
from ._session import Payload, Service, Session
from .models import HubModel, to_wire

__all__ = ["Page", "ReadResource", "Ref", "Resource", "id_of", "parse"]

T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)
C = TypeVar("C", bound=pydantic.BaseModel)
U = TypeVar("U", bound=pydantic.BaseModel)

Ref: TypeAlias = HubModel | UUID | str
"""Something that names a record: a model with an ``id``, a UUID or a UUID string."""

DEFAULT_CONCURRENCY: Final = 4


def id_of(ref: Ref | pydantic.BaseModel) -> str:
    """The canonical id string of a model, UUID or UUID string.

    Raises:
        InvalidArgument: ``ref`` has no id or the string is not a UUID.
    """
    if isinstance(ref, UUID):
        return str(ref)
    if isinstance(ref, str):
        try:
            return str(UUID(ref))
        except ValueError:
            raise InvalidArgument(f"{ref!r} is not a Hub id (a UUID)") from None
    value = getattr(ref, "id", None)
    if isinstance(value, UUID | str):
        return id_of(value)
    raise InvalidArgument(f"a {type(ref).__name__} does not name a Hub record (no id)")


def parse(model: type[M], value: Any, url: str) -> M:
    """``value`` validated as ``model``.

    Raises:
        HubResponseInvalid: It does not validate (names the model and the first errors).
    """
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        raise HubResponseInvalid(model.__name__, url, exc.errors(include_url=False)) from exc


def _one(value: Any) -> Any:
    """A single record, unwrapped from ``{data, meta}`` where an endpoint wraps it."""
    if isinstance(value, dict) and "id" not in value and isinstance(value.get("data"), dict):
        return value["data"]
    return value


async def _all_of(calls: Sequence[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Run ``calls`` with at most ``concurrency`` at once in a task group; their results in
    order. The first failure cancels the others and is raised as it is (not grouped)."""
    results: list[Any] = [None] * len(calls)
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    failure: list[Exception] = []

    async def run(index: int, scope: anyio.CancelScope) -> None:
        async with limiter:
            try:
                results[index] = await calls[index]()
            except Exception as exc:  # noqa: BLE001 - re-raised below, bare, not grouped
                failure.append(exc)
                scope.cancel()

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(run, index, tg.cancel_scope)
    if failure:
        raise failure[0]
    return results


def _field(item: pydantic.BaseModel, name: str) -> object:
    if name in type(item).model_fields:
        return getattr(item, name)
    return field_value(item.model_extra or {}, name)


@dataclasses.dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One page of a list.

    Attributes:
        items: The records on this page.
        total: How many records match the query in all.
        limit: The page size asked for.
        offset: How many records precede this page.
    """

    items: list[M]
    total: int
    limit: int
    offset: int


class ReadResource(Generic[M]):
    """A Hub resource that can be read: ``get``, ``find``, ``iterate`` and friends.

    Args:
        session: The client's HTTP layer.
        service: The service it lives on.
        path: Its collection path (``/analyses``).
        model: Its read model.
    """

    _order_key: ClassVar[str | None] = "created_at"
    """What ``iterate()`` sorts by last, for stable paging (None: the Hub cannot sort)."""

    def __init__(self, session: Session, service: Service, path: str, model: type[M]) -> None:
        self._session = session
        self._service: Service = service
        self._path = path
        self._model = model

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._service}{self._path}>"

    def _url(self, path: str = "") -> str:
        return self._session.url(self._service, self._path + path)

    async def _case_params(self, query: Query) -> list[tuple[str, str]]:
        case = "snake" if self._service == "auth" else await self._session.wire_case()
        return query.params(case)

    async def get(
        self,
        ref: Ref,
        *,
        include: str | Sequence[str] | None = None,
        fields: str | Sequence[str] | None = None,
    ) -> M:
        """The record with this id.

        Raises:
            NotFoundError: There is none (or it is outside the caller's realm).
            InvalidArgument: ``ref`` is not an id.
            TransportError: The request failed.
            HubResponseInvalid: The answer does not fit the model.

        Cancellation:
            The request is abandoned.
        """
        rid = id_of(ref)
        params = await self._case_params(Query.of(include=include, fields=fields))
        answer = await self._session.json(
            "GET", self._service, f"{self._path}/{rid}", params=params
        )
        return parse(self._model, _one(answer), self._url(f"/{rid}"))

    async def get_or_none(
        self,
        ref: Ref,
        *,
        include: str | Sequence[str] | None = None,
        fields: str | Sequence[str] | None = None,
    ) -> M | None:
        """The record with this id, or None when the Hub answers 404.

        Raises:
            InvalidArgument: ``ref`` is not an id.
            TransportError: The request failed otherwise (a broken proxy is not "missing").
            HubResponseInvalid: The answer does not fit the model.
        """
        try:
            return await self.get(ref, include=include, fields=fields)
        except NotFoundError:
            return None

    async def find(
        self,
        *,
        filter: Mapping[str, FilterValue] | None = None,  # noqa: A002 - the Hub's term
        sort: str | Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        fields: str | Sequence[str] | None = None,
        limit: int = MAX_LIMIT,
        offset: int = 0,
    ) -> Page[M]:
        """One page of the records matching ``filter``.

        Args:
            filter: Field (snake_case, dotted for relations) → value, list (IN) or
                :class:`~flame_async.hub.F` operator.
            sort: ``"-created_at"``, ``"name"`` or a sequence of them.
            include: Relations to fill (none unless asked for).
            fields: Fields to select, or ``+name``/``-name`` to add/drop.
            limit: Records per page, at most 50 (the Hub's cap).
            offset: Records to skip.

        Raises:
            InvalidArgument: ``limit`` is above 50, or a filter value the Hub would misread;
                raised before any request.
            TransportError: The request failed.
            HubResponseInvalid: The answer does not fit the model.
        """
        query = Query.of(
            filter=filter, sort=sort, include=include, fields=fields, limit=limit, offset=offset
        )
        return await self._page(query)

    async def _page(self, query: Query) -> Page[M]:
        params = await self._case_params(query)
        answer = await self._session.json("GET", self._service, self._path, params=params)
        url = self._url()
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise HubResponseInvalid(
                f"Page[{self._model.__name__}]",
                url,
                [{"loc": ("data",), "msg": "a list answer has a 'data' list"}],
            )
        items = [parse(self._model, item, url) for item in answer["data"]]
        self._check_filters(query, items, url)
        meta = answer.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        total = meta.get("total")
        return Page(
            items=items,
            total=total if isinstance(total, int) else len(items),
            limit=query.limit if query.limit is not None else len(items),
            offset=query.offset or 0,
        )

    def _check_filters(self, query: Query, items: list[M], url: str) -> None:
        """Refuse a page the Hub produced while ignoring a filter (older Hubs drop filters on
        keys outside their allow-list silently and return everything)."""
        if not items:
            return
        for key, value in query.filters.items():
            if "." in key:
                continue  # relations: not in the record unless included
            name = to_snake(key)
            actual = [_field(item, name) for item in items]
            if all(a is MISSING for a in actual) and not query.fields:
                raise InvalidArgument(
                    f"filter[{key}]: {self._model.__name__} records have no field {name!r}, and "
                    f"the Hub returned {len(items)} record(s) anyway: it ignores filters on keys "
                    "it does not allow (a stricter Hub answers 400); filter on another field"
                )
            if any(a is not MISSING and contradicts(value, a) for a in actual):
                raise InvalidArgument(
                    f"filter[{key}]: the Hub returned {self._model.__name__} records that do "
                    f"not match it, so it ignored the filter ({url} does not allow filtering "
                    f"on {name!r}); filter client-side"
                )

    def _iteration_sort(self, sort: str | Sequence[str] | None) -> list[str]:
        keys = list(Query.of(sort=sort).sort)
        order = self._order_key
        if order is not None and not any(to_snake(k.lstrip("-")) == order for k in keys):
            keys.append(order)
        return keys

    async def iterate(
        self,
        *,
        filter: Mapping[str, FilterValue] | None = None,  # noqa: A002 - the Hub's term
        sort: str | Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        fields: str | Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> AsyncGenerator[M, None]:
        """Every record matching ``filter``, page after page, in order.

        Reads the first page and its ``meta.total``, then the remaining pages in batches of
        ``concurrency`` requests in flight at once (and never more than the client's
        ``max_concurrency``), each batch while the loop waits for its next record. Sorted by
        ``created_at`` (after the caller's ``sort``), so records created meanwhile go to the
        end; a record seen twice (paging while records change) is yielded once.

        Raises:
            InvalidArgument: A filter the Hub would misread, or ``concurrency`` below 1.
            TransportError: A page could not be read.
            HubResponseInvalid: A page does not fit the model.

        Cancellation:
            Requests run only inside the wait for the next record (a task group that ends
            before a record is yielded), so leaving the loop early (``break``, an error)
            leaves no request or task behind, closed or not; cancelling the wait cancels the
            batch in flight.
        """
        if concurrency < 1:
            raise InvalidArgument(f"concurrency={concurrency}: at least 1 request in flight")
        base = Query.of(
            filter=filter,
            sort=self._iteration_sort(sort),
            include=include,
            fields=fields,
            limit=MAX_LIMIT,
            offset=0,
        )
        seen: set[Any] = set()

        def fresh(items: Iterable[M]) -> Iterator[M]:
            """The records not yielded before (paging while records change repeats some)."""
            for item in items:
                key = getattr(item, "id", None)
                if key not in seen:
                    seen.add(key)
                    yield item

        first = await self._page(base)
        for item in fresh(first.items):
            yield item
        offsets = list(range(MAX_LIMIT, first.total, MAX_LIMIT))
        for start in range(0, len(offsets), concurrency):
            batch = offsets[start : start + concurrency]
            calls = [
                functools.partial(self._page, dataclasses.replace(base, offset=offset))
                for offset in batch
            ]
            for page in await _all_of(calls, concurrency):
                for item in fresh(page.items):
                    yield item

    async def find_all(
        self,
        *,
        filter: Mapping[str, FilterValue] | None = None,  # noqa: A002 - the Hub's term
        sort: str | Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        fields: str | Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> list[M]:
        """Every record matching ``filter`` (all pages, see :meth:`iterate`).

        Raises:
            InvalidArgument: A filter the Hub would misread.
            TransportError: A page could not be read.
            HubResponseInvalid: A page does not fit the model.
        """
        pages = self.iterate(
            filter=filter, sort=sort, include=include, fields=fields, concurrency=concurrency
        )
        async with aclosing(pages):
            return [item async for item in pages]

    async def get_many(
        self,
        refs: Iterable[Ref],
        *,
        include: str | Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> list[M]:
        """The records with these ids, in the same order, fetched concurrently.

        Raises:
            NotFoundError: One of them does not exist (the others are cancelled).
            InvalidArgument: One of ``refs`` is not an id.
            TransportError: A request failed.

        Cancellation:
            Cancels the requests in flight.
        """
        ids = [id_of(r) for r in refs]
        calls = [functools.partial(self.get, rid, include=include) for rid in ids]
        return await _all_of(calls, concurrency)


class Resource(ReadResource[M], Generic[M, C, U]):
    """A Hub resource that can also be created, updated and deleted.

    Args:
        session: The client's HTTP layer.
        service: The service it lives on.
        path: Its collection path.
        model: Its read model.
        create_model: The fields a create takes.
        update_model: The fields an update takes.
    """

    def __init__(  # noqa: PLR0917 - the resource tables in _core/_storage/_authup read as rows
        self,
        session: Session,
        service: Service,
        path: str,
        model: type[M],
        create_model: type[C],
        update_model: type[U],
    ) -> None:
        super().__init__(session, service, path, model)
        self._create_model = create_model
        self._update_model = update_model

    async def _wire(self, model: pydantic.BaseModel) -> dict[str, Any]:
        case = "snake" if self._service == "auth" else await self._session.wire_case()
        return to_wire(model, case)

    def _validated(self, model: type[C] | type[U], fields: Mapping[str, Any]) -> pydantic.BaseModel:
        fixed = {k: id_of(v) if isinstance(v, HubModel) else v for k, v in fields.items()}
        try:
            return model.model_validate(fixed)
        except pydantic.ValidationError as exc:
            first = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
            raise InvalidArgument(f"invalid {model.__name__}: {first}") from exc

    async def create(
        self, data: C | None = None, /, *, retry_unsafe: bool = False, **fields: Any
    ) -> M:
        """Create a record from ``data`` or from keyword fields (snake_case; a model passed
        for an ``*_id`` field stands for its id).

        Args:
            data: The create model; or pass its fields as keywords instead.
            retry_unsafe: Retry when the answer was lost (may create the record twice).
            **fields: The fields.

        Raises:
            InvalidArgument: The fields do not make a valid create model (before any request).
            HubRequestInvalid: The Hub refused them.
            HubConflict: A record like it exists.
            TransportError: The request failed.
        """
        model = data if data is not None else self._validated(self._create_model, fields)
        body = Payload.json(await self._wire(model))
        answer = await self._session.json(
            "POST", self._service, self._path, body=body, retry_unsafe=retry_unsafe
        )
        return parse(self._model, _one(answer), self._url())

    async def update(self, ref: Ref, /, *, retry_unsafe: bool = False, **fields: Any) -> M:
        """Change exactly the fields passed (snake_case) of the record ``ref``.

        Raises:
            InvalidArgument: A field is not valid for an update (before any request).
            NotFoundError: There is no such record.
            HubRequestInvalid: The Hub refused the change.
            TransportError: The request failed.
        """
        rid = id_of(ref)
        model = self._validated(self._update_model, fields)
        body = Payload.json(await self._wire(model))
        answer = await self._session.json(
            "POST", self._service, f"{self._path}/{rid}", body=body, retry_unsafe=retry_unsafe
        )
        return parse(self._model, _one(answer), self._url(f"/{rid}"))

    async def delete(self, ref: Ref, /, *, retry_unsafe: bool = False) -> None:
        """Delete the record ``ref``. With ``retry_unsafe``, a retry after a lost answer that
        finds the record gone counts as done.

        Raises:
            NotFoundError: There is no such record (on the first try).
            TransportError: The request failed.
        """
        rid = id_of(ref)
        await self._session.json(
            "DELETE",
            self._service,
            f"{self._path}/{rid}",
            retry_unsafe=retry_unsafe,
            gone_is_done=True,
        )
