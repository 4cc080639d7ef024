"""The FLAME Hub's records as pydantic models: one read, create and update model per resource.

Rules, because Hub releases differ (version skew is the normal case):

- Attributes are snake_case; input is accepted in both wire casings (``created_at`` and
  ``createdAt``), and old and new names of renamed fields (``run_status`` /
  ``execution_status``, ``build_nodes_valid`` / ``distribution_nodes_valid``).
- Only a record's identity (``id``) is required; every other field is optional with a default,
  so a Hub that lacks a field (or has not added it yet) still validates.
- Unknown fields are kept (``extra="allow"``; read them with ``model.model_extra``), so a newer
  Hub does not break this client.
- Relations (``analysis.project``) are None unless the query asked for them with ``include``.
- Timestamps are timezone-aware (naive ones from the Hub are taken as UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, AliasChoices, AliasGenerator, BaseModel, ConfigDict, Field

from ._query import WireCase, to_camel, to_snake

__all__ = [
    "Analysis",
    "AnalysisBucket",
    "AnalysisBucketCreate",
    "AnalysisBucketFile",
    "AnalysisBucketFileCreate",
    "AnalysisBucketFileUpdate",
    "AnalysisCreate",
    "AnalysisLog",
    "AnalysisNode",
    "AnalysisNodeCreate",
    "AnalysisNodeLog",
    "AnalysisNodeLogCreate",
    "AnalysisNodeUpdate",
    "AnalysisUpdate",
    "Bucket",
    "BucketCreate",
    "BucketFile",
    "Client",
    "ClientCreate",
    "ClientUpdate",
    "HubModel",
    "MasterImage",
    "MasterImageGroup",
    "Node",
    "NodeCreate",
    "NodeUpdate",
    "Permission",
    "PermissionCreate",
    "PermissionUpdate",
    "Project",
    "ProjectCreate",
    "ProjectNode",
    "ProjectNodeCreate",
    "ProjectNodeUpdate",
    "ProjectUpdate",
    "Realm",
    "RealmCreate",
    "RealmUpdate",
    "Registry",
    "RegistryCreate",
    "RegistryProject",
    "RegistryProjectCreate",
    "RegistryProjectUpdate",
    "RegistryUpdate",
    "Robot",
    "RobotCreate",
    "RobotUpdate",
    "Role",
    "RoleCreate",
    "RolePermission",
    "RolePermissionCreate",
    "RoleUpdate",
    "User",
    "UserCreate",
    "UserPermission",
    "UserPermissionCreate",
    "UserRole",
    "UserRoleCreate",
    "UserUpdate",
    "to_wire",
]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


HubTime = Annotated[datetime, AfterValidator(_aware)]
"""A Hub timestamp, timezone-aware."""


def _both_casings(name: str) -> AliasChoices:
    return AliasChoices(name, to_camel(name))


def _renamed(*names: str) -> AliasChoices:
    """Accept every name in both casings (the first one is the current name)."""
    choices: list[str] = []
    for n in names:
        choices += [n, to_camel(n)]
    return AliasChoices(*choices)


class HubModel(BaseModel):
    """Base of every Hub model: both casings in, unknown fields kept."""

    model_config = ConfigDict(
        extra="allow",
        alias_generator=AliasGenerator(validation_alias=_both_casings),
        protected_namespaces=(),
    )


def to_wire(model: BaseModel, case: WireCase, *, only_set: bool = True) -> dict[str, Any]:
    """A create/update model as the JSON object the Hub expects, keys in ``case``.

    Only the fields that were set are included (``only_set``), so an update changes exactly
    what the caller passed.
    """
    data = model.model_dump(mode="json", exclude_unset=only_set, by_alias=False)
    convert = to_camel if case == "camel" else to_snake
    return {convert(k): v for k, v in data.items()}


class _Record(HubModel):
    id: UUID
    created_at: HubTime | None = None
    updated_at: HubTime | None = None


# -- core -------------------------------------------------------------------------------------


class MasterImageGroup(_Record):
    """A group of master images (``/master-image-groups``)."""

    name: str | None = None
    path: str | None = None
    virtual_path: str | None = None


class MasterImage(_Record):
    """A master image an analysis builds on (``/master-images``)."""

    name: str | None = None
    path: str | None = None
    virtual_path: str | None = None
    group_virtual_path: str | None = None
    command: str | None = None
    command_arguments: list[Any] | None = None


class Registry(_Record):
    """A container registry (``/registries``); the account secret is never shown in repr."""

    name: str | None = None
    host: str | None = None
    account_name: str | None = None
    account_secret: str | None = Field(default=None, repr=False)


class RegistryCreate(HubModel):
    """The fields to create a registry with."""

    name: str
    host: str
    account_name: str | None = None
    account_secret: str | None = Field(default=None, repr=False)


class RegistryUpdate(HubModel):
    """The fields of a registry that an update may change."""

    name: str | None = None
    host: str | None = None
    account_name: str | None = None
    account_secret: str | None = Field(default=None, repr=False)


class RegistryProject(_Record):
    """A project inside a registry (``/registry-projects``)."""

    name: str | None = None
    type: str | None = None
    public: bool | None = None
    external_name: str | None = None
    external_id: str | None = None
    account_id: str | None = None
    account_name: str | None = None
    account_secret: str | None = Field(default=None, repr=False)
    webhook_name: str | None = None
    webhook_exists: bool | None = None
    registry_id: UUID | None = None
    registry: Registry | None = None
    realm_id: UUID | None = None


class RegistryProjectCreate(HubModel):
    """The fields to create a registry project with."""

    name: str
    type: str
    registry_id: UUID
    external_name: str | None = None
    public: bool | None = None
    realm_id: UUID | None = None


class RegistryProjectUpdate(HubModel):
    """The fields of a registry project that an update may change."""

    name: str | None = None
    type: str | None = None
    external_name: str | None = None
    public: bool | None = None


class Node(_Record):
    """A node (station) of the Hub (``/nodes``)."""

    name: str | None = None
    external_name: str | None = None
    public_key: str | None = None
    hidden: bool | None = None
    type: str | None = None
    online: bool | None = None
    client_id: UUID | None = None
    robot_id: UUID | None = None
    realm_id: UUID | None = None
    registry_id: UUID | None = None
    registry: Registry | None = None
    registry_project_id: UUID | None = None
    registry_project: RegistryProject | None = None


class NodeCreate(HubModel):
    """The fields to create a node with (``type``: ``aggregator`` or ``default``)."""

    name: str
    realm_id: UUID | None = None
    type: str | None = None
    hidden: bool | None = None
    external_name: str | None = None
    public_key: str | None = None
    registry_id: UUID | None = None


class NodeUpdate(HubModel):
    """The fields of a node that an update may change."""

    name: str | None = None
    type: str | None = None
    hidden: bool | None = None
    external_name: str | None = None
    public_key: str | None = None
    registry_id: UUID | None = None


class Project(_Record):
    """A project: nodes and analyses under one approval (``/projects``)."""

    name: str | None = None
    description: str | None = None
    nodes: int | None = None
    analyses: int | None = None
    realm_id: UUID | None = None
    user_id: UUID | None = None
    robot_id: UUID | None = None
    client_id: UUID | None = None
    master_image_id: UUID | None = None
    master_image: MasterImage | None = None


class ProjectCreate(HubModel):
    """The fields to create a project with."""

    name: str
    description: str | None = None
    master_image_id: UUID | None = None


class ProjectUpdate(HubModel):
    """The fields of a project that an update may change."""

    name: str | None = None
    description: str | None = None
    master_image_id: UUID | None = None


class ProjectNode(_Record):
    """A node's membership in a project (``/project-nodes``)."""

    approval_status: str | None = None
    comment: str | None = None
    project_id: UUID | None = None
    project: Project | None = None
    project_realm_id: UUID | None = None
    node_id: UUID | None = None
    node: Node | None = None
    node_realm_id: UUID | None = None


