"""The running platform as its services see it.

Services (broker, pod orchestrator, proxy, later storage and data) borrow everything from one
:class:`PlatformCore`: the analysis ids, the node table, the token issuer, the shared HTTP client
session and the task group. They never close or cancel any of it; :class:`LocalPlatform` does.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVarTuple

import aiohttp
from anyio.abc import TaskGroup
from yarl import URL

from ._node import LocalNode
from ._tokens import TokenIssuer

__all__ = ["PlatformCore"]

_Ts = TypeVarTuple("_Ts")
_LOOPBACK_ALIASES = {"127.0.0.1": ("localhost",), "::1": ("localhost",)}


class PlatformCore:
    """Shared state of one running platform.

    Args:
        analysis_id: The analysis every node takes part in.
        project_id: The analysis' project.
        host: The address the gateways listen on.
        nodes: The nodes, aggregator included, in participant order.
        issuer: Mints and verifies the nodes' tokens.
        session: The platform's one HTTP client session (deliveries, PO calls, proxying).
        task_group: Where background work runs; cancelled when the platform exits.
    """

    def __init__(
        self,
        *,
        analysis_id: str,
        project_id: str,
        host: str,
        nodes: Sequence[LocalNode],
        issuer: TokenIssuer,
        session: aiohttp.ClientSession,
        task_group: TaskGroup,
    ) -> None:
        self.analysis_id = analysis_id
        self.project_id = project_id
        self.host = host
        self.nodes: dict[str, LocalNode] = {node.node_id: node for node in nodes}
        self.issuer = issuer
        self.session = session
        self._task_group = task_group
        self._by_gateway: dict[tuple[str, int], LocalNode] = {}
        self._by_nginx_host: dict[str, LocalNode] = {}
        for node in nodes:
            for name in (host.lower(), *_LOOPBACK_ALIASES.get(host, ())):
                self._by_gateway[(name, node.gateway_port)] = node
            self._by_nginx_host[node.nginx_host] = node

    def spawn(self, func: Callable[[*_Ts], Coroutine[Any, Any, object]], *args: *_Ts) -> None:
        """Run ``func(*args)`` as a new task in the platform's task group.

        The task is cancelled when the platform exits. It must handle its own errors: an
        exception escaping it would cancel the whole platform.

        Raises:
            RuntimeError: The task group is no longer active (the platform is shutting down).
        """
        self._task_group.start_soon(func, *args)

    def node_behind(self, url: URL) -> LocalNode | None:
        """The node whose gateway ``url`` points at, if any.

        A URL points at a gateway when its host and port are a node gateway's (``localhost`` is
        accepted for a loopback host) or its host is ``nginx-{DEPLOYMENT_NAME}`` of a node on
        the default port 80.
        """
        host = url.host
        if host is None:
            return None
        port = url.port
        if port is not None and (node := self._by_gateway.get((host.lower(), port))) is not None:
            return node
        if port in (None, 80):
            return self._by_nginx_host.get(host.lower())
        return None
