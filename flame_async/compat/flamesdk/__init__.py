"""flamesdk 0.6's synchronous API on flame-async: ``from flamesdk import FlameCoreSDK`` runs
on flame-async's runtime unchanged.

Use it directly (``from flame_async.compat.flamesdk import FlameCoreSDK``), or make
``import flamesdk`` resolve to it: ``flame-async run --flamesdk-compat SCRIPT`` does that on
every node, ``python -m flame_async.compat.flamesdk SCRIPT`` runs one node (a container's
command), and :func:`install` does it in a running interpreter. See
``docs/howto/migrating.md``.
"""

from ._alias import COMPAT_ENV, install, installed, uninstall
from ._core import FlameCoreSDK, FlameCoreSDKError, Message, NodeConfig
from ._ending import AnalysisEnded

__all__ = [
    "COMPAT_ENV",
    "AnalysisEnded",
    "FlameCoreSDK",
    "FlameCoreSDKError",
    "Message",
    "NodeConfig",
    "install",
    "installed",
    "uninstall",
]
