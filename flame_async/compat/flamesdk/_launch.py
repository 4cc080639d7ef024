"""Running a flamesdk analysis file on the compatibility layer, as ``python SCRIPT`` would.

Used by ``python -m flame_async.compat.flamesdk SCRIPT`` (one node, e.g. a container's
command), by ``flame-async run --flamesdk-compat --mode processes`` (one process per node) and,
per node thread, by ``--mode inprocess``.
"""

from __future__ import annotations

import builtins
import runpy
import sys
import threading
import types
from pathlib import Path

from ._alias import install
from ._core import close_thread_instances
from ._ending import AnalysisEnded

__all__ = ["run_as_main", "run_in_thread"]


def run_as_main(script: str) -> None:
    """Run ``script`` as ``__main__`` in this (main) thread with ``import flamesdk`` on the
    compatibility layer; ``sys.argv`` and ``sys.path[0]`` as ``python SCRIPT`` sets them.
    The node's ending (:class:`AnalysisEnded`) leaves by ``SystemExit(0)``."""
    install()
    path = str(Path(script).resolve())
    sys.argv = [script]
    sys.path.insert(0, str(Path(path).parent))
    runpy.run_path(path, run_name="__main__")


def run_in_thread(script: Path, source: str) -> None:
    """Run ``script`` (its ``source``) as ``__main__`` in the current, non-main thread: a node
    of an in-process run. Its module is its own (not ``sys.modules['__main__']``, which the
    other nodes share); every ``FlameCoreSDK`` it created is closed when it ends, ``failed``
    with the exception that ended it, if any.

    Raises:
        BaseException: Whatever the analysis raised (a normal end, :class:`AnalysisEnded` or
            ``SystemExit(0)``, returns).
    """
    install()
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    module.__dict__["__builtins__"] = builtins
    code = compile(source, str(script), "exec")
    ident = threading.get_ident()
    error: BaseException | None = None
    try:
        exec(code, module.__dict__)  # noqa: S102 - running the user's analysis is the point
    except AnalysisEnded:
        pass
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = exc
            raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        close_thread_instances(ident, error)