class ProjectNodeCreate(HubModel):
    """The fields to add a node to a project with."""

    project_id: UUID
    node_id: UUID
    approval_status: str | None = None
    comment: str | None = None


class ProjectNodeUpdate(HubModel):
    """The fields of a project node that an update may change."""

    approval_status: str | None = None
    comment: str | None = None


class Analysis(_Record):
    """An analysis (``/analyses``). ``execution_status`` is also read from ``run_status``
    (Hubs up to 0.8), ``distribution_nodes_valid`` from ``build_nodes_valid``."""

    name: str | None = None
    description: str | None = None
    nodes: int | None = None
    configuration_locked: bool | None = None
    configuration_nodes_valid: bool | None = None
    configuration_entrypoint_valid: bool | None = None
    configuration_image_valid: bool | None = None
    distribution_nodes_valid: bool | None = Field(
        default=None, validation_alias=_renamed("distribution_nodes_valid", "build_nodes_valid")
    )
    build_status: str | None = None
    distribution_status: str | None = None
    execution_status: str | None = Field(
        default=None, validation_alias=_renamed("execution_status", "run_status")
    )
    image_command_arguments: list[Any] | None = None
    realm_id: UUID | None = None
    user_id: UUID | None = None
    project_id: UUID | None = None
    project: Project | None = None
    registry_id: UUID | None = None
    registry: Registry | None = None
    master_image_id: UUID | None = None
    master_image: MasterImage | None = None


