"""The Hub auth service's (authup's) resources (``hub.auth``).

authup speaks snake_case on every Hub line, so these resources do not follow the core
service's wire casing.
"""

from __future__ import annotations

from ..errors import NotFoundError
from ._resource import Resource
from ._session import Session
from .models import (
    Client,
    ClientCreate,
    ClientUpdate,
    HubModel,
    Permission,
    PermissionCreate,
    PermissionUpdate,
    Realm,
    RealmCreate,
    RealmUpdate,
    Robot,
    RobotCreate,
    RobotUpdate,
    Role,
    RoleCreate,
    RolePermission,
    RolePermissionCreate,
    RoleUpdate,
    User,
    UserCreate,
    UserPermission,
    UserPermissionCreate,
    UserRole,
    UserRoleCreate,
    UserUpdate,
)

__all__ = ["Auth", "RealmsResource"]


class RealmsResource(Resource[Realm, RealmCreate, RealmUpdate]):
    """``/realms``, with lookup by name."""

    async def get_by_name(self, name: str) -> Realm:
        """The realm called ``name`` (``master`` is the built-in one).

        Raises:
            NotFoundError: There is no such realm.
            InvalidArgument: ``name`` is a value the Hub would misread in a filter.
            TransportError: The request failed.
        """
        page = await self.find(filter={"name": name}, limit=2)
        for realm in page.items:
            if realm.name == name:
                return realm
        raise NotFoundError(
            service="hub auth",
            method="GET",
            url=self._url(),
            status=404,
            detail=f"no realm is called {name!r}",
        )


class Auth:
    """The resources of the Hub's auth service (authup).

    Attributes:
        realms: ``/realms`` (+ ``get_by_name``).
        users: ``/users``.
        robots: ``/robots`` (authup 1.0 betas, Hubs of the 0.8 line).
        clients: ``/clients`` (newer authup).
        roles: ``/roles``.
        permissions: ``/permissions``.
        role_permissions: ``/role-permissions``.
        user_roles: ``/user-roles``.
        user_permissions: ``/user-permissions``.
    """

    def __init__(self, session: Session) -> None:
        s = session
        self.realms = RealmsResource(s, "auth", "/realms", Realm, RealmCreate, RealmUpdate)
        self.users = Resource(s, "auth", "/users", User, UserCreate, UserUpdate)
        self.robots = Resource(s, "auth", "/robots", Robot, RobotCreate, RobotUpdate)
        self.clients = Resource(s, "auth", "/clients", Client, ClientCreate, ClientUpdate)
        self.roles = Resource(s, "auth", "/roles", Role, RoleCreate, RoleUpdate)
        self.permissions = Resource(
            s, "auth", "/permissions", Permission, PermissionCreate, PermissionUpdate
        )
        self.role_permissions = Resource(
            s, "auth", "/role-permissions", RolePermission, RolePermissionCreate, HubModel
        )
        self.user_roles = Resource(s, "auth", "/user-roles", UserRole, UserRoleCreate, HubModel)
        self.user_permissions = Resource(
            s, "auth", "/user-permissions", UserPermission, UserPermissionCreate, HubModel
        )
