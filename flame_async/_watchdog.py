"""Noticing a blocked event loop, and where the analysis blocked it.

An analysis that computes on the event loop (``time.sleep``, a large numpy fit, a pandas
pivot) stops everything else its node does: acknowledgements, the node API, shipping logs. From
inside the loop nothing can see that, so a :class:`LoopWatchdog` watches from a thread: the loop
beats a timer every ``beat`` seconds; when the thread sees no beat for ``threshold`` seconds it
looks at the loop thread's stack, finds the innermost frame of the analysis' own code
(``analysis.py:12``) and reports a :class:`Block`; when the loop beats again, the block ends and
is reported with its length.

One watchdog serves every ``FlameSDK`` on a loop (the local runner puts many nodes on one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import ClassVar, Final

from ._failures import is_user_file

__all__ = ["Block", "LoopWatchdog", "blocking_site"]

_BEAT: Final = 0.1
_POLL: Final = 0.05


@dataclasses.dataclass(slots=True)
class Block:
    """One stretch of time the event loop did not run.

    Attributes:
        started: ``time.monotonic()`` when the loop last ran before it.
        seconds: How long it lasted (so far, while ``ongoing``).
        location: ``file.py:LINE (in function)`` of the analysis code that blocked, if found.
        task: Name of the asyncio task that was running, if known.
        node: The node that task runs, when the local runner labelled it (else ``""``).
        ongoing: True until the loop runs again.
    """

    started: float
    seconds: float
    location: str
    task: str
    node: str = ""
    ongoing: bool = True

    def describe(self) -> str:
        """``blocked for 19.8 s at analysis.py:7 (in main)``."""
        where = f" at {self.location}" if self.location else ""
        state = "has been blocked" if self.ongoing else "was blocked"
        return f"{state} for {self.seconds:.1f} s{where}"


def blocking_site(frame: FrameType | None) -> str:
    """``file.py:LINE (in function)`` of the innermost analysis frame of a stack, or ``""``."""
    for summary in reversed(traceback.extract_stack(frame)):
        if is_user_file(summary.filename):
            return f"{Path(summary.filename).name}:{summary.lineno} (in {summary.name})"
    return ""


Listener = Callable[[Block], None]
"""Told (in the loop's thread) when a block has ended; ``ongoing`` is False then."""

Reporter = Callable[[Block], None]
"""Told from the watchdog's own thread while a block goes on (when it starts, then every
second): the only code that can act while the loop is stuck. It must be quick and must not
touch the loop."""


class LoopWatchdog:
    """Watches one event loop from a daemon thread.

    Use :meth:`for_loop` to get the loop's watchdog (it starts with its first subscriber and
    stops with its last).

    Args:
        loop: The loop to watch.
        threshold: Seconds without a beat that count as blocked.
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWatchdog]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, *, threshold: float = 1.0) -> None:
        self._loop = loop
        self.threshold = threshold
        self._loop_thread = threading.get_ident()
        self._last_beat = time.monotonic()
        self._lock = threading.Lock()
        self._current: Block | None = None
        self._listeners: dict[int, Listener] = {}
        self._reporters: dict[int, Reporter] = {}
        self._next_id = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.blocks: list[Block] = []
        """Every block seen (the last 100), oldest first."""
        self.task_labels: weakref.WeakKeyDictionary[asyncio.Task[object], str] = (
            weakref.WeakKeyDictionary()
        )
        """The node each task runs (the local runner labels each node's task)."""

    @classmethod
    def for_loop(cls, threshold: float = 1.0) -> LoopWatchdog:
        """The running loop's watchdog (created on first use)."""
        loop = asyncio.get_running_loop()
        found = cls._by_loop.get(loop)
        if found is None:
            found = cls._by_loop[loop] = cls(loop, threshold=threshold)
        return found

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener, reporter: Reporter | None = None) -> int:
        """Start watching (if not yet) and tell ``listener`` about every block that ends (and
        ``reporter``, from the watchdog's thread, about blocks while they last)."""
        self._next_id += 1
        self._listeners[self._next_id] = listener
        if reporter is not None:
            with self._lock:
                self._reporters[self._next_id] = reporter
        if self._thread is None:
            self._start()
        return self._next_id

    def unsubscribe(self, token: int) -> None:
        """Stop telling that subscriber; the last one out stops the watching."""
        self._listeners.pop(token, None)
        with self._lock:
            self._reporters.pop(token, None)
        if not self._listeners:
            self._halt()

    def current(self) -> Block | None:
        """The block going on right now, as the thread last saw it (any thread may ask)."""
        with self._lock:
            return dataclasses.replace(self._current) if self._current else None

    # -- the loop side -------------------------------------------------------------------------

    def _start(self) -> None:
        self._stop.clear()
        self._last_beat = time.monotonic()
        self._handle = self._loop.call_later(_BEAT, self._beat)
        self._thread = threading.Thread(
            target=self._watch, name="flame-async loop watchdog", daemon=True
        )
        self._thread.start()

    def _halt(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)

    def _beat(self) -> None:
        now = time.monotonic()
        with self._lock:
            ended, self._current = self._current, None
            self._last_beat = now
            if ended is not None:
                ended.seconds = now - ended.started
                ended.ongoing = False
                self.blocks.append(ended)
                del self.blocks[:-100]
        if ended is not None:
            for listener in list(self._listeners.values()):
                listener(ended)
        self._handle = self._loop.call_later(_BEAT, self._beat)

    # -- the watching thread -------------------------------------------------------------------

    def _watch(self) -> None:
        reported = 0.0
        while not self._stop.wait(_POLL):
            now = time.monotonic()
            with self._lock:
                silent = now - self._last_beat
                if silent < self.threshold + _BEAT:
                    continue
                if self._current is None:
                    task, node = self._task()
                    self._current = Block(
                        started=self._last_beat,
                        seconds=silent,
                        location=self._site(),
                        task=task,
                        node=node,
                    )
                    reported = 0.0
                else:
                    self._current.seconds = silent
                block = dataclasses.replace(self._current)
                reporters = list(self._reporters.values())
            if reporters and now - reported >= 1.0:
                reported = now
                for reporter in reporters:
                    reporter(block)

    def _site(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        return blocking_site(frame)

    def _task(self) -> tuple[str, str]:
        task = asyncio.current_task(self._loop)  # a dict lookup: safe enough from a thread
        if task is None:
            return "", ""
        return task.get_name(), self.task_labels.get(task, "")
