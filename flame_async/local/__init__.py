"""The local FLAME platform: every node service of an analysis on one machine.

:class:`LocalPlatform` serves, over real HTTP on 127.0.0.1 (or, with ``transport="memory"``,
by calls in the same event loop), what the FLAME platform gives each analysis container: a
gateway per node standing in for its nginx sidecar, with the message broker, the storage
service, the hub-adapter data-store listing and the Kong data proxy behind it, the pod
orchestrator's log intake and status loop, and the ``/analysis`` ingress to the node's own API.
Run N copies of an analysis against it, in one process or one per node::

    async with LocalPlatform(3) as platform:
        async with anyio.create_task_group() as tg:
            for node in platform.nodes:
                tg.start_soon(my_analysis, node.config())
"""

from ._core import NodeUnreachable
from ._data import DataFolderError
from ._faults import ApiOutage, FaultPlan, Faults
from ._hub_emulator import HubEmulator, HubEmulatorStateError, HubFaults
from ._memory import MemoryTransport
from ._node import LocalNode, NodeRole
from ._platform import LocalPlatform, PlatformStateError, TransportKind
from ._records import (
    DeliveryCounts,
    DeliveryEvent,
    DeliveryOutcome,
    LogRecord,
    NodeDeliveryCounts,
)
from ._tokens import InvalidToken

__all__ = [
    "ApiOutage",
    "DataFolderError",
    "DeliveryCounts",
    "DeliveryEvent",
    "DeliveryOutcome",
    "FaultPlan",
    "Faults",
    "HubEmulator",
    "HubEmulatorStateError",
    "HubFaults",
    "InvalidToken",
    "LocalNode",
    "LocalPlatform",
    "LogRecord",
    "MemoryTransport",
    "NodeDeliveryCounts",
    "NodeRole",
    "NodeUnreachable",
    "PlatformStateError",
    "TransportKind",
]
