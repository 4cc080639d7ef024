"""Handed-over messages waiting for the analysis, the waits for them, and which peers ended.

A message leaves its queue only when :meth:`Mailbox.take` hands it to a caller. Waiters are
registered with what they wait for; when a matching message is queued or an awaited peer ends,
the mailbox names the waiters to wake. A woken waiter takes its message itself, so a waiter
that is cancelled or times out in between takes nothing with it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from collections.abc import Set as AbstractSet

import orjson

from ..errors import PeerFailed, ServiceUnavailable
from ..models import Message

__all__ = ["Mailbox", "Waiter"]


@dataclasses.dataclass(frozen=True, slots=True)
class Waiter:
    """One wait: messages of ``category`` (any if None) from ``senders`` (any if None)."""

    senders: frozenset[str] | None
    category: str | None

    def wants(self, sender: str, category: str | None) -> bool:
        """True if a message (or news about a peer, ``category`` None) may be for it."""
        if self.senders is not None and sender not in self.senders:
            return False
        return category is None or self.category is None or category == self.category

    def describe(self) -> str:
        """One line for diagnostics."""
        who = ", ".join(sorted(self.senders)) if self.senders is not None else "any node"
        what = f"a {self.category!r} message" if self.category else "a message"
        return f"{what} from {who}"


class Mailbox:
    """Per-sender FIFO queues, registered waits and ended peers of one node.

    Args:
        participants: The other nodes (waits on all peers mean these).
    """

    def __init__(self, participants: Iterable[str]) -> None:
        self.participants: AbstractSet[str] = (
            participants if isinstance(participants, AbstractSet) else frozenset(participants)
        )
        self._queues: dict[str, deque[tuple[int, Message]]] = {}
        """Per sender, in hand-over order: ``(rank, message)``, ranks rising. The rank (not the
        arrival time) is the order: a held message is handed over after the earlier-numbered
        one that arrived later."""
        self._ranks = 0
        self._sizes: dict[tuple[str, str], int] = {}
        """Bytes of each queued message as it arrived, by ``(sender, id)``."""
        self.queued_bytes: Counter[str] = Counter()
        """Per sender: bytes of its queued messages (as they arrived)."""
        self._waiters: dict[int, Waiter] = {}
        self._news: dict[int, set[str] | None] = {}
        """Per wait: the senders there was news from since it was registered (None: all)."""
        self._next_waiter = 0
        self.closed: dict[str, PeerFailed] = {}
        self.closed_all: PeerFailed | None = None
        self.unreachable: ServiceUnavailable | None = None
        """Set while the node's services cannot be reached: waits end with it."""
        self._pending_of: Counter[str] = Counter()
        self._pending: set[tuple[str, str]] = set()
        """Queued messages whose payload is still being read from storage: unseen, and the
        sender's later messages wait behind them."""
        self._failed: dict[tuple[str, str], Exception] = {}
        """Queued messages whose payload could not be read: the next take of their sender
        raises the error (and removes them)."""

    # -- queues ------------------------------------------------------------------------------

    def enqueue(self, message: Message, size: int = 0, *, pending: bool = False) -> tuple[int, ...]:
        """Queue ``message`` (``size`` bytes as it arrived) after its sender's others; returns
        the waiters to wake (none while it is ``pending``: see :meth:`resolve`)."""
        self._ranks += 1
        key = (message.sender, message.id)
        self._queues.setdefault(message.sender, deque()).append((self._ranks, message))
        self._sizes[key] = size
        self.queued_bytes[message.sender] += size
        if pending:
            self._pending.add(key)
            self._pending_of[message.sender] += 1
            return ()
        if self._pending_of[message.sender]:
            return ()  # behind a message still read from storage: news once that one is in
        return self.waiters_for(message.sender, message.category)

    def resolve(self, message: Message, size: int) -> tuple[int, ...]:
        """A pending message's payload arrived: ``message`` replaces it in place (``size``
        bytes); returns the waiters to wake."""
        key = (message.sender, message.id)
        if key not in self._pending:
            return ()
        self._unpend(key)
        self._replace(message)
        self.queued_bytes[message.sender] += size - self._sizes.get(key, 0)
        self._sizes[key] = size
        return self.waiters_for(message.sender, None)  # it, and what waited behind it

    def _unpend(self, key: tuple[str, str]) -> None:
        self._pending.discard(key)
        self._pending_of[key[0]] -= 1

    def fail(self, message: Message, error: Exception) -> tuple[int, ...]:
        """A pending message's payload cannot be read: its sender's next take raises
        ``error``; returns the waiters to wake."""
        key = (message.sender, message.id)
        if key not in self._pending:
            return ()
        self._unpend(key)
        self._failed[key] = error
        return self.waiters_for(message.sender, None)

    def discard(self, message: Message) -> None:
        """Remove a queued message without handing it to a wait (it went to a handler)."""
        key = (message.sender, message.id)
        queue = self._queues.get(message.sender, deque())
        for index, (_, queued) in enumerate(queue):
            if queued.id == message.id:
                del queue[index]
                break
        if key in self._pending:
            self._unpend(key)
        self.queued_bytes[message.sender] -= self._sizes.pop(key, 0)

    def _replace(self, message: Message) -> None:
        queue = self._queues.get(message.sender, deque())
        for index, (rank, queued) in enumerate(queue):
            if queued.id == message.id:
                queue[index] = (rank, message)
                return

    def requeue(self, message: Message, rank: int) -> None:
        """Put a message taken with :meth:`take_ranked` back where it was (its wait was
        abandoned after taking it)."""
        queue = self._queues.setdefault(message.sender, deque())
        index = next((i for i, (queued, _) in enumerate(queue) if queued > rank), len(queue))
        queue.insert(index, (rank, message))
        size = len(orjson.dumps(message.data))  # about what it took on arrival (rare path)
        self._sizes[message.sender, message.id] = size
        self.queued_bytes[message.sender] += size

    def backlog(self, sender: str) -> tuple[int, int]:
        """How many messages of ``sender`` are queued, and their bytes."""
        return len(self._queues.get(sender, ())), self.queued_bytes[sender]

    def take(
        self,
        senders: Collection[str] | None,
        predicate: Callable[[Message], bool] | None = None,
    ) -> Message | None:
        """Remove and return the first queued message of ``senders`` (any sender if None).

        Among several senders the one whose first matching message arrived first wins; within
        one sender the first message matching ``predicate`` in hand-over order is taken. A
        message whose payload is still read from storage is not seen yet, nor anything its
        sender sent after it.

        Raises:
            Exception: As :meth:`take_ranked`.
        """
        taken = self.take_ranked(senders, predicate)
        return None if taken is None else taken[1]

    def take_ranked(
        self,
        senders: Collection[str] | None,
        predicate: Callable[[Message], bool] | None = None,
    ) -> tuple[int, Message] | None:
        """Like :meth:`take`, with the message's rank, for :meth:`requeue`.

        Raises:
            Exception: The sender's next message could not be read from storage (the error
                :meth:`fail` recorded); it is removed, so the take after it goes on.
        """
        best: tuple[Message, str, int] | None = None
        names = self._queues.keys() if senders is None else senders
        special = self._pending or self._failed
        for sender in names:
            queue = self._queues.get(sender)
            if not queue:
                continue
            for index, (_, message) in enumerate(queue):
                if special:
                    key = (sender, message.id)
                    if key in self._pending:
                        break  # unseen yet, and the sender's later messages wait behind it
                    if key in self._failed:  # the error is the news, whatever was asked
                        if best is None or message.arrived_at < best[0].arrived_at:
                            best = (message, sender, index)
                        break
                if predicate is None or predicate(message):
                    if best is None or message.arrived_at < best[0].arrived_at:
                        best = (message, sender, index)
                    break
        if best is None:
            return None
        _, sender, index = best
        queue = self._queues[sender]
        entry = queue[index]
        del queue[index]
        key = (sender, entry[1].id)
        self.queued_bytes[sender] -= self._sizes.pop(key, 0)
        if (error := self._failed.pop(key, None)) is not None:
            raise error
        return entry

    def peek(
        self,
        senders: Collection[str] | None = None,
        predicate: Callable[[Message], bool] | None = None,
    ) -> list[Message]:
        """Queued messages in hand-over order, without removing them (not those still read
        from storage, nor what their senders sent after them)."""
        names = self._queues.keys() if senders is None else senders
        found: list[tuple[int, Message]] = []
        for sender in names:
            for rank, message in self._queues.get(sender, ()):
                key = (sender, message.id)
                if key in self._pending:
                    break  # unseen, and so is what its sender sent after it
                if key not in self._failed and (predicate is None or predicate(message)):
                    found.append((rank, message))
        return [m for _, m in sorted(found, key=lambda entry: entry[0])]

    def queued_count(self) -> int:
        """How many messages wait in all queues."""
        return sum(len(q) for q in self._queues.values())

    # -- waiters -----------------------------------------------------------------------------

    def add_waiter(self, senders: frozenset[str] | None, category: str | None) -> int:
        """Register a wait; returns its id."""
        self._next_waiter += 1
        self._waiters[self._next_waiter] = Waiter(senders, category)
        self._news[self._next_waiter] = set()
        return self._next_waiter

    def remove_waiter(self, waiter_id: int) -> set[str] | None:
        """Forget a wait (unknown ids are ignored); returns the senders it had news from
        (None: news about every sender, e.g. this node lost its services)."""
        self._waiters.pop(waiter_id, None)
        return self._news.pop(waiter_id, None)

    def waiters_for(self, sender: str | None, category: str | None) -> tuple[int, ...]:
        """The waits that news from ``sender`` (every wait if None) may concern; each
        remembers the sender (see :meth:`remove_waiter`)."""
        news = self._news
        if sender is None:
            for waiter_id in self._waiters:
                news[waiter_id] = None
            return tuple(self._waiters)
        woken = tuple(i for i, w in self._waiters.items() if w.wants(sender, category))
        for waiter_id in woken:
            if (senders := news.get(waiter_id)) is not None:
                senders.add(sender)
        return woken

    def describe_waits(self) -> list[str]:
        """One line per wait."""
        return [w.describe() for w in self._waiters.values()]

    # -- ended peers -------------------------------------------------------------------------

    def close_peer(self, node_id: str, status: str, reason: str) -> PeerFailed | None:
        """Record that ``node_id`` ended; returns the record if this is news."""
        if node_id not in self.participants or node_id in self.closed:
            return None
        failure = self.closed[node_id] = PeerFailed(node_id, status, reason)
        return failure

    def close_all(self, status: str, reason: str) -> PeerFailed | None:
        """Every wait ends: this node adopted a terminal status (returns it if news)."""
        if self.closed_all is not None:
            return None
        self.closed_all = PeerFailed(None, status, reason)
        return self.closed_all

    def failure(self) -> PeerFailed | None:
        """The first peer failure seen (or the adopted status), if any."""
        if self.closed_all is not None:
            return self.closed_all
        return next((c for c in self.closed.values() if c.status != "executed"), None)

    def check_closed(self, senders: frozenset[str] | None) -> None:
        """Raise when every awaited sender has ended (a failure first, else a finish).

        Raises:
            ServiceUnavailable: The node's services cannot be reached (see :attr:`unreachable`).
            PeerFailed: Nobody awaited will send anything more.
        """
        if self.unreachable is not None:
            raise self.unreachable
        if self.closed_all is not None:
            raise self.closed_all
        names = self.participants if senders is None else senders
        closed = [self.closed[s] for s in names if s in self.closed]
        if closed and len(closed) == len(names):
            failed = [c for c in closed if c.status != "executed"]
            raise (failed or closed)[0]

    def drop_ended(self, remaining: set[str]) -> None:
        """Stop waiting for finished senders; raise for a failed or stopped one.

        Raises:
            ServiceUnavailable: The node's services cannot be reached (see :attr:`unreachable`).
            PeerFailed: An awaited sender failed or stopped (or this node adopted a status).
        """
        if self.unreachable is not None:
            raise self.unreachable
        if self.closed_all is not None:
            raise self.closed_all
        ended = sorted(name for name in self.closed if name in remaining)  # few ever end
        for name in ended:
            if self.closed[name].status != "executed":
                raise self.closed[name]
        remaining.difference_update(ended)
