"""Ending an analysis thread from outside it, as the PO ends a pod.

flamesdk analyses end in a busy loop (``StarModel``: ``while True: pass``) and rely on the
platform deleting the pod once the node reports ``executed``. A thread cannot be killed, and a
bare loop calls nothing a trace or profile hook would see, but CPython checks for an
*asynchronous exception* at every backward jump: :func:`raise_in_thread` posts one
(``PyThreadState_SetAsyncExc``), and the loop stops at its next iteration. Blocking C calls
(``time.sleep``, a lock wait) see it only when they return.
"""

from __future__ import annotations

import ctypes

__all__ = ["AnalysisEnded", "raise_in_thread"]


class AnalysisEnded(SystemExit):
    """Raised in an analysis thread whose node has finished (the analysis announced or
    received ``analysis_finished``): the compat layer's stand-in for the PO deleting the pod.

    A ``SystemExit`` with code 0: ``python SCRIPT`` exits normally, and the runner's threads
    treat it as a normal end.
    """

    def __init__(self) -> None:
        super().__init__(0)


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Make ``exc_type`` be raised in the thread ``thread_id`` at its next bytecode.

    Returns:
        True when the exception was posted (the thread exists).
    """
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    posted = int(set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)))
    if posted > 1:  # cannot happen with a valid id; undo as the C API asks
        set_async_exc(ctypes.c_ulong(thread_id), None)
        return False
    return posted == 1
