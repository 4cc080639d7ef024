"""A small FHIR search core over in-memory resources (PROTOCOL.md §4.2), without I/O.

The local platform loads each node's FHIR files once (:mod:`._data`) and answers the Kong FHIR
route from a :class:`FhirStore`: a read of ``{type}/{id}`` and a type-level search returning a
``searchset`` Bundle. Supported search parameters:

* ``_id`` (comma list), ``code`` (token: ``system|code``, ``|code``, ``system|`` or a bare
  ``code``, matched against ``code.coding[]``), ``subject`` and ``patient`` (a reference
  ``Patient/x``, a full URL or a bare id, matched against ``subject.reference``; ``patient``
  also against ``patient.reference`` and only for Patient targets). Commas are OR, repeated
  parameters AND, as in FHIR.
* ``_count`` (page size, default 50; ``0`` gives the total only), ``_offset`` (where the page
  starts; the ``next``/``previous`` links carry it) and ``_summary=count``.
* ``_format``, ``_pretty`` and ``_total`` are accepted and ignored.

Any other parameter, or a modifier such as ``code:text``, is refused with a 400 OperationOutcome
(``not-supported``) rather than ignored, so an analysis never mistakes an unfiltered answer for
a filtered one. ``Prefer: handling=lenient`` (FHIR's own switch) ignores them instead.
A search takes at most 64 parameters (``too-costly`` otherwise). Resources are returned in file
order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

__all__ = [
    "DEFAULT_COUNT",
    "MAX_PARAMS",
    "FhirSearchError",
    "FhirStore",
    "SearchPage",
    "operation_outcome",
]

DEFAULT_COUNT: Final = 50
MAX_PARAMS: Final = 64
_IGNORED = frozenset({"_format", "_pretty", "_total"})
_SUPPORTED = "_id, code, subject, patient, _count, _offset, _summary=count"

Resource = dict[str, Any]
_Filter = Callable[[Resource], bool]


class FhirSearchError(ValueError):
    """A search the store cannot answer; ``code`` is the OperationOutcome issue code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search.

    Attributes:
        resource_type: The searched type.
        resources: The resources on this page.
        total: How many resources match in all.
        offset: Index of the first resource of this page among all matches.
        count: The page size asked for.
        params: The search parameters without ``_count`` and ``_offset``, in request order.
    """

    resource_type: str
    resources: list[Resource]
    total: int
    offset: int
    count: int
    params: list[tuple[str, str]]

    def bundle(self, base: str) -> Resource:
        """This page as a ``searchset`` Bundle whose URLs start with ``base`` (``.../fhir``).

        The links repeat the search with ``_count`` and ``_offset``, so following ``next``
        pages through every match exactly once.
        """

        def link(relation: str, offset: int) -> dict[str, str]:
            query = urlencode([*self.params, ("_count", str(self.count)), ("_offset", str(offset))])
            return {"relation": relation, "url": f"{base}/{self.resource_type}?{query}"}

        links = [link("self", self.offset)]
        if self.resources and self.offset + self.count < self.total:
            links.append(link("next", self.offset + self.count))
        if self.count and self.offset > 0:
            links.append(link("previous", max(0, self.offset - self.count)))
        bundle: Resource = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds")},
            "type": "searchset",
            "total": self.total,
            "link": links,
        }
        if self.resources:  # FHIR JSON has no empty arrays
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in self.resources
            ]
        return bundle


def operation_outcome(code: str, diagnostics: str) -> Resource:
    """An OperationOutcome with one error issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class FhirStore:
    """Resources of one node, by type and id.

    Args:
        resources: Every resource, each with a ``resourceType`` and an ``id`` that are unique
            together (the loader checks this).
    """

    def __init__(self, resources: Iterable[Resource]) -> None:
        self._by_type: dict[str, dict[str, Resource]] = {}
        for resource in resources:
            self._by_type.setdefault(resource["resourceType"], {})[resource["id"]] = resource

    def __len__(self) -> int:
        return sum(len(of_type) for of_type in self._by_type.values())

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        """The resource ``{resource_type}/{resource_id}``, if it exists."""
        return self._by_type.get(resource_type, {}).get(resource_id)

    def search(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, lenient: bool = False
    ) -> SearchPage:
        """Search resources of one type.

        Args:
            resource_type: E.g. ``Observation``; unknown types have no matches.
            params: Query parameters in request order (see the module docs).
            lenient: Ignore unsupported parameters instead of refusing them.

        Raises:
            FhirSearchError: A parameter is unsupported (unless ``lenient``) or invalid, or
                there are more than :data:`MAX_PARAMS` of them.
        """
        if len(params) > MAX_PARAMS:
            raise FhirSearchError(
                "too-costly", f"{len(params)} search parameters; at most {MAX_PARAMS} are taken"
            )
        count, offset, summary_count = DEFAULT_COUNT, 0, False
        filters: list[_Filter] = []
        kept: list[tuple[str, str]] = []
        for name, value in params:
            if name in ("_count", "_offset"):
                number = _non_negative(name, value)
                count, offset = (number, offset) if name == "_count" else (count, number)
                continue
            kept.append((name, value))
            values = [v for v in value.split(",") if v]
            if name == "_id":
                filters.append(_id_filter(frozenset(values)))
            elif name == "code":
                filters.append(_token_filter([_token(v) for v in values]))
            elif name in ("subject", "patient"):
                filters.append(_reference_filter(name, [_reference(v) for v in values]))
            elif name == "_summary" and value in ("count", "false"):
                summary_count = summary_count or value == "count"
            elif name not in _IGNORED and not lenient:
                raise FhirSearchError(
                    "not-supported",
                    f"the local platform does not support the search parameter {name}={value} "
                    f"(supported: {_SUPPORTED}; send 'Prefer: handling=lenient' to ignore it)",
                )
        matches = [
            r for r in self._by_type.get(resource_type, {}).values() if all(f(r) for f in filters)
        ]
        if summary_count:
            count = 0
        return SearchPage(
            resource_type, matches[offset : offset + count], len(matches), offset, count, kept
        )


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise FhirSearchError("invalid", f"{name} must be a non-negative integer, got {value!r}")
    return number