class AnalysisCreate(HubModel):
    """The fields to create an analysis with."""

    project_id: UUID
    name: str | None = None
    description: str | None = None
    master_image_id: UUID | None = None
    registry_id: UUID | None = None
    image_command_arguments: list[Any] | None = None


class AnalysisUpdate(HubModel):
    """The fields of an analysis that an update may change."""

    name: str | None = None
    description: str | None = None
    master_image_id: UUID | None = None
    registry_id: UUID | None = None
    image_command_arguments: list[Any] | None = None


class AnalysisNode(_Record):
    """A node taking part in an analysis (``/analysis-nodes``)."""

    approval_status: str | None = None
    execution_status: str | None = Field(
        default=None, validation_alias=_renamed("execution_status", "run_status")
    )
    execution_progress: int | None = None
    comment: str | None = None
    artifact_tag: str | None = None
    artifact_digest: str | None = None
    analysis_id: UUID | None = None
    analysis: Analysis | None = None
    analysis_realm_id: UUID | None = None
    node_id: UUID | None = None
    node: Node | None = None
    node_realm_id: UUID | None = None


class AnalysisNodeCreate(HubModel):
    """The fields to add a node to an analysis with."""

    analysis_id: UUID
    node_id: UUID


class AnalysisNodeUpdate(HubModel):
    """The fields of an analysis node that an update may change."""

    approval_status: str | None = None
    comment: str | None = None


class AnalysisNodeLog(_Record):
    """A log line a node reported for an analysis (``/analysis-node-logs``)."""

    level: str | None = None
    code: str | None = None
    status: str | None = None
    message: str | None = None
    analysis_id: UUID | None = None
    analysis: Analysis | None = None
    analysis_realm_id: UUID | None = None
    node_id: UUID | None = None
    node: Node | None = None
    node_realm_id: UUID | None = None


class AnalysisNodeLogCreate(HubModel):
    """The fields of a new analysis-node log line."""

    analysis_id: UUID
    node_id: UUID
    level: str | None = None
    message: str | None = None
    code: str | None = None
    status: str | None = None


class AnalysisLog(_Record):
    """A log entry of an analysis (``/analysis-logs``)."""

    component: str | None = None
    command: str | None = None
    event: str | None = None
    error: bool | None = None
    error_code: str | None = None
    status: str | None = None
    status_message: str | None = None
    meta: Any = None
    analysis_id: UUID | None = None
    analysis: Analysis | None = None
    realm_id: UUID | None = None


class AnalysisBucket(_Record):
    """The link of an analysis to one of its storage buckets (``/analysis-buckets``);
    ``type`` is ``CODE``, ``RESULT`` or ``TEMP``, ``external_id`` the storage bucket's id."""

    type: str | None = None
    external_id: UUID | None = None
    analysis_id: UUID | None = None
    analysis: Analysis | None = None
    realm_id: UUID | None = None


class AnalysisBucketCreate(HubModel):
    """The fields of a new analysis bucket link."""

    analysis_id: UUID
    type: str
    external_id: UUID | None = None


class AnalysisBucketFile(_Record):
    """A file of an analysis bucket (``/analysis-bucket-files``); ``external_id`` is the
    storage bucket file's id, ``root`` marks the entrypoint."""

    name: str | None = None
    root: bool | None = None
    external_id: UUID | None = None
    bucket_id: UUID | None = None
    bucket: AnalysisBucket | None = None
    analysis_id: UUID | None = None
    analysis: Analysis | None = None
    realm_id: UUID | None = None
    user_id: UUID | None = None
    robot_id: UUID | None = None
    client_id: UUID | None = None


class AnalysisBucketFileCreate(HubModel):
    """The fields to register a storage file with an analysis bucket."""

    name: str
    external_id: UUID
    bucket_id: UUID
    root: bool | None = None


class AnalysisBucketFileUpdate(HubModel):
    """The fields of an analysis bucket file that an update may change."""

    root: bool | None = None


# -- storage ----------------------------------------------------------------------------------


class Bucket(_Record):
    """A storage bucket (``/buckets`` on the storage service)."""

    name: str | None = None
    region: str | None = None
    actor_id: UUID | None = None
    actor_type: str | None = None
    realm_id: UUID | None = None


class BucketCreate(HubModel):
    """The fields to create a storage bucket with."""

    name: str
    region: str | None = None


