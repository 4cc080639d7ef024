"""flame-async: an asyncio-native SDK for federated analyses on the FLAME platform.

Start with :class:`FlameSDK`::

    async with FlameSDK() as flame:
        ...
"""

from ._version import __version__
from .config import FlameConfig, RetryPolicy
from .errors import (
    AuthenticationError,
    CodecError,
    ConfigError,
    DataSourceError,
    FlameError,
    InvalidArgument,
    MessageTimeout,
    MissingExtra,
    NotAggregatorError,
    NotFoundError,
    PeerFailed,
    PickleNotAllowed,
    RemoteError,
    RequestTimeout,
    SDKStateError,
    ServiceError,
    ServiceUnavailable,
    StartupError,
    TransportError,
    UnknownNodeError,
)
from .models import (
    Category,
    Message,
    NodeRole,
    NodeStatus,
    Participant,
    RunStatus,
    SendReport,
)
from .sdk import FlameSDK
from .status import Progress

__all__ = [
    "AuthenticationError",
    "Category",
    "CodecError",
    "ConfigError",
    "DataSourceError",
    "FlameConfig",
    "FlameError",
    "FlameSDK",
    "InvalidArgument",
    "Message",
    "MessageTimeout",
    "MissingExtra",
    "NodeRole",
    "NodeStatus",
    "NotAggregatorError",
    "NotFoundError",
    "Participant",
    "PeerFailed",
    "PickleNotAllowed",
    "Progress",
    "RemoteError",
    "RequestTimeout",
    "RetryPolicy",
    "RunStatus",
    "SDKStateError",
    "SendReport",
    "ServiceError",
    "ServiceUnavailable",
    "StartupError",
    "TransportError",
    "UnknownNodeError",
    "__version__",
]
