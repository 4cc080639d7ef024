"""An asyncio client for the FLAME Hub (auth, core and storage services).

Start with :class:`HubClient`::

    from flame_async.hub import F, HubClient, PasswordAuth

    async with HubClient(
        auth_url="http://127.0.0.1:3010/",
        core_url="http://127.0.0.1:3020/",
        storage_url="http://127.0.0.1:3030/",
        credentials=PasswordAuth("admin", "start123"),
    ) as hub:
        page = await hub.core.analyses.find(filter={"name": F.like("cox")}, limit=50)
        async for node in hub.core.nodes.iterate(concurrency=4):
            ...

Importing this package changes no global state (warning filters, logging) and imports no
optional dependency.
"""

from ..config import RetryPolicy
from ._auth import ClientAuth, Credentials, PasswordAuth, RobotAuth, StaticToken, TokenManager
from ._authup import Auth, RealmsResource
from ._client import HubClient
from ._core import (
    AnalysesResource,
    AnalysisCommand,
    AnalysisNodeLogsResource,
    Core,
    MasterImagesResource,
    RegistriesResource,
    RegistryCommand,
)
from ._query import MAX_LIMIT, F, FilterOp, Query, WireCase
from ._resource import Page, ReadResource, Ref, Resource
from ._session import DEFAULT_RETRY
from ._storage import BucketFilesResource, BucketsResource, Storage, UploadFile

__all__ = [
    "DEFAULT_RETRY",
    "MAX_LIMIT",
    "AnalysesResource",
    "AnalysisCommand",
    "AnalysisNodeLogsResource",
    "Auth",
    "BucketFilesResource",
    "BucketsResource",
    "ClientAuth",
    "Core",
    "Credentials",
    "F",
    "FilterOp",
    "HubClient",
    "MasterImagesResource",
    "Page",
    "PasswordAuth",
    "Query",
    "ReadResource",
    "RealmsResource",
    "Ref",
    "RegistriesResource",
    "RegistryCommand",
    "Resource",
    "RetryPolicy",
    "RobotAuth",
    "StaticToken",
    "Storage",
    "TokenManager",
    "UploadFile",
    "WireCase",
    "models",
]

from . import models