class BucketFile(_Record):
    """A file in a storage bucket (``/bucket-files``)."""

    name: str | None = None
    path: str | None = None
    directory: str | None = None
    hash: str | None = None
    size: int | None = None
    actor_id: UUID | None = None
    actor_type: str | None = None
    realm_id: UUID | None = None
    bucket_id: UUID | None = None
    bucket: Bucket | None = None


# -- auth (authup) ----------------------------------------------------------------------------


class Realm(_Record):
    """An authup realm (``/realms``)."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    built_in: bool | None = None


class RealmCreate(HubModel):
    """The fields to create a realm with."""

    name: str
    display_name: str | None = None
    description: str | None = None


class RealmUpdate(HubModel):
    """The fields of a realm that an update may change."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None


class User(_Record):
    """An authup user (``/users``)."""

    name: str | None = None
    display_name: str | None = None
    email: str | None = None
    active: bool | None = None
    realm_id: UUID | None = None


class UserCreate(HubModel):
    """The fields to create a user with."""

    name: str
    password: str | None = Field(default=None, repr=False)
    display_name: str | None = None
    email: str | None = None
    active: bool | None = None
    realm_id: UUID | None = None


class UserUpdate(HubModel):
    """The fields of a user that an update may change."""

    name: str | None = None
    password: str | None = Field(default=None, repr=False)
    display_name: str | None = None
    email: str | None = None
    active: bool | None = None


class Robot(_Record):
    """An authup robot (``/robots``; newer authup calls them clients)."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    active: bool | None = None
    user_id: UUID | None = None
    realm_id: UUID | None = None


class RobotCreate(HubModel):
    """The fields to create a robot with (a secret is generated when none is given)."""

    name: str
    secret: str | None = Field(default=None, repr=False)
    display_name: str | None = None
    description: str | None = None
    active: bool | None = None
    realm_id: UUID | None = None


class RobotUpdate(HubModel):
    """The fields of a robot that an update may change."""

    name: str | None = None
    secret: str | None = Field(default=None, repr=False)
    display_name: str | None = None
    description: str | None = None
    active: bool | None = None


class Client(_Record):
    """An authup client (``/clients``, newer authup; the successor of robots)."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    active: bool | None = None
    is_confidential: bool | None = None
    redirect_uri: str | None = None
    realm_id: UUID | None = None


class ClientCreate(HubModel):
    """The fields to create a client with."""

    name: str
    secret: str | None = Field(default=None, repr=False)
    display_name: str | None = None
    description: str | None = None
    realm_id: UUID | None = None


class ClientUpdate(HubModel):
    """The fields of a client that an update may change."""

    name: str | None = None
    secret: str | None = Field(default=None, repr=False)
    display_name: str | None = None
    description: str | None = None
    active: bool | None = None


class Role(_Record):
    """An authup role (``/roles``)."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    target: str | None = None
    realm_id: UUID | None = None


class RoleCreate(HubModel):
    """The fields to create a role with."""

    name: str
    display_name: str | None = None
    description: str | None = None
    realm_id: UUID | None = None


class RoleUpdate(HubModel):
    """The fields of a role that an update may change."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None


class Permission(_Record):
    """An authup permission (``/permissions``)."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    built_in: bool | None = None
    realm_id: UUID | None = None


class RolePermission(_Record):
    """A permission granted to a role (``/role-permissions``)."""

    role_id: UUID | None = None
    role_realm_id: UUID | None = None
    permission_id: UUID | None = None
    permission_realm_id: UUID | None = None


class RolePermissionCreate(HubModel):
    """The fields to grant a permission to a role."""

    role_id: UUID
    permission_id: UUID


class UserRole(_Record):
    """A role given to a user (``/user-roles``)."""

    user_id: UUID | None = None
    user_realm_id: UUID | None = None
    role_id: UUID | None = None
    role_realm_id: UUID | None = None


class UserRoleCreate(HubModel):
    """The fields to give a role to a user."""

    user_id: UUID
    role_id: UUID


class UserPermission(_Record):
    """A permission granted to a user (``/user-permissions``)."""

    user_id: UUID | None = None
    user_realm_id: UUID | None = None
    permission_id: UUID | None = None
    permission_realm_id: UUID | None = None


class UserPermissionCreate(HubModel):
    """The fields to grant a permission to a user."""

    user_id: UUID
    permission_id: UUID


class PermissionCreate(HubModel):
    """The fields to create a permission with."""

    name: str
    display_name: str | None = None
    description: str | None = None
    realm_id: UUID | None = None


class PermissionUpdate(HubModel):
    """The fields of a permission that an update may change."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
