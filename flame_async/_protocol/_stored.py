"""The reference a large message travels as: its payload sits in the storage service.

A message whose JSON payload is larger than the sender's inline limit is uploaded once per
receiver to the storage service (``PUT /storage/intermediate``, readable once, by that receiver
only) and the broker carries a small message in its place, whose data is only::

    {"_flame_async_stored": {"ids": {receiver: "{object_id}?remote_node_id={sender}"},
                             "size": 52428800}}

The receiver reads its copy before it hands the message over, with the original data, so the
analysis never sees the reference. Only flame-async senders (which number their messages) send
references; the same key from a flamesdk sender is plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["STORED_KEY", "stored_data", "stored_reference"]

STORED_KEY: Final = "_flame_async_stored"
"""The one key of a reference message's data (reserved: analyses cannot send it)."""


def stored_data(ids: Mapping[str, str], size: int) -> dict[str, Any]:
    """The data of a reference message: each receiver's stored object, and the size."""
    return {STORED_KEY: {"ids": dict(ids), "size": size}}


def stored_reference(data: Mapping[str, Any], node_id: str) -> tuple[str, int] | None:
    """``(result_id, size)`` of ``node_id``'s copy if ``data`` is a reference, else None.

    A reference that names no copy for ``node_id``, or is malformed, gives ``("", 0)``: the
    fetch fails with a reason instead of handing the reference over as data.
    """
    if len(data) != 1 or STORED_KEY not in data:
        return None
    ref = data[STORED_KEY]
    ids = ref.get("ids") if isinstance(ref, dict) else None
    size = ref.get("size") if isinstance(ref, dict) else None
    mine = ids.get(node_id) if isinstance(ids, dict) else None
    if not isinstance(mine, str) or not isinstance(size, int) or isinstance(size, bool):
        return "", 0
    return mine, size
