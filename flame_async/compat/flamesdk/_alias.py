"""``import flamesdk`` resolving to the compatibility layer.

:func:`install` puts a finder first on ``sys.meta_path``: ``flamesdk`` becomes
:mod:`flame_async.compat.flamesdk` (even where the real flamesdk is installed), and its
sub-modules (``flamesdk.resources...``, flamesdk's internals) fail with an error that says so.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Final

__all__ = ["COMPAT_ENV", "install", "installed", "uninstall"]

COMPAT_ENV: Final = "FLAME_ASYNC_FLAMESDK_COMPAT"
"""Set to ``1`` to run the analysis's ``import flamesdk`` on this layer: read by
``flame-async run`` (as ``--flamesdk-compat``) and by the optional ``.pth`` line for
containers (see ``docs/howto/migrating.md``)."""

_NAME: Final = "flamesdk"


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        from flame_async.compat import flamesdk

        return flamesdk

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the compatibility module is already imported."""


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``flamesdk`` (the compat layer) and refuses its sub-modules."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == _NAME:
            return importlib.machinery.ModuleSpec(_NAME, _Loader(), origin="flame-async compat")
        if fullname.startswith(_NAME + "."):
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: 'flamesdk' is flame-async's compatibility "
                "layer here, which offers flamesdk's public API (from flamesdk import "
                "FlameCoreSDK), not its internals",
                name=fullname,
            )
        return None


_FINDER: Final = _Finder()


def install() -> None:
    """Make ``import flamesdk`` resolve to the compatibility layer in this interpreter
    (idempotent). A ``flamesdk`` imported before keeps its place in ``sys.modules`` only
    until this call: it is replaced."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    module = sys.modules.get(_NAME)
    if module is not None and getattr(module, "__name__", "") != "flame_async.compat.flamesdk":
        for name in [n for n in sys.modules if n == _NAME or n.startswith(_NAME + ".")]:
            del sys.modules[name]


def uninstall() -> None:
    """Undo :func:`install`."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    module = sys.modules.get(_NAME)
    if module is not None and getattr(module, "__name__", "") == "flame_async.compat.flamesdk":
        del sys.modules[_NAME]


def installed() -> bool:
    """True while ``import flamesdk`` resolves to the compatibility layer."""
    return _FINDER in sys.meta_path
