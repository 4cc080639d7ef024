"""One emulated node as the platform hands it to an analysis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import FlameConfig

__all__ = ["LocalNode", "NodeRole"]

NodeRole = Literal["default", "aggregator"]


@dataclass(frozen=True, slots=True, eq=False)
class LocalNode:
    """A node of a running :class:`~flame_async.local.LocalPlatform`.

    Attributes:
        node_id: The node id the broker reports (``nodeId``).
        role: ``"aggregator"`` or ``"default"`` (the broker's ``nodeType``).
        deployment_name: The node's ``DEPLOYMENT_NAME``; ``nginx-{deployment_name}`` is the
            host name the shared port routes to this node.
        gateway_url: Base URL of the node's gateway (its "nginx"), e.g. ``http://127.0.0.1:4711``;
            on the in-memory platform ``http://nginx-{deployment_name}``, which only the
            in-memory transport reaches.
        gateway_port: The port of :attr:`gateway_url` (80 on the in-memory platform).
        env: The environment of the node's analysis: the five platform variables plus
            ``FLAME_BASE_URL``, ``FLAME_API_HOST``, ``FLAME_API_PORT`` (0: the node binds any
            free port), ``FLAME_ANNOUNCE_API`` (1: it then tells its gateway which) and
            ``FLAME_PARTNER_STATUS_GRACE``. Token refreshes by the pod orchestrator do not
            change it.
    """

    node_id: str
    role: NodeRole
    deployment_name: str
    gateway_url: str
    gateway_port: int
    env: dict[str, str] = field(repr=False)

    @property
    def nginx_host(self) -> str:
        """The host name standing in for the node's nginx sidecar: ``nginx-{deployment_name}``."""
        return f"nginx-{self.deployment_name}"

    def config(self, **overrides: Any) -> FlameConfig:
        """Build the node's :class:`~flame_async.config.FlameConfig` from :attr:`env`.

        Args:
            **overrides: Field values that win over the environment.

        Raises:
            ConfigError: An override leaves the configuration invalid.
        """
        return FlameConfig.from_env(self.env, **overrides)