def _id_filter(ids: frozenset[str]) -> _Filter:
    return lambda resource: resource.get("id") in ids


def _token(value: str) -> tuple[str | None, str | None]:
    """``(system, code)``; None matches anything, system ``""`` means "no system"."""
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    return system, code or None


def _token_filter(tokens: list[tuple[str | None, str | None]]) -> _Filter:
    def matches(resource: Resource) -> bool:
        concept = resource.get("code")
        codings = concept.get("coding") if isinstance(concept, dict) else None
        if not isinstance(codings, list):
            return False
        return any(
            isinstance(coding, dict)
            and (system is None or (coding.get("system") or "") == system)
            and (code is None or coding.get("code") == code)
            for coding in codings
            for system, code in tokens
        )

    return matches


def _reference(value: str) -> tuple[str | None, str]:
    """``(type, id)`` of a reference; the type is None when the reference does not say."""
    if value.startswith("urn:uuid:"):
        return None, value.removeprefix("urn:uuid:")
    parts = [p for p in value.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return None, parts[-1] if parts else ""


def _reference_filter(name: str, wanted: list[tuple[str | None, str]]) -> _Filter:
    elements = ("subject",) if name == "subject" else ("subject", "patient")
    if name == "patient":
        wanted = [("Patient", wanted_id) for _, wanted_id in wanted]

    def matches(resource: Resource) -> bool:
        for element in elements:
            target = resource.get(element)
            reference = target.get("reference") if isinstance(target, dict) else None
            if not isinstance(reference, str):
                continue
            ref_type, ref_id = _reference(reference)
            if any(
                ref_id == wanted_id and (ref_type is None or wanted_type in (None, ref_type))
                for wanted_type, wanted_id in wanted
            ):
                return True
        return False

    return matches
