"""What a platform service is: path prefixes it serves and the routes it adds to a gateway.

A service contributes routes to every node gateway (:meth:`NodeService.routes`) and declares the
path prefixes it serves. The gateway answers 501 for the prefixes of the real nginx that no
service claims, so adding a service means adding an object to the platform's list, not
changing the gateway. The routes are plain logic on the project's own request and response
types (:mod:`._http`): the same code answers over HTTP and in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ._http import Route
from ._node import LocalNode

__all__ = ["NodeService"]


class NodeService(Protocol):
    """A node service reachable through every node gateway."""

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The gateway path prefixes this service serves, e.g. ``("/message-broker",)``."""
        ...

    def routes(self, node: LocalNode) -> Iterable[Route]:
        """The service's routes on ``node``'s gateway (full gateway paths; ``node`` is self).

        Called once per node, before the platform serves anything.
        """
        ...
