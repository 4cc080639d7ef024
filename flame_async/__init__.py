"""flame-async: an asyncio-native SDK for federated analyses on the FLAME platform.

Start with :class:`FlameSDK`::

    async with FlameSDK() as flame:
        ...
"""

from ._version import __version__
from .config import FlameConfig, RetryPolicy
from .data import (
    DataSource,
    DataSourceKind,
    FhirClient,
    S3Client,
    fhir_to_dataframe,
    fhir_to_dataframe_async,
)
from .errors import (
    AuthenticationError,
    CodecError,
    ConfigError,
    DataAccessError,
    DataSourceError,
    FlameError,
    IncompleteResponse,
    InvalidArgument,
    MessageTimeout,
    MessageTooLarge,
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
    UnknownDataSource,
    UnknownNodeError,
)
from .models import (
    Category,
    LocalDP,
    Message,
    NodeRole,
    NodeStatus,
    Participant,
    ResultInfo,
    RunStatus,
    SendReport,
)
from .sdk import FlameSDK
from .status import Progress
from .transport import AiohttpTransport, Transport

__all__ = [
    "AiohttpTransport",
    "AuthenticationError",
    "Category",
    "CodecError",
    "ConfigError",
    "DataAccessError",
    "DataSource",
    "DataSourceError",
    "DataSourceKind",
    "FhirClient",
    "FlameConfig",
    "FlameError",
    "FlameSDK",
    "IncompleteResponse",
    "InvalidArgument",
    "LocalDP",
    "Message",
    "MessageTimeout",
    "MessageTooLarge",
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
    "ResultInfo",
    "RetryPolicy",
    "RunStatus",
    "S3Client",
    "SDKStateError",
    "SendReport",
    "ServiceError",
    "ServiceUnavailable",
    "StartupError",
    "Transport",
    "TransportError",
    "UnknownDataSource",
    "UnknownNodeError",
    "__version__",
    "fhir_to_dataframe",
    "fhir_to_dataframe_async",
]
