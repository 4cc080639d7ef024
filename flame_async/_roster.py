"""Who takes part in an analysis, parsed once and shared by every node of a process.

A node learns the participants from its broker (``GET .../participants``: every node, itself
included). With thousands of nodes in one process (the simulation mode of the local platform)
a per-node copy of that table costs N² objects, so the parsed list is a :class:`Roster` kept in
a small process-wide cache keyed by the answer's bytes, and each node sees it through a
:class:`Peers` view that leaves the node itself out. Two nodes whose brokers answer the same
bytes share one roster; nothing is shared between different lists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Set
from typing import Any, Final

from .models import NodeRole, Participant

__all__ = ["Peers", "Roster", "cached_roster", "remember_roster"]

_CACHE_SIZE: Final = 16


class Roster:
    """Every participant of one analysis, immutable once built.

    Args:
        participants: The participants (node id and role), in any order; a repeated id keeps
            its last entry.
    """

    __slots__ = ("by_id", "ids")

    def __init__(self, participants: Iterable[Participant]) -> None:
        self.by_id: Final[dict[str, Participant]] = {p.node_id: p for p in participants}
        self.ids: Final[tuple[str, ...]] = tuple(sorted(self.by_id))
        """Every node id, sorted."""

    def without(self, node_id: str) -> Peers:
        """The participants other than ``node_id``, as a view (no copy)."""
        return Peers(self, node_id)

    def __repr__(self) -> str:
        return f"Roster({len(self.ids)} nodes)"


class Peers(Set[str]):
    """The ids of the other participants as one node sees them: a set view of a shared
    :class:`Roster` without that node. Iterates in sorted order; set operations with other
    sets return plain ``frozenset`` objects."""

    __slots__ = ("_me", "_roster")

    def __init__(self, roster: Roster, me: str) -> None:
        self._roster = roster
        self._me = me

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> frozenset[Any]:
        return frozenset(it)

    def __contains__(self, node_id: object) -> bool:
        return node_id != self._me and node_id in self._roster.by_id

    def __iter__(self) -> Iterator[str]:
        me = self._me
        return (node_id for node_id in self._roster.ids if node_id != me)

    def __len__(self) -> int:
        return len(self._roster.ids) - (self._me in self._roster.by_id)

    def __repr__(self) -> str:
        return f"Peers({len(self)} nodes besides {self._me!r})"

    def get(self, node_id: str) -> Participant | None:
        """The participant ``node_id`` (None when it is this node or not a participant)."""
        return self._roster.by_id.get(node_id) if node_id != self._me else None

    def participants(self) -> list[Participant]:
        """The other participants, sorted by node id (a new list on every call)."""
        by_id, me = self._roster.by_id, self._me
        return [by_id[node_id] for node_id in self._roster.ids if node_id != me]

    def roles(self, role: NodeRole) -> list[str]:
        """Ids of the other participants with ``role``, sorted."""
        by_id, me = self._roster.by_id, self._me
        return [i for i in self._roster.ids if i != me and by_id[i].role is role]


_rosters: OrderedDict[bytes, Roster] = OrderedDict()


def cached_roster(body: bytes) -> Roster | None:
    """The roster parsed earlier from exactly these answer bytes, if still cached."""
    roster = _rosters.get(body)
    if roster is not None:
        _rosters.move_to_end(body)
    return roster


def remember_roster(body: bytes, roster: Roster) -> None:
    """Cache ``roster`` as the parse of ``body`` (the oldest of more than 16 is forgotten)."""
    _rosters[body] = roster
    _rosters.move_to_end(body)
    while len(_rosters) > _CACHE_SIZE:
        _rosters.popitem(last=False)
