"""Timeouts for long waits without a loop timer each.

``asyncio.timeout`` pushes a timer into the event loop's heap and cancels it when the block
ends. A simulation with thousands of nodes in one loop keeps thousands of waits open (every
analyzer awaiting its next message, 60 s each), so every wait pays a push into a heap of
thousands, compared entry by entry in Python (``TimerHandle.__lt__``), and the cancelled
timers stay in the heap until it is rebuilt.

:func:`timeout` bounds a wait of at least :data:`COARSE_FROM` seconds on a shared grid of
:data:`RESOLUTION`-second slots instead: waits whose deadlines fall in the same slot share one
loop timer, and a wait that ends in time only leaves its slot's set. Such a wait ends up to one
resolution late (at most 5 % of its timeout). Shorter waits get ``asyncio.timeout`` itself.
Either way the block behaves as ``asyncio.timeout``'s does: past the deadline it raises
``TimeoutError``; a cancellation from elsewhere wins; ``expired()`` tells which.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final, Protocol

__all__ = ["COARSE_FROM", "RESOLUTION", "Deadline", "timeout"]

RESOLUTION: Final = 0.05
"""Seconds per slot of the shared grid."""

COARSE_FROM: Final = 1.0
"""Waits at least this long go on the grid; shorter ones get their own loop timer."""


class Deadline(Protocol):
    """What ``async with timeout(...) as deadline`` gives: ``asyncio.Timeout``'s query."""

    def expired(self) -> bool:
        """Whether the deadline passed and ended the block."""
        ...


class _Slot:
    __slots__ = ("waits",)

    def __init__(self) -> None:
        self.waits: set[_CoarseTimeout] = set()


class _Grid:
    """One loop's slots: slot ``n`` ends at loop time ``n * RESOLUTION``."""

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, _Slot] = {}

    def join(self, wait: _CoarseTimeout, delay: float) -> _Slot:
        index = math.ceil((self._loop.time() + delay) / RESOLUTION)
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = _Slot()
            self._loop.call_at(index * RESOLUTION, self._end, index)
        slot.waits.add(wait)
        return slot

    def _end(self, index: int) -> None:
        slot = self._slots.pop(index)
        for wait in slot.waits:
            wait.expire()


_grids: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Grid] = weakref.WeakKeyDictionary()


class _CoarseTimeout:
    """``asyncio.timeout(delay)`` on the loop's grid (see the module)."""

    __slots__ = ("__weakref__", "_cancelling", "_delay", "_expired", "_loop", "_slot", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._expired = False
        self._slot: _Slot | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    def expired(self) -> bool:
        return self._expired

    def expire(self) -> None:
        """Called by the grid: the deadline passed while the block still ran."""
        if self._task is not None and self._slot is not None:
            self._expired = True
            self._slot = None
            self._task.cancel()

    async def __aenter__(self) -> _CoarseTimeout:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("timeout() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        grid = _grids.get(self._loop)
        if grid is None:
            grid = _grids[self._loop] = _Grid(self._loop)
        self._slot = grid.join(self, self._delay)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._slot is not None:  # ended in time: leave the slot (its timer stays, harmless)
            self._slot.waits.discard(self)
            self._slot = None
        # past the deadline: undo the grid's cancel; what remains is somebody else's (it wins)
        if (
            self._expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


def timeout(loop: asyncio.AbstractEventLoop, delay: float) -> AbstractAsyncContextManager[Deadline]:
    """``asyncio.timeout(delay)`` for a task of ``loop``; a wait of :data:`COARSE_FROM`
    seconds or more shares a loop timer with the waits that end in the same
    :data:`RESOLUTION`-second slot, and may end up to that much late.

    Raises (from the block):
        TimeoutError: The deadline passed.
    """
    if delay >= COARSE_FROM and math.isfinite(delay):
        return _CoarseTimeout(loop, delay)
    return asyncio.timeout(delay)
