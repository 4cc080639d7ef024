"""Hub list queries as rapiq query parameters: sans-I/O, no clock, no event loop.

Rules, as the Hub's query parser (rapiq) reads a query string:

- ``page[limit]`` and ``page[offset]`` page; every list endpoint caps the limit at
  :data:`MAX_LIMIT` *silently*, so a larger limit is refused here instead.
- ``sort=-created_at,name``: ``-`` sorts descending.
- ``include=project,master_image`` joins relations; ``fields=+extra,-dropped`` adds or drops
  fields, a plain list selects them.
- ``filter[key]=VALUE`` where VALUE is ``v`` (=), ``!v`` (≠), ``~v`` (LIKE ``v%``), ``!~v``
  (NOT LIKE), ``<v``, ``<=v``, ``>v``, ``>=v``, ``a,b`` (IN), ``!a,b`` (NOT IN), ``null`` and
  ``!null``. The server trims values and turns ``true``/``false``/``null`` (any case) and
  anything numeric into booleans, null and numbers.

So a value is refused with :class:`~flame_async.errors.InvalidArgument` when the server would
read it as something else than the caller meant: a comma (it makes an IN list), a leading
``!``, ``~``, ``<``, ``>`` (they change the operator), surrounding blanks (trimmed away), or a
string that looks like a number, boolean or null (the server converts it). Keys are given in
snake_case (dotted for relations: ``project.name``) and sent in the Hub's wire casing.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Final, Literal, TypeAlias
from urllib.parse import quote
from uuid import UUID

from ..errors import InvalidArgument

__all__ = [
    "MAX_LIMIT",
    "F",
    "FilterOp",
    "Query",
    "WireCase",
    "encode_query",
    "to_camel",
    "to_snake",
    "wire_key",
]

MAX_LIMIT: Final = 50
"""The largest ``page[limit]`` any Hub list endpoint honours (larger ones are silently capped)."""

WireCase: TypeAlias = Literal["snake", "camel"]
"""How a Hub spells keys on the wire: ``created_at`` (the 0.8 line) or ``createdAt`` (newer)."""

Scalar: TypeAlias = str | int | float | bool | UUID | datetime | date | enum.Enum | None
"""A filter value as the caller gives it."""

_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMERIC: Final = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_CONVERTED: Final = frozenset({"true", "false", "null", "nan", "infinity", "-infinity"})
_OPERATOR_CHARS: Final = ("!", "~", "<", ">")


def to_camel(name: str) -> str:
    """``created_at`` → ``createdAt``; names already in camelCase stay as they are."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def to_snake(name: str) -> str:
    """``createdAt`` → ``created_at``; names already in snake_case stay as they are."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def wire_key(name: str, case: WireCase) -> str:
    """A (dotted) field name in the wire casing: ``project.master_image_id`` →
    ``project.masterImageId`` for camel."""
    convert = to_camel if case == "camel" else to_snake
    return ".".join(convert(part) for part in name.split("."))


class _Kind(enum.Enum):
    EQ = ""
    NE = "!"
    LIKE = "~"
    NOT_LIKE = "!~"
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_IN = "!in"
    IS_NULL = "null"
    NOT_NULL = "!null"


@dataclasses.dataclass(frozen=True, slots=True)
class FilterOp:
    """One filter operator with its operand(s); build it with :class:`F`."""

    kind: _Kind
    values: tuple[Scalar, ...] = ()

    def __repr__(self) -> str:
        return f"F.{self.kind.name.lower()}{self.values!r}"


class F:
    """Filter operators for ``filter={...}`` (a plain value means equality).

    Example::

        filter={"name": F.like("cox"), "created_at": F.ge(since), "node_id": F.in_(a, b)}
    """

    @staticmethod
    def ne(value: Scalar) -> FilterOp:
        """Not equal (``!v``; ``F.ne(None)`` is ``F.not_null()``)."""
        return FilterOp(_Kind.NE, (value,))

    @staticmethod
    def like(prefix: str) -> FilterOp:
        """Starts with ``prefix`` (SQL ``LIKE 'prefix%'``; ``%`` and ``_`` inside are
        wildcards)."""
        return FilterOp(_Kind.LIKE, (prefix,))

    @staticmethod
    def not_like(prefix: str) -> FilterOp:
        """Does not start with ``prefix`` (SQL ``NOT LIKE 'prefix%'``)."""
        return FilterOp(_Kind.NOT_LIKE, (prefix,))

    @staticmethod
    def lt(value: Scalar) -> FilterOp:
        """Less than."""
        return FilterOp(_Kind.LT, (value,))

    @staticmethod
    def le(value: Scalar) -> FilterOp:
        """Less than or equal."""
        return FilterOp(_Kind.LE, (value,))

    @staticmethod
    def gt(value: Scalar) -> FilterOp:
        """Greater than."""
        return FilterOp(_Kind.GT, (value,))

    @staticmethod
    def ge(value: Scalar) -> FilterOp:
        """Greater than or equal."""
        return FilterOp(_Kind.GE, (value,))

    @staticmethod
    def in_(*values: Scalar) -> FilterOp:
        """One of ``values`` (at least one)."""
        return FilterOp(_Kind.IN, values)

    @staticmethod
    def not_in(*values: Scalar) -> FilterOp:
        """None of ``values`` (at least one)."""
        return FilterOp(_Kind.NOT_IN, values)

    @staticmethod
    def is_null() -> FilterOp:
        """The field is null."""
        return FilterOp(_Kind.IS_NULL)

    @staticmethod
    def not_null() -> FilterOp:
        """The field is not null."""
        return FilterOp(_Kind.NOT_NULL)


FilterValue: TypeAlias = Scalar | FilterOp | Sequence[Scalar]
"""What ``filter={key: ...}`` takes: a value (equality), a list (IN) or an :class:`F` operator."""


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """A list query before encoding.

    Attributes:
        filters: Field name (snake_case, dotted for relations) → value or :class:`F` operator.
        sort: Field names, ``-`` in front for descending.
        include: Relations to join.
        fields: Fields to select (plain) or add/drop (``+name``/``-name``).
        limit: Records per page, 1 to :data:`MAX_LIMIT`; None leaves the Hub's default.
        offset: Records to skip.
    """

    filters: Mapping[str, FilterValue] = dataclasses.field(default_factory=dict)
    sort: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    limit: int | None = None
    offset: int | None = None

    @classmethod
    def of(
        cls,
        *,
        filter: Mapping[str, FilterValue] | None = None,  # noqa: A002 - the Hub's term
        sort: str | Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        fields: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Query:
        """A query from the arguments the resource methods take (strings or sequences).

        Raises:
            InvalidArgument: ``limit`` is not 1 to :data:`MAX_LIMIT`, or ``offset`` is negative.
        """
        if limit is not None and not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(
                f"limit={limit}: the Hub returns at most {MAX_LIMIT} records per page (it caps "
                f"larger limits silently); use limit<={MAX_LIMIT} with offset, or iterate() / "
                "find_all() for every page"
            )
        if offset is not None and offset < 0:
            raise InvalidArgument(f"offset={offset}: an offset is 0 or more")
        return cls(
            filters=dict(filter or {}),
            sort=_names(sort),
            include=_names(include),
            fields=_names(fields),
            limit=limit,
            offset=offset,
        )

    def params(self, case: WireCase) -> list[tuple[str, str]]:
        """The query parameters, in order, keys and names in ``case``.

        Raises:
            InvalidArgument: A key or value the Hub would misread (see the module docstring).
        """
        out: list[tuple[str, str]] = []
        if self.limit is not None:
            out.append(("page[limit]", str(self.limit)))
        if self.offset is not None:
            out.append(("page[offset]", str(self.offset)))
        if self.sort:
            out.append(("sort", ",".join(_signed(s, case, "-") for s in self.sort)))
        if self.include:
            out.append(("include", ",".join(_plain(s, case) for s in self.include)))
        if self.fields:
            out.append(("fields", ",".join(_signed(s, case, "+-") for s in self.fields)))
        for key, value in self.filters.items():
            _check_key(key)
            out.append((f"filter[{wire_key(key, case)}]", encode_filter(key, value)))
        return out


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    """The parameters as a percent-encoded query string (brackets and commas kept readable)."""
    return "&".join(f"{quote(k, safe='[]')}={quote(v, safe=',')}" for k, v in params)


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return tuple(value)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidArgument(
            f"{key!r} is not a field name (letters, digits and '_', dotted for relations: "
            "'project.name')"
        )


def _plain(name: str, case: WireCase) -> str:
    _check_key(name)
    return wire_key(name, case)


def _signed(name: str, case: WireCase, signs: str) -> str:
    sign = name[:1] if name[:1] in signs else ""
    return sign + _plain(name[len(sign) :], case)


def _text(key: str, value: Scalar, *, pattern: bool = False) -> str:  # noqa: PLR0911 - one per type
    """A scalar as the Hub reads it back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _text(key, value.value, pattern=pattern)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"filter[{key}]: {value!r} is not a value the Hub can compare")
        return repr(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return _checked_string(key, value, pattern=pattern)
    raise InvalidArgument(
        f"filter[{key}]: a {type(value).__name__} is not a filter value (use str, int, float, "
        "bool, None, UUID, datetime or an enum)"
    )


def _checked_string(key: str, value: str, *, pattern: bool) -> str:
    if "," in value:
        raise InvalidArgument(
            f"filter[{key}]={value!r}: the Hub reads a comma as a list of alternatives (IN); "
            f"match a value with a comma with F.like() on the part before it, or filter "
            "client-side"
        )
    if value != value.strip():
        raise InvalidArgument(
            f"filter[{key}]={value!r}: the Hub trims blanks around values, so it would match "
            f"{value.strip()!r}; pass that, or filter client-side"
        )
    if not pattern and (value.lower() in _CONVERTED or _NUMERIC.fullmatch(value)):
        raise InvalidArgument(
            f"filter[{key}]={value!r}: the Hub turns this text into a number, boolean or null "
            "before comparing; pass the Python value (3, True, None) for such a field, and "
            "for a text field holding it use F.like() or filter client-side"
        )
    return value


def _operand(key: str, value: Scalar, kind: _Kind) -> str:
    text = _text(key, value, pattern=kind in (_Kind.LIKE, _Kind.NOT_LIKE))
    if isinstance(value, str) and text.startswith(_OPERATOR_CHARS):
        hint = (
            "F.like() with the prefix after it, or filter client-side"
            if kind is _Kind.EQ
            else "filter client-side"
        )
        raise InvalidArgument(
            f"filter[{key}]={value!r}: a leading {text[0]!r} is an operator for the Hub and "
            f"would change the comparison; use {hint}"
        )
    if kind in (_Kind.LT, _Kind.GT) and text.startswith("="):
        raise InvalidArgument(
            f"filter[{key}]: {value!r} starts with '=', which would turn "
            f"{kind.value!r} into {kind.value + '='!r}; filter client-side"
        )
    return text


def encode_filter(key: str, value: FilterValue) -> str:
    """The ``filter[key]`` value for a plain value, a list (IN) or an :class:`F` operator.

    Raises:
        InvalidArgument: The value would be misread by the Hub.
    """
    if isinstance(value, FilterOp):
        return _encode_op(key, value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return _encode_op(key, FilterOp(_Kind.IN, tuple(value)))
    if isinstance(value, bytes):
        raise InvalidArgument(f"filter[{key}]: bytes are not a filter value (decode them first)")
    return _operand(key, value, _Kind.EQ)


def _encode_op(key: str, op: FilterOp) -> str:
    kind = op.kind
    if kind is _Kind.IS_NULL:
        return "null"
    if kind is _Kind.NOT_NULL:
        return "!null"
    if kind in (_Kind.IN, _Kind.NOT_IN):
        if not op.values:
            raise InvalidArgument(
                f"filter[{key}]: F.{'in_' if kind is _Kind.IN else 'not_in'}() needs at least "
                "one value"
            )
        items = [_operand(key, v, _Kind.EQ) for v in op.values]
        return ("!" if kind is _Kind.NOT_IN else "") + ",".join(items)
    (value,) = op.values
    if kind is _Kind.NE and value is None:
        return "!null"
    if kind in (_Kind.LIKE, _Kind.NOT_LIKE) and not isinstance(value, str):
        raise InvalidArgument(f"filter[{key}]: F.like() and F.not_like() take a string prefix")
    if kind in (_Kind.LIKE, _Kind.NOT_LIKE) and isinstance(value, str) and value == "":
        raise InvalidArgument(f"filter[{key}]: a LIKE prefix must not be empty")
    prefix: str = kind.value
    return prefix + _operand(key, value, kind)


_MISSING: Final = object()


def contradicts(value: FilterValue, actual: object) -> bool:  # noqa: PLR0911 - one answer per operator
    """Whether a record whose field holds ``actual`` clearly fails the filter ``value``.

    Used to notice a filter the Hub ignored (Hubs of the 0.8 line drop filters on keys outside
    their allow-list and return everything). Only judged where the answer is unambiguous:
    equality and IN on non-text values or text compared case-insensitively (databases differ
    in collation), IS NULL / IS NOT NULL, and ordering of numbers and aware datetimes.
    """
    if isinstance(value, FilterOp):
        if value.kind is _Kind.IS_NULL:
            return actual is not None
        if value.kind is _Kind.NOT_NULL or (value.kind is _Kind.NE and value.values == (None,)):
            return actual is None
        if value.kind is _Kind.IN:
            return not any(_same(v, actual) for v in value.values)
        if value.kind in _ORDER:
            return _out_of_order(value.kind, value.values[0], actual)
        return False
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return not any(_same(v, actual) for v in value)
    return not _same(value, actual)  # type: ignore[arg-type]


_ORDER: Final = {
    _Kind.LT: operator.lt,
    _Kind.LE: operator.le,
    _Kind.GT: operator.gt,
    _Kind.GE: operator.ge,
}


def _out_of_order(kind: _Kind, wanted: Scalar, actual: object) -> bool:
    """Numbers with numbers and aware datetimes with aware datetimes; text is not judged
    (collations differ)."""
    compare = _ORDER[kind]
    numbers = (int, float)
    if (
        isinstance(wanted, numbers)
        and isinstance(actual, numbers)
        and not isinstance(wanted, bool)
        and not isinstance(actual, bool)
    ):
        return not compare(actual, wanted)
    if (
        isinstance(wanted, datetime)
        and isinstance(actual, datetime)
        and wanted.tzinfo is not None
        and actual.tzinfo is not None
    ):
        return not compare(actual, wanted)
    return False


def _same(wanted: Scalar, actual: object) -> bool:
    if isinstance(wanted, enum.Enum):
        wanted = wanted.value
    if isinstance(actual, enum.Enum):
        actual = actual.value
    if wanted is None or actual is None:
        return wanted is None and actual is None
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return wanted is actual or (str(wanted).lower() == str(actual).lower())
    if isinstance(wanted, datetime | date) or isinstance(actual, datetime | date):
        return True  # formats and precision differ: not judged
    return str(wanted).lower() == str(actual).lower()


def field_value(record: Mapping[str, object], key: str) -> object:
    """The value of ``key`` in a record's data (either casing), or ``MISSING``."""
    for name in (key, to_camel(key)):
        if name in record:
            return record[name]
    return _MISSING


MISSING: Final = _MISSING
"""What :func:`field_value` returns for a key the record does not have."""
