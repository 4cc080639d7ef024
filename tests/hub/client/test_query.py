"""The rapiq encoding of Hub queries: operators, casing, and refusals before any I/O."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

import pytest

from flame_async.errors import InvalidArgument
from flame_async.hub import MAX_LIMIT, F, Query
from flame_async.hub._query import encode_query, to_camel, to_snake, wire_key


def params(case: str = "snake", **kwargs: object) -> list[tuple[str, str]]:
    return Query.of(**kwargs).params(case)  # type: ignore[arg-type]


def filt(value: object, key: str = "name") -> str:
    return dict(params(filter={key: value}))[f"filter[{key}]"]


@pytest.mark.parametrize(
    ("op", "wire"),
    [
        (F.ne("a"), "!a"),
        (F.like("co"), "~co"),
        (F.not_like("co"), "!~co"),
        (F.lt(3), "<3"),
        (F.le(3), "<=3"),
        (F.gt(2.5), ">2.5"),
        (F.ge(0), ">=0"),
        (F.in_("a", "b", "c"), "a,b,c"),
        (F.not_in("a", "b"), "!a,b"),
        (F.is_null(), "null"),
        (F.not_null(), "!null"),
        (F.ne(None), "!null"),
        (F.like("100"), "~100"),  # a LIKE prefix stays text
    ],
)
def test_every_operator_has_its_rapiq_prefix(op: object, wire: str) -> None:
    assert filt(op) == wire


def test_plain_values_are_encoded_as_the_hub_reads_them_back() -> None:
    uid = uuid.UUID(int=5)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    class Kind(enum.Enum):
        AGG = "aggregator"

    assert filt(True) == "true"
    assert filt(False) == "false"
    assert filt(None) == "null"
    assert filt(7) == "7"
    assert filt(uid) == "00000000-0000-0000-0000-000000000005"
    assert filt(when) == "2026-01-02T03:04:05+00:00"
    assert filt(Kind.AGG) == "aggregator"
    assert filt(["a", "b"]) == "a,b"  # a list is IN
    assert filt("plain") == "plain"


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("a,b", "comma"),
        ("!x", "operator"),
        ("~x", "operator"),
        ("<x", "operator"),
        (">x", "operator"),
        (" x", "trims"),
        ("true", "number, boolean or null"),
        ("NULL", "number, boolean or null"),
        ("42", "number, boolean or null"),
        ("-1.5e3", "number, boolean or null"),
    ],
)
def test_values_the_hub_would_misread_are_refused_with_advice(value: str, hint: str) -> None:
    with pytest.raises(InvalidArgument, match=hint):
        filt(value)


def test_refusals_cover_operands_and_list_items_too() -> None:
    with pytest.raises(InvalidArgument, match="comma"):
        filt(F.ne("a,b"))
    with pytest.raises(InvalidArgument, match="comma"):
        filt(F.in_("a", "b,c"))
    with pytest.raises(InvalidArgument, match="operator"):
        filt(F.in_("!a"))
    with pytest.raises(InvalidArgument, match="at least one"):
        filt(F.in_())
    with pytest.raises(InvalidArgument, match="'='"):
        filt(F.lt("=a"))
    with pytest.raises(InvalidArgument, match="string prefix"):
        filt(F.like(3))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not a filter value"):
        filt(object())
    with pytest.raises(InvalidArgument, match="field name"):
        params(filter={"name]&x[": 1})


def test_limit_above_the_hub_cap_is_refused_naming_the_cap() -> None:
    assert dict(params(limit=MAX_LIMIT, offset=0)) == {"page[limit]": "50", "page[offset]": "0"}
    with pytest.raises(InvalidArgument, match="at most 50"):
        Query.of(limit=51)
    with pytest.raises(InvalidArgument):
        Query.of(limit=0)
    with pytest.raises(InvalidArgument):
        Query.of(offset=-1)


def test_keys_sort_include_and_fields_follow_the_wire_casing() -> None:
    query = Query.of(
        filter={"project_id": uuid.UUID(int=1), "project.master_image_id": F.not_null()},
        sort=["-created_at", "name"],
        include="project,master_image",
        fields=["+extra_field", "-public_key"],
    )
    camel = dict(query.params("camel"))
    assert camel["sort"] == "-createdAt,name"
    assert camel["include"] == "project,masterImage"
    assert camel["fields"] == "+extraField,-publicKey"
    assert camel["filter[projectId]"] == str(uuid.UUID(int=1))
    assert camel["filter[project.masterImageId]"] == "!null"
    snake = dict(query.params("snake"))
    assert snake["sort"] == "-created_at,name"
    assert "filter[project.master_image_id]" in snake


def test_camel_keys_from_the_caller_are_sent_in_snake_for_a_snake_hub() -> None:
    assert dict(params("snake", filter={"projectId": 1}, sort="-createdAt")) == {
        "filter[project_id]": "1",
        "sort": "-created_at",
    }


def test_case_helpers_round_trip() -> None:
    assert to_camel("distribution_nodes_valid") == "distributionNodesValid"
    assert to_snake("distributionNodesValid") == "distribution_nodes_valid"
    assert to_snake("created_at") == "created_at"
    assert wire_key("analysis.project_id", "camel") == "analysis.projectId"


def test_query_string_keeps_brackets_and_escapes_the_rest() -> None:
    text = encode_query([("filter[name]", "~a b&c"), ("fields", "+x,y")])
    assert text == "filter[name]=~a%20b%26c&fields=%2Bx,y"


def test_contradiction_is_judged_only_where_unambiguous() -> None:
    from flame_async.hub._query import contradicts

    assert contradicts("a", "b")
    assert not contradicts("Alpha", "alpha")  # collations differ: not judged
    assert contradicts(True, False)
    assert contradicts(F.is_null(), "x")
    assert contradicts(F.not_null(), None)
    assert contradicts(F.in_(1, 2), 3)
    assert not contradicts(["a", "b"], "b")
    assert not contradicts(F.like("a"), "zzz")  # not judged
    assert not contradicts(datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01 00:00:00")


def test_ordering_is_judged_for_numbers_and_aware_datetimes_only() -> None:
    from flame_async.hub._query import contradicts

    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert contradicts(F.lt(3), 5)
    assert not contradicts(F.ge(3), 3)
    assert contradicts(F.gt(when), when)
    assert not contradicts(F.le(when), when)
    assert not contradicts(F.lt("b"), "c")  # text: not judged
    assert not contradicts(F.lt(when.replace(tzinfo=None)), when)
