"""The models the SDK builds itself, without validation, are the models pydantic builds."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from flame_async.models import Message, _received_message

_AT = datetime(2026, 11, 27, 1, 2, 3, 456789, tzinfo=UTC)


@pytest.mark.parametrize(
    "fields",
    [
        {
            "id": "m-1",
            "sender": "node-a",
            "category": "answer",
            "data": {"x": [1, 2.5, "drei"], "nested": {"ok": True}},
            "message_number": 7,
            "time": _AT.astimezone(timezone(timedelta(hours=1))),
            "arrived_at": _AT,
            "reply_to": None,
            "error": None,
        },
        {
            "id": "m-2",
            "sender": "node-b",
            "category": "ask",
            "data": {},
            "message_number": 1,
            "time": _AT,
            "arrived_at": _AT,
            "reply_to": "m-1",
            "error": "ValueError: no",
        },
    ],
)
def test_a_received_message_is_the_message_model_construct_builds(fields: dict[str, Any]) -> None:
    fast = _received_message(**fields)
    built = Message.model_construct(**fields)
    assert type(fast) is Message
    assert fast == built
    assert fast.model_fields_set == built.model_fields_set == set(Message.model_fields)
    assert fast.model_dump() == built.model_dump() == fields
    assert fast.model_dump_json() == built.model_dump_json()
    assert repr(fast) == repr(built)
    assert fast.model_extra is None and fast.__pydantic_private__ is None
    assert pickle.loads(pickle.dumps(fast)) == built
    assert copy.deepcopy(fast) == built
    assert fast.model_copy(update={"category": "other"}).category == "other"
    assert Message.model_validate(fast.model_dump()) == fast
    with pytest.raises(ValueError, match="frozen"):
        fast.category = "other"  # type: ignore[misc]
