"""The Hub core service's resources (``hub.core``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeAlias

import anyio

from ..errors import RequestTimeout
from ._resource import ReadResource, Ref, Resource, id_of, parse
from ._session import Payload, Session
from .models import (
    Analysis,
    AnalysisBucket,
    AnalysisBucketCreate,
    AnalysisBucketFile,
    AnalysisBucketFileCreate,
    AnalysisBucketFileUpdate,
    AnalysisCreate,
    AnalysisLog,
    AnalysisNode,
    AnalysisNodeCreate,
    AnalysisNodeLog,
    AnalysisNodeLogCreate,
    AnalysisNodeUpdate,
    AnalysisUpdate,
    HubModel,
    MasterImage,
    MasterImageGroup,
    Node,
    NodeCreate,
    NodeUpdate,
    Project,
    ProjectCreate,
    ProjectNode,
    ProjectNodeCreate,
    ProjectNodeUpdate,
    ProjectUpdate,
    Registry,
    RegistryCreate,
    RegistryProject,
    RegistryProjectCreate,
    RegistryProjectUpdate,
    RegistryUpdate,
    to_wire,
)

__all__ = [
    "AnalysesResource",
    "AnalysisCommand",
    "AnalysisNodeLogsResource",
    "Core",
    "MasterImagesResource",
    "RegistriesResource",
    "RegistryCommand",
]

AnalysisCommand: TypeAlias = (
    Literal[
        "spinUp",
        "tearDown",
        "buildStart",
        "buildStatus",
        "buildStop",
        "buildCheck",
        "distributionStart",
        "distributionCheck",
        "storageCheck",
        "configurationLock",
        "configurationUnlock",
    ]
    | str
)
"""An analysis command; the names differ between Hub lines (0.8: ``spinUp``, ``tearDown``,
``buildStart``, ``buildStatus``, ``buildStop``; newer: ``buildCheck``, ``distributionStart``,
``distributionCheck``, ``storageCheck``; both: ``configurationLock``/``Unlock``)."""

RegistryCommand: TypeAlias = (
    Literal["setup", "cleanup", "delete", "projectLink", "projectUnlink"] | str
)
"""A registry service command."""


class AnalysesResource(Resource[Analysis, AnalysisCreate, AnalysisUpdate]):
    """``/analyses``, with commands and waiting for a state."""

    async def command(
        self, analysis: Ref, name: AnalysisCommand, *, retry_unsafe: bool = False
    ) -> Analysis:
        """Send a command to the analysis (``POST /analyses/<id>/command``); not retried once
        sent unless ``retry_unsafe``.

        Raises:
            ServiceError: The Hub failed (the 0.8 line without RabbitMQ answers 500 "The amqp
                instance is not defined").
            HubRequestInvalid: The Hub does not know the command or refused it now.
            TransportError: The request failed.
        """
        aid = id_of(analysis)
        answer = await self._session.json(
            "POST",
            "core",
            f"/analyses/{aid}/command",
            body=Payload.json({"command": name}),
            retry_unsafe=retry_unsafe,
        )
        return parse(Analysis, answer, self._url(f"/{aid}/command"))

    async def wait_for(
        self,
        analysis: Ref,
        predicate: Callable[[Analysis], bool],
        *,
        timeout: float,
        interval: float = 2.0,
    ) -> Analysis:
        """Read the analysis every ``interval`` seconds until ``predicate`` holds for it.

        The Hub pushes no events over REST, so this polls.

        Raises:
            RequestTimeout: ``predicate`` did not hold within ``timeout`` seconds.
            NotFoundError: The analysis is gone.
            TransportError: A read failed (after its retries).

        Cancellation:
            Stops at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            current = await self.get(analysis)
            if predicate(current):
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(
                    f"analysis {current.id} did not reach the awaited state within {timeout:g} s "
                    f"(execution status {current.execution_status!r})",
                    service="hub core",
                    method="GET",
                    url=self._url(f"/{current.id}"),
                )
            await anyio.sleep(min(interval, left))


class AnalysisNodeLogsResource(ReadResource[AnalysisNodeLog]):
    """``/analysis-node-logs``: find, create, and delete by analysis and node.

    The 0.8 line requires both ``analysis_id`` and ``node_id`` filters, and answers a sort on
    ``created_at`` with 500 (its table has no such column), so ``iterate()`` adds no sort here.
    """

    _order_key = None

    async def create(
        self, data: AnalysisNodeLogCreate | None = None, /, **fields: object
    ) -> AnalysisNodeLog | None:
        """Add a log line (the 0.8 line requires ``status`` too); returns it when the Hub
        answers with a stored record (the 0.8 line does not: None).

        Raises:
            InvalidArgument: The fields are not valid.
            TransportError: The request failed.
        """
        model = data if data is not None else AnalysisNodeLogCreate.model_validate(fields)
        case = await self._session.wire_case()
        answer = await self._session.json(
            "POST", "core", self._path, body=Payload.json(to_wire(model, case))
        )
        if not isinstance(answer, dict) or "id" not in answer:
            return None  # the 0.8 line answers with the data written, without an id
        return parse(AnalysisNodeLog, answer, self._url())

    async def delete_for(self, analysis: Ref, node: Ref) -> None:
        """Delete the log lines of ``node`` in ``analysis``.

        Raises:
            TransportError: The request failed.
        """
        case = await self._session.wire_case()
        a_key, n_key = ("analysisId", "nodeId") if case == "camel" else ("analysis_id", "node_id")
        params = [(f"filter[{a_key}]", id_of(analysis)), (f"filter[{n_key}]", id_of(node))]
        await self._session.json("DELETE", "core", self._path, params=params)


class RegistriesResource(Resource[Registry, RegistryCreate, RegistryUpdate]):
    """``/registries``, with the registry service's commands."""

    async def command(
        self, registry: Ref, name: RegistryCommand, *, secret: str | None = None
    ) -> None:
        """Run a registry command (``POST /services/registry/command``).

        Raises:
            TransportError: The request failed (the test Hub has no Harbor: expect 500).
        """
        body: dict[str, str] = {"command": name, "id": id_of(registry)}
        if secret is not None:
            body["secret"] = secret
        await self._session.json(
            "POST", "core", "/services/registry/command", body=Payload.json(body)
        )


class MasterImagesResource(ReadResource[MasterImage]):
    """``/master-images``: read, delete, sync with the configured repository, build."""

    async def sync(self) -> None:
        """Sync the master images from their Git repository (``{"command": "sync"}``).

        Raises:
            TransportError: The request failed.
        """
        await self._session.json(
            "POST", "core", "/master-images/command", body=Payload.json({"command": "sync"})
        )

    async def build(self, image: Ref) -> None:
        """Build a master image (``POST /master-images/<id>/command {"command": "build"}``;
        newer Hubs only).

        Raises:
            TransportError: The request failed (404 on Hubs without the route).
        """
        await self._session.json(
            "POST",
            "core",
            f"/master-images/{id_of(image)}/command",
            body=Payload.json({"command": "build"}),
        )

    async def delete(self, ref: Ref, /) -> None:
        """Delete a master image.

        Raises:
            NotFoundError: There is no such image.
            TransportError: The request failed.
        """
        await self._session.json("DELETE", "core", f"/master-images/{id_of(ref)}")


class Core:
    """The resources of the Hub's core service.

    Attributes:
        nodes: ``/nodes``.
        projects: ``/projects``.
        project_nodes: ``/project-nodes``.
        analyses: ``/analyses`` (+ ``command``, ``wait_for``).
        analysis_nodes: ``/analysis-nodes``.
        analysis_node_logs: ``/analysis-node-logs``.
        analysis_logs: ``/analysis-logs``.
        analysis_buckets: ``/analysis-buckets``.
        analysis_bucket_files: ``/analysis-bucket-files``.
        registries: ``/registries`` (+ ``command``).
        registry_projects: ``/registry-projects``.
        master_images: ``/master-images`` (+ ``sync``, ``build``).
        master_image_groups: ``/master-image-groups``.
    """

    def __init__(self, session: Session) -> None:
        s = session
        self.nodes = Resource(s, "core", "/nodes", Node, NodeCreate, NodeUpdate)
        self.projects = Resource(s, "core", "/projects", Project, ProjectCreate, ProjectUpdate)
        self.project_nodes = Resource(
            s, "core", "/project-nodes", ProjectNode, ProjectNodeCreate, ProjectNodeUpdate
        )
        self.analyses = AnalysesResource(
            s, "core", "/analyses", Analysis, AnalysisCreate, AnalysisUpdate
        )
        self.analysis_nodes = Resource(
            s, "core", "/analysis-nodes", AnalysisNode, AnalysisNodeCreate, AnalysisNodeUpdate
        )
        self.analysis_node_logs = AnalysisNodeLogsResource(
            s, "core", "/analysis-node-logs", AnalysisNodeLog
        )
        self.analysis_logs = ReadResource(s, "core", "/analysis-logs", AnalysisLog)
        self.analysis_buckets = Resource(
            s, "core", "/analysis-buckets", AnalysisBucket, AnalysisBucketCreate, HubModel
        )
        self.analysis_bucket_files = Resource(
            s,
            "core",
            "/analysis-bucket-files",
            AnalysisBucketFile,
            AnalysisBucketFileCreate,
            AnalysisBucketFileUpdate,
        )
        self.registries = RegistriesResource(
            s, "core", "/registries", Registry, RegistryCreate, RegistryUpdate
        )
        self.registry_projects = Resource(
            s,
            "core",
            "/registry-projects",
            RegistryProject,
            RegistryProjectCreate,
            RegistryProjectUpdate,
        )
        self.master_images = MasterImagesResource(s, "core", "/master-images", MasterImage)
        self.master_image_groups = ReadResource(s, "core", "/master-image-groups", MasterImageGroup)
