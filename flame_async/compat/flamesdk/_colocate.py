"""One CPU for a compat call's two threads while the call runs.

A :class:`FlameCoreSDK` call hands work from the analysis's thread to the node's event loop
thread and back. The two threads never run Python at the same time (they take turns under the
GIL), but the operating system puts them on different CPUs, and every hand-off then wakes a
sleeping CPU: on a 2-core KVM machine a thread ping-pong takes 53 µs per round trip across
CPUs and 4 µs on one CPU. A call makes two hand-offs and the loop's work in between runs on a
CPU that has just woken up, so an acknowledged send took 1.45 ms instead of 1.2 ms.

:class:`Colocation` pins both threads to the CPU the caller runs on for the duration of each
call and gives both their own CPU sets back when the last call in flight returns. Between
calls nothing is pinned: the analysis's own work (numpy, its thread pools) keeps every CPU.
Threads the loop thread starts while a call runs inherit the one CPU: the runner gives each
analysis thread it starts the process's CPUs back first (:func:`unpin_inherited`); the others
are few and light (DNS look-ups, ``anyio.to_thread`` workers).

Linux only (``os.sched_setaffinity``); elsewhere, with one CPU, or with
``FLAME_ASYNC_COMPAT_COLOCATE=0`` it does nothing. An affinity call the system refuses turns it
off for the process, once, with a debug log line: pinning is an optimisation, never an error.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from asyncio import AbstractEventLoop
from collections.abc import Callable
from typing import Final

__all__ = ["COLOCATE_ENV", "Colocation", "colocation_for", "unpin_inherited"]

log = logging.getLogger("flame_async.compat.flamesdk")

COLOCATE_ENV: Final = "FLAME_ASYNC_COMPAT_COLOCATE"
"""Set to ``0`` to keep the threads where the operating system puts them."""


def _cpu_reader() -> Callable[[], int] | None:
    """libc's ``sched_getcpu`` (the caller's current CPU), where there is one."""
    try:
        func = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (AttributeError, OSError):
        return None
    func.restype = ctypes.c_int
    func.argtypes = []
    reader: Callable[[], int] = func
    return reader


_current_cpu: Final = _cpu_reader()

_PROCESS_CPUS: Final = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
"""The CPUs of the thread that imported this module: before any call could pin one."""

_pinned_to: set[int] = set()
"""Every CPU a call pinned a loop to (a thread pinned to one of them may have inherited it)."""


def _wanted() -> bool:
    return (
        hasattr(os, "sched_setaffinity")
        and os.environ.get(COLOCATE_ENV, "1").strip() != "0"
        and len(os.sched_getaffinity(0)) > 1
    )


class Colocation:
    """Pins a caller thread and an event loop's thread to one CPU while calls run.

    One per event loop (several ``FlameCoreSDK`` on the runner's loop share it). Thread-safe.

    Args:
        loop_thread: ``threading.get_native_id()`` of the loop's thread.
    """

    def __init__(self, loop_thread: int) -> None:
        self._loop_thread = loop_thread
        self._lock = threading.Lock()
        self._calls = 0
        self._cpu = -1
        self._loop_cpus: set[int] | None = None
        self.enabled = _wanted()

    def enter(self) -> set[int] | None:
        """Pin the calling thread (and the loop's, for the first call in flight).

        Returns:
            The caller's CPU set to give back to :meth:`leave`; None when nothing was pinned.
        """
        if not self.enabled:
            return None
        try:
            mine = os.sched_getaffinity(0)
            with self._lock:
                if self._calls == 0:
                    cpu = _current_cpu() if _current_cpu is not None else -1
                    if cpu not in mine:
                        cpu = min(mine)
                    self._loop_cpus = os.sched_getaffinity(self._loop_thread)
                    os.sched_setaffinity(self._loop_thread, {cpu})
                    self._cpu = cpu
                    _pinned_to.add(cpu)
                self._calls += 1
                cpu = self._cpu
        except OSError as exc:
            self._give_up(exc)
            return None
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:  # counted: leave() gives the loop its CPUs back
            self._give_up(exc)
        return mine

    def leave(self, mine: set[int] | None) -> None:
        """Give the caller its CPU set back (and the loop's, when no call is left)."""
        if mine is None:
            return
        try:
            os.sched_setaffinity(0, mine)
        except OSError as exc:
            self._give_up(exc)
        with self._lock:
            self._calls -= 1
            if self._calls or self._loop_cpus is None:
                return
            loop_cpus, self._loop_cpus = self._loop_cpus, None
        try:
            os.sched_setaffinity(self._loop_thread, loop_cpus)
        except OSError as exc:  # the loop's thread ended meanwhile
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        if self.enabled:
            self.enabled = False
            log.debug("not pinning compat calls to one CPU any more: %s", exc)


_by_loop: weakref.WeakKeyDictionary[AbstractEventLoop, Colocation] = weakref.WeakKeyDictionary()
_by_loop_lock = threading.Lock()


def colocation_for(loop: AbstractEventLoop, loop_thread: int) -> Colocation:
    """The :class:`Colocation` of ``loop`` (whose thread is ``loop_thread``), made on first use."""
    with _by_loop_lock:
        found = _by_loop.get(loop)
        if found is None:
            found = _by_loop[loop] = Colocation(loop_thread)
        return found


def unpin_inherited() -> None:
    """Give the calling thread the process's CPUs if it runs on one CPU a call pinned.

    A thread that the loop's thread starts while a call has it pinned inherits that one CPU
    for good. A thread that has not run its own code yet cannot have chosen it: call this
    first thing in such a thread (the runner does, in each analysis thread it starts).
    """
    if len(_PROCESS_CPUS) < 2 or not hasattr(os, "sched_setaffinity"):
        return
    try:
        mine = os.sched_getaffinity(0)
        if len(mine) == 1 and mine <= _pinned_to:
            os.sched_setaffinity(0, _PROCESS_CPUS)
    except OSError as exc:
        log.debug("could not give a new thread the process's CPUs back: %s", exc)
