"""An in-process FLAME Hub: authup, Hub core and Hub storage as real HTTP servers on 127.0.0.1.

:class:`HubEmulator` answers the Hub's REST API the way the real servers do (authup
1.0.0-beta.26, Hub core and storage 0.8.14; ``tests/hub/test_conformance.py`` checks it against
them), with in-memory records and uploads kept in a temporary folder:

* **Lists** answer ``{"data": [...], "meta": {"total", "limit", "offset"}}``; the query is *rapiq*:
  ``filter[key]=v`` with the operators ``!v``, ``~v`` (SQL ``LIKE 'v%'``, case-insensitive for
  ASCII as in SQLite, ``%`` and ``_`` wildcards), ``!~v``, ``<v``, ``<=v``, ``>v``, ``>=v``,
  ``a,b`` (IN), ``!a,b`` (NOT IN), ``null`` / ``!null``, values trimmed and turned into booleans,
  null and numbers as JavaScript's ``Number()`` would; ``sort=-a,b``; ``page[limit]`` capped at 50
  (silently); ``include=rel`` fills allowed relations; ``fields``; a filter on a key outside the
  resource's allow-list is dropped (the 0.8 line) or, with ``strict_filters=True``, answered 400.
* **Single records** answer the bare object; create 201, update (``POST /<r>/<id>``) and delete
  202, absent 404; errors are ``{"statusCode", "code", "message"}``.
* **Tokens** (``POST /token``): password, refresh_token, robot_credentials and
  client_credentials grants; HS256 JWTs whose ``exp`` is true while ``expires_in`` says 3600 as
  authup's does; an expired token gets 500 ``INTERNAL_SERVER_ERROR`` (core and auth alike), a
  reused refresh token 400 ``inactive_token``, a wrong password 400 ``invalid_credentials``, no
  token 401, a token that does not verify 400.
* **Storage** keeps uploads on disk; a file's ``hash`` is the SHA-256 of its *path*, not of its
  content, and keys the stored object, as in the 0.8.14 storage: a second upload of the same path
  to a bucket adds a record and replaces the content that every record of that path streams. A
  plain multipart ``filename`` is read as latin-1 (busboy's default), so raw UTF-8 names arrive
  garbled; percent-encoded names (aiohttp's default) are kept verbatim.
* **Casing**: ``wire_case="snake"`` (the 0.8 line) or ``"camel"`` (current Hubs) for JSON keys
  and query keys alike.
* **Faults** (:class:`HubFaults`), seeded and deterministic per request kind: 503 on GETs,
  dropped connections before or after serving (a create whose answer was dropped still
  exists: :attr:`HubEmulator.creates` counts), 429 with ``Retry-After``, latency, a bucket tar with
  a ``../`` member; and one-shot faults for a test (:meth:`HubEmulator.inject`).

Counters for tests: :attr:`HubEmulator.requests` (per ``"METHOD /path/{id}"``),
:attr:`HubEmulator.creates` (per resource), :attr:`HubEmulator.token_grants` (per grant type).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import hmac
import logging
import math
import random
import re
import secrets
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qsl

import anyio
import orjson

from .._transport import ConnectionDropped, FileBody, Form, Request, Response
from ..errors import FlameError, InvalidArgument
from ._gateway import bind_socket, serve

__all__ = ["HubEmulator", "HubEmulatorStateError", "HubFaults", "WireCase"]

logger = logging.getLogger("flame_async.local.hub_emulator")

WireCase = Literal["snake", "camel"]
"""How the Hub spells JSON and query keys: ``created_at`` (up to 0.8) or ``createdAt``."""

MAX_LIMIT: Final = 50
_ADVERTISED_EXPIRES_IN: Final = 3600
"""What authup writes into ``expires_in`` whatever the real lifetime is."""
_CHUNK: Final = 1 << 20
_JSON_LIMIT: Final = 4 << 20
_LISTINGS_KEPT: Final = 64
"""Distinct list queries cached between two changes (beyond, the cache starts over)."""
_Service = Literal["auth", "core", "storage"]


class HubEmulatorStateError(FlameError, RuntimeError):
    """The emulator was used before ``async with`` entered it, or entered twice."""


@dataclasses.dataclass(frozen=True, slots=True)
class HubFaults:
    """Faults the emulator injects, decided by dice seeded per request kind.

    Each request kind (method and path template, e.g. ``GET /nodes/{id}``) has its own
    sequence of seeded dice, so which request of a kind is hurt does not depend on how
    requests of other kinds interleave. The token endpoint is never hurt.

    Attributes:
        seed: Seeds every decision.
        get_503: Fraction of GET requests answered 503 (unserved).
        drop_before: Fraction of requests whose connection is dropped before serving.
        drop_after: Fraction of requests that are served (a create creates), then dropped.
        too_many: Fraction of requests answered 429 with ``Retry-After: retry_after``.
        retry_after: Seconds in the 429 answers' ``Retry-After``.
        latency: Seconds added to every request (also the token endpoint).
        traversal_tar: Bucket tars carry one extra member ``../x`` (a path-traversal attempt).
    """

    seed: int = 0
    get_503: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    too_many: float = 0.0
    retry_after: int = 1
    latency: float = 0.0
    traversal_tar: bool = False

    def __post_init__(self) -> None:
        fractions = (self.get_503, self.drop_before, self.drop_after, self.too_many)
        if any(not 0.0 <= f <= 1.0 for f in fractions) or sum(fractions) > 1.0:
            raise InvalidArgument("fault fractions lie in [0, 1] and add up to at most 1")
        if self.latency < 0 or self.retry_after < 0:
            raise InvalidArgument("latency and retry_after must not be negative")


Fault = Literal["503", "429", "500", "drop-before", "drop-after"]


# -- casing --------------------------------------------------------------------------------------

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")


# memoized: a camelCase list page converts some 2,000 keys, all from a few dozen names
@functools.lru_cache(maxsize=4096)
def _to_camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.lru_cache(maxsize=4096)
def _to_snake(key: str) -> str:
    return _CAMEL_BOUNDARY.sub(lambda m: "_" + m.group(1).lower(), key)


def _keys(value: Any, convert: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {
            convert(k): _keys(v, convert) if isinstance(v, dict | list) else v
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_keys(v, convert) for v in value]
    return value


# -- errors --------------------------------------------------------------------------------------

_INTERNAL: Final = "An internal server error occurred."
_CODES: Final = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status,
        orjson.dumps(data),
        headers={"content-type": "application/json; charset=utf-8", **(headers or {})},
    )


def _error(status: int, message: str = "", *, code: str | None = None, **extra: Any) -> Response:
    body = {"statusCode": status, "code": code or _CODES.get(status, "ERROR"), "message": message}
    return _json({**body, **extra}, status)


_INVALID_GRANT: Final = (
    "The provided authorization grant (e.g., authorization code, resource owner credentials) or "
    "refresh token is invalid, expired, revoked, does not match the redirection URI used in the "
    "authorization request, or was issued to another client."
)


def _oauth_error(code: str, message: str) -> Response:
    """authup's token endpoint refusal: the Hub's error shape plus OAuth2's fields."""
    return _error(400, message, code=code, error="invalid_request", error_description=message)


def _invalid(*attributes: str, received: Any = None) -> Response:
    """A validation failure as the Hub's validator words it."""
    children = [{"path": a, "pathAbsolute": a} for a in attributes]
    if received is not None:
        for child in children:
            child["received"] = received
    return _error(
        400,
        f"The attribute {attributes[0]} is invalid." if len(attributes) == 1
        else f"The attributes {', '.join(attributes)} are invalid.",
        code="undefined",
        children=children,
        attributes=list(attributes),
    )  # fmt: skip


class _Refused(Exception):
    """Answer the request with ``response`` (raised deep inside a handler)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


# -- rapiq values and filters --------------------------------------------------------------------

_JS_NUMBER = re.compile(
    r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Infinity)"
    r"|0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+"
)


def _coerce(raw: str) -> Any:
    """A filter value as rapiq makes it: trimmed; booleans, null and JS numbers recognised."""
    value = raw.strip()
    lower = value.lower()
    if lower in ("true", "false"):
        return lower == "true"
    if lower == "null":
        return None
    if value and _JS_NUMBER.fullmatch(value):
        if value[:2].lower() in ("0x", "0o", "0b"):
            return int(value, 0)
        number = float(value.replace("Infinity", "inf"))
        return int(number) if number.is_integer() and "." not in value else number
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _Filter:
    path: str | None
    key: str
    operator: Literal["eq", "ne", "like", "not_like", "lt", "le", "gt", "ge", "in", "not_in"]
    value: Any


def _parse_filter(path: str | None, key: str, raw: str) -> _Filter | None:
    """rapiq's ``parseFilterValue`` + ``transformFilterValue``; None when rapiq drops it."""
    parts: list[str] | None = raw.split(",") if "," in raw else None
    negation = False
    if parts is not None:
        stripped = [p[1:] if p.startswith("!") else p for p in parts]
        negation = stripped != parts
        values = [_coerce(p) for p in stripped]
        values = [v for v in values if v == 0 or v is None or v]
        if not values:
            return None
        return _Filter(path, key, "not_in" if negation else "in", values)
    if raw.startswith("!"):
        negation, raw = True, raw[1:]
    operator: Any = "ne" if negation else "eq"
    for prefix, named in (("~", "like"), ("<=", "le"), ("<", "lt"), (">=", "ge"), (">", "gt")):
        if raw.startswith(prefix):
            raw = raw[len(prefix) :]
            operator = "not_like" if named == "like" and negation else named
            break
    value = _coerce(raw)
    if isinstance(value, str) and not value:
        return None
    return _Filter(path, key, operator, value)


def _sql_value(value: Any) -> Any:
    """A value as SQLite holds it: booleans are integers."""
    if isinstance(value, bool):
        return int(value)
    return value


def _js_concat(value: Any) -> str:
    """``value + '%'`` in JavaScript, without the ``%``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _compare(field: Any, value: Any) -> int | None:
    """SQLite's comparison of a column value with a bound value (None: NULL involved)."""
    if field is None or value is None:
        return None
    a, b = _sql_value(field), _sql_value(value)
    a_num, b_num = isinstance(a, int | float), isinstance(b, int | float)
    if isinstance(a, str) and b_num:
        b = _js_concat(value)  # a TEXT column converts a bound number to text
    elif a_num and isinstance(b, str):
        try:
            b = float(b)
        except ValueError:
            return -1  # numbers sort before text
    elif not isinstance(a, type(b)) and not (a_num and b_num):
        a, b = str(a), str(b)
    return int(a > b) - int(a < b)


def _like(field: Any, pattern: str) -> bool | None:
    if field is None:
        return None
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    text = _js_concat(field) if not isinstance(field, str) else field
    return re.fullmatch(regex, text, re.IGNORECASE | re.DOTALL) is not None


def _matches(record_value: Any, f: _Filter) -> bool:  # noqa: PLR0911 - one per operator
    value = f.value
    if f.operator in ("in", "not_in"):
        values = list(value)
        with_null = None in values
        values = [v for v in values if v is not None]
        hit = any(_compare(record_value, v) == 0 for v in values)
        if f.operator == "in":
            return hit or (with_null and record_value is None)
        return record_value is not None and not hit  # NULL NOT IN (...) is not true
    if value is None:
        return (record_value is None) == (f.operator != "ne")
    if f.operator in ("like", "not_like"):
        result = _like(record_value, _js_concat(value) + "%")
        if result is None:
            return False
        return result if f.operator == "like" else not result
    order = _compare(record_value, value)
    if order is None:
        return False
    return {
        "eq": order == 0,
        "ne": order != 0,
        "lt": order < 0,
        "le": order <= 0,
        "gt": order > 0,
        "ge": order >= 0,
    }[f.operator]


# -- resources -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Kind:
    """One REST resource: where it lives, its fields, and what its list query allows."""

    name: str
    service: _Service
    defaults: Mapping[str, Any]
    required: tuple[str, ...] = ()
    filters: frozenset[str] | None = None
    """Allowed filter keys (``relation.key`` for relations); None: every field."""
    sorts: frozenset[str] | None = None
    relations: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    """relation name -> (foreign-key field, kind name)."""
    default_sort: tuple[tuple[str, bool], ...] = ()
    """(field, descending) pairs; empty: insertion order (SQLite's rowid)."""
    writable: bool = True
    selectable: bool = False
    """``fields=a,b`` selects, ``-a`` drops (nodes, projects); elsewhere ``fields`` is ignored."""
    unique: tuple[tuple[str, ...], ...] = ()
    """Unique constraints (SQL: a NULL in any column never conflicts)."""
    lengths: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    """String fields with the validator's (min, max) length, checked when given."""
    created_with: tuple[str, ...] = ()
    """Relations the create answer carries (the Hub answers with the joined entity)."""
    hidden: frozenset[str] = frozenset()
    """Fields never sent (secrets, password hashes)."""


def _f(*names: str) -> frozenset[str]:
    return frozenset(names)


_KINDS: Final = {
    kind.name: kind
    for kind in (
        # authup
        _Kind("realms", "auth", {"display_name": None, "description": None, "built_in": False},
              ("name",), unique=(("name",),)),
        _Kind("users", "auth", {
            "name_locked": True, "first_name": None, "last_name": None, "display_name": None,
            "email": None, "avatar": None, "cover": None, "active": True, "status": None,
            "status_message": None, "client_id": None, "realm_id": None, "password": None,
        }, ("name",), relations={"realm": ("realm_id", "realms")}, hidden=_f("password"),
            unique=(("name", "realm_id"),)),
        _Kind("robots", "auth", {
            "display_name": None, "description": None, "active": True, "user_id": None,
            "client_id": None, "realm_id": None, "secret": None,
        }, ("name",), relations={"realm": ("realm_id", "realms")}, hidden=_f("secret"),
            unique=(("name", "realm_id"),)),
        _Kind("clients", "auth", {
            "built_in": False, "display_name": None, "description": None, "redirect_uri": None,
            "grant_types": None, "scope": None, "base_url": None, "root_url": None,
            "is_confidential": True, "realm_id": None, "user_id": None, "secret": None,
        }, ("name",), relations={"realm": ("realm_id", "realms")}, hidden=_f("secret")),
        # core
        _Kind("nodes", "core", {
            "external_name": None, "public_key": None, "hidden": False, "type": "default",
            "online": False, "registry_id": None, "registry_project_id": None,
            "robot_id": None, "realm_id": None,
        }, ("name",), _f("id", "name", "online", "hidden", "realm_id", "robot_id"),
            _f("name", "updated_at", "created_at"),
            {"registry": ("registry_id", "registries"),
             "registry_project": ("registry_project_id", "registry-projects")},
            lengths={"name": (3, 128)}, unique=(("name", "realm_id"), ("external_name",)),
            selectable=True),
        _Kind("projects", "core", {
            "description": None, "nodes": 0, "analyses": 0, "realm_id": None, "robot_id": None,
            "user_id": None, "master_image_id": None,
        }, ("name",), _f("id", "name", "realm_id", "user_id"),
            _f("id", "updated_at", "created_at"),
            {"master_image": ("master_image_id", "master-images")},
            lengths={"name": (5, 100), "description": (5, 4096)}, unique=(("name",),),
            selectable=True),
        _Kind("project-nodes", "core", {
            "approval_status": "approved", "comment": None, "project_realm_id": None,
            "node_realm_id": None,
        }, ("project_id", "node_id"), _f(
            "project_realm_id", "project_id", "project.id", "project.name", "node_realm_id",
            "node_id", "node.name"),
            _f("created_at", "updated_at", "project.name", "node.name"),
            {"project": ("project_id", "projects"), "node": ("node_id", "nodes")},
            created_with=("project", "node"), unique=(("project_id", "node_id"),)),
        _Kind("analyses", "core", {
            "name": None, "description": None, "nodes": 0, "configuration_locked": False,
            "build_status": None, "run_status": None, "registry_id": None, "realm_id": None,
            "user_id": None, "image_command_arguments": None, "master_image_id": None,
        }, ("project_id",), _f(
            "id", "name", "description", "project_id", "realm_id", "build_status",
            "run_status", "configuration_locked"),
            _f("created_at", "updated_at"),
            {"project": ("project_id", "projects"),
             "master_image": ("master_image_id", "master-images")},
            (("updated_at", True),), created_with=("project",),
            lengths={"name": (3, 128), "description": (5, 4096)}),
        _Kind("analysis-nodes", "core", {
            "approval_status": "approved", "run_status": None, "comment": None, "index": None,
            "artifact_tag": None, "artifact_digest": None, "analysis_realm_id": None,
            "node_realm_id": None,
        }, ("analysis_id", "node_id"), _f(
            "run_status", "approval_status", "analysis_id", "analysis_realm_id", "analysis.id",
            "analysis.name", "analysis.project_id", "node_id", "node_realm_id", "node.name",
            "node.realm_id"),
            _f("created_at", "updated_at", "index", "analysis.name", "node.name"),
            {"analysis": ("analysis_id", "analyses"), "node": ("node_id", "nodes")},
            created_with=("analysis", "node"), unique=(("node_id", "analysis_id"),)),
        _Kind("analysis-node-logs", "core", {
            "code": None, "status": None, "level": "info", "message": None,
            "analysis_realm_id": None, "node_realm_id": None,
        }, ("analysis_id", "node_id"), relations={
            "analysis": ("analysis_id", "analyses"), "node": ("node_id", "nodes")}),
        _Kind("analysis-logs", "core", {
            "component": None, "command": None, "event": None, "error": False,
            "error_code": None, "status": None, "status_message": None, "meta": None,
            "realm_id": None,
        }, ("analysis_id",), _f("command", "error", "status", "analysis_id"),
            _f("command", "status", "created_at", "updated_at"),
            {"analysis": ("analysis_id", "analyses")}),
        _Kind("analysis-buckets", "core", {"external_id": None, "realm_id": None},
              ("analysis_id", "type"), _f("analysis_id", "type", "analysis.id", "analysis.name"),
              _f("type", "created_at", "updated_at"), {"analysis": ("analysis_id", "analyses")},
              created_with=("analysis",), unique=(("type", "analysis_id"),)),
        _Kind("analysis-bucket-files", "core", {
            "root": False, "external_id": None, "analysis_id": None, "realm_id": None,
            "user_id": None, "robot_id": None,
        }, ("name", "bucket_id"), _f(
            "name", "root", "bucket_id", "analysis_id", "analysis.id", "analysis.name"),
            _f("name", "created_at", "updated_at"),
            {"analysis": ("analysis_id", "analyses"), "bucket": ("bucket_id", "analysis-buckets")},
            created_with=("bucket",)),
        _Kind("registries", "core", {"account_name": None, "account_secret": None},
              ("name", "host"), hidden=_f("account_secret")),
        _Kind("registry-projects", "core", {
            "type": "default", "public": False, "external_id": None, "account_id": None,
            "account_name": None, "account_secret": None, "webhook_name": None,
            "webhook_exists": None, "realm_id": None,
        }, ("name", "external_name", "registry_id"),
            relations={"registry": ("registry_id", "registries")}, hidden=_f("account_secret")),
        _Kind("master-images", "core", {
            "path": None, "group_virtual_path": "", "command": None, "command_arguments": None,
        }, ("name", "virtual_path"), _f("id", "name", "path", "virtual_path", "group_virtual_path"),
            default_sort=(("path", False),)),
        _Kind("master-image-groups", "core", {"path": ""}, ("name", "virtual_path"),
              _f("id", "name", "path", "virtual_path")),
        # storage
        _Kind("buckets", "storage", {
            "region": None, "actor_id": None, "actor_type": None, "realm_id": None,
        }, ("name",), _f("id", "name", "realm_id", "actor_type", "actor_id")),
        _Kind("bucket-files", "storage", {
            "path": None, "hash": None, "directory": "", "size": None, "actor_id": None,
            "actor_type": None, "realm_id": None,
        }, ("name", "bucket_id"), _f(
            "id", "name", "directory", "realm_id", "actor_type", "actor_id", "bucket_id"),
            _f("id", "directory", "name", "updated_at", "created_at"),
            {"bucket": ("bucket_id", "buckets")}, writable=False),
    )
}  # fmt: skip


def _now() -> str:
    # the Hub keeps SQLite datetimes: whole seconds
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# -- tokens --------------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class _TokenError(Exception):
    def __init__(self, kind: Literal["malformed", "expired"]) -> None:
        super().__init__(kind)
        self.kind = kind


class _Tokens:
    """HS256 JWTs like authup's: access tokens with a true ``exp``; single-use refresh tokens."""

    def __init__(self, issuer: str, access: float, refresh: float) -> None:
        self._key = secrets.token_bytes(32)
        self._issuer = issuer
        self.access = access
        self.refresh = refresh
        self._active_refresh: set[str] = set()

    def _sign(self, claims: dict[str, Any]) -> str:
        head = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
        body = _b64(orjson.dumps(claims))
        mac = hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(mac)}"

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this emulator signed.

        Raises:
            _TokenError: It does not verify (``malformed``) or has expired (``expired``).
        """
        parts = token.split(".")
        if len(parts) != 3:
            raise _TokenError("malformed")
        try:
            mac = _unb64(parts[2])
            claims = orjson.loads(_unb64(parts[1]))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise _TokenError("malformed") from exc
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected) or not isinstance(claims, dict):
            raise _TokenError("malformed")
        # authup compares whole seconds: a token is still good during the second of its exp
        if math.floor(time.time()) > float(claims.get("exp", 0)):
            raise _TokenError("expired")
        return claims

    def grant(self, subject: dict[str, Any], scope: str = "global") -> dict[str, Any]:
        now = time.time()
        base = {
            "iss": self._issuer,
            "sub": subject["id"],
            "sub_kind": subject["kind"],
            "realm_id": subject["realm_id"],
            "realm_name": "master",
            "scope": scope,
            "iat": math.floor(now),
        }
        access = self._sign({**base, "kind": "access_token", "jti": str(uuid.uuid4()),
                             "exp": math.floor(now + self.access)})  # fmt: skip
        refresh_jti = str(uuid.uuid4())
        refresh = self._sign({**base, "kind": "refresh_token", "jti": refresh_jti,
                              "exp": math.floor(now + self.refresh)})  # fmt: skip
        self._active_refresh.add(refresh_jti)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": _ADVERTISED_EXPIRES_IN,
            "token_type": "Bearer",
            "scope": scope,
        }

    def use_refresh(self, token: str) -> dict[str, Any]:
        """The claims of an unused refresh token, which is used up now.

        Raises:
            _TokenError: As :meth:`verify`; ``malformed`` also for a used one.
        """
        claims = self.verify(token)
        if claims.get("kind") != "refresh_token" or claims["jti"] not in self._active_refresh:
            raise _TokenError("malformed")
        self._active_refresh.discard(claims["jti"])
        return claims


# -- the emulator --------------------------------------------------------------------------------

_ID_SEGMENT = re.compile(r"[0-9a-fA-F-]{36}")


@dataclasses.dataclass(slots=True)
class _Stored:
    seq: int
    record: dict[str, Any]


class HubEmulator:
    """The FLAME Hub's three services over real HTTP on 127.0.0.1 (ephemeral ports).

    Example::

        async with HubEmulator(wire_case="camel") as hub:
            ... hub.auth_url, hub.core_url, hub.storage_url, hub.admin_user ...

    Args:
        wire_case: ``"snake"`` (Hubs up to 0.8, the default) or ``"camel"``.
        host: Where the three servers listen.
        admin_user: The master realm's admin user.
        admin_password: Its password.
        robot_secret: The ``system`` robot's secret (``robot_credentials`` grant); the
            ``system`` client (``client_credentials``) has the same secret.
        access_token_lifetime: Seconds from ``iat`` to ``exp`` of access tokens.
        refresh_token_lifetime: The same for refresh tokens.
        strict_filters: Answer 400 for a filter key outside a resource's allow-list (newer
            Hubs) instead of dropping it (the 0.8 line).
        auto_buckets: Create the CODE, RESULT and TEMP analysis buckets (and their storage
            buckets) with every analysis, as a Hub with its analysis manager does. The pinned real
            Hub has no analysis manager, so the default is False.
        faults: What to inject; None: nothing.
        work_dir: Where uploads are stored; a temporary folder (removed on exit) when None.

    Raises:
        InvalidArgument: An option is invalid.
    """

    def __init__(
        self,
        *,
        wire_case: WireCase = "snake",
        host: str = "127.0.0.1",
        admin_user: str = "admin",
        admin_password: str = "start123",  # noqa: S107 - authup's default, a test double's
        robot_secret: str = "start123robotsecret",  # noqa: S107
        access_token_lifetime: float = 3600.0,
        refresh_token_lifetime: float = 259200.0,
        strict_filters: bool = False,
        auto_buckets: bool = False,
        faults: HubFaults | None = None,
        work_dir: Path | None = None,
    ) -> None:
        if wire_case not in ("snake", "camel"):
            raise InvalidArgument(f"wire_case must be 'snake' or 'camel', got {wire_case!r}")
        if not access_token_lifetime > 0 or not refresh_token_lifetime > 0:
            raise InvalidArgument("token lifetimes must be positive")
        self.wire_case: WireCase = wire_case
        self._host = host
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.robot_secret = robot_secret
        self.access_token_lifetime = float(access_token_lifetime)
        self.refresh_token_lifetime = float(refresh_token_lifetime)
        self.strict_filters = strict_filters
        self.auto_buckets = auto_buckets
        self.faults = faults or HubFaults()
        self._work_dir_option = work_dir
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests received per ``"METHOD /template"`` (ids as ``{id}``), faults included."""
        self.creates: collections.Counter[str] = collections.Counter()
        """Records created per resource (``"nodes"``), also those whose answer was dropped."""
        self.token_grants: collections.Counter[str] = collections.Counter()
        """Tokens issued per grant type (``"password"``, ``"refresh_token"``, ...)."""
        self._records: dict[str, dict[str, _Stored]] = {name: {} for name in _KINDS}
        self._seq = 0
        self._listings: dict[tuple[str, str, tuple[tuple[str, bool], ...]], list[_Stored]] = {}
        """Filtered, sorted rows per (resource, filters, sort), emptied on every change: a
        page is then a slice, as cheap as the Hub's indexed query, whatever the record count."""
        self._dice: collections.Counter[str] = collections.Counter()
        self._injected: list[tuple[str | None, str | None, Fault, dict[str, str]]] = []
        self._phase: Literal["new", "running", "closed"] = "new"
        self._stack: AsyncExitStack | None = None
        self._urls: dict[_Service, str] = {}
        self._files_dir = Path()
        self._tokens = _Tokens("", self.access_token_lifetime, self.refresh_token_lifetime)
        self.realm_id = str(uuid.uuid4())
        self.admin_id = str(uuid.uuid4())
        self.robot_id = str(uuid.uuid4())
        self.client_id = str(uuid.uuid4())

    def __repr__(self) -> str:
        return f"HubEmulator(wire_case={self.wire_case!r}, {self._phase})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Bind three ephemeral ports and serve auth, core and storage.

        Raises:
            HubEmulatorStateError: Entered before.
            OSError: A port could not be bound.
        """
        if self._phase != "new":
            raise HubEmulatorStateError("a HubEmulator can be entered only once")
        self._phase = "running"
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            self._phase = "closed"
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the servers and remove the uploads (unless ``work_dir`` was given)."""
        stack, self._stack = self._stack, None
        self._phase = "closed"
        if stack is not None:
            await stack.aclose()

    async def _start(self, stack: AsyncExitStack) -> None:
        if self._work_dir_option is None:
            work = Path(
                await anyio.to_thread.run_sync(
                    functools.partial(tempfile.mkdtemp, prefix="flame-hub-emulator-")
                )
            )
            stack.push_async_callback(
                anyio.to_thread.run_sync, functools.partial(shutil.rmtree, work, True)
            )
        else:
            work = self._work_dir_option
        self._files_dir = work / "files"
        self._files_dir.mkdir(parents=True, exist_ok=True)
        sockets: dict[_Service, socket.socket] = {}
        for service in ("auth", "core", "storage"):
            sockets[service] = sock = bind_socket(self._host)
            stack.callback(sock.close)
            host = f"[{self._host}]" if ":" in self._host else self._host
            self._urls[service] = f"http://{host}:{sock.getsockname()[1]}/"
        self._tokens = _Tokens(
            self._urls["auth"].rstrip("/"), self.access_token_lifetime, self.refresh_token_lifetime
        )
        self._seed()
        for service, sock in sockets.items():
            await serve(functools.partial(self._handle, service), sock, stack)

    def _seed(self) -> None:
        self._insert("realms", {"id": self.realm_id, "name": "master", "built_in": True})
        realm = self.realm_id
        admin = {"id": self.admin_id, "name": self.admin_user, "password": self.admin_password}
        self._insert("users", {**admin, "realm_id": realm})
        robot = {"id": self.robot_id, "name": "system", "secret": self.robot_secret}
        self._insert("robots", {**robot, "realm_id": realm})
        client = {"id": self.client_id, "name": "system", "secret": self.robot_secret}
        self._insert("clients", {**client, "built_in": True, "realm_id": realm})
        # what the master-image sync would bring (the real test Hub's script seeds the same)
        self._insert("master-image-groups", {"name": "python", "path": "python",
                                             "virtual_path": "python"})  # fmt: skip
        self._insert("master-images", {"name": "base", "path": "python/base", "command": "python",
                                       "virtual_path": "python/base",
                                       "group_virtual_path": "python"})  # fmt: skip
        self.creates.clear()

    # -- URLs and counters -------------------------------------------------------------------

    def _url(self, service: _Service) -> str:
        url = self._urls.get(service)
        if url is None or self._phase != "running":
            raise HubEmulatorStateError(
                "the HubEmulator is not running; use `async with HubEmulator() as hub:` first"
            )
        return url

    @property
    def auth_url(self) -> str:
        """authup's base URL (with a trailing ``/``)."""
        return self._url("auth")

    @property
    def core_url(self) -> str:
        """Hub core's base URL."""
        return self._url("core")

    @property
    def storage_url(self) -> str:
        """Hub storage's base URL."""
        return self._url("storage")

    def records(self, resource: str) -> list[dict[str, Any]]:
        """Copies of the stored records of ``resource`` (snake_case keys), in insertion order.

        Raises:
            KeyError: No such resource.
        """
        return [dict(s.record) for s in self._records[resource].values()]

    def add(self, resource: str, **fields: Any) -> dict[str, Any]:
        """Create a record without HTTP, as the admin user would (for large data sets).

        The same checks and side effects as ``POST /<resource>`` apply (required fields,
        lengths, unique constraints, a node's robot, counters of the parent records) and it
        counts in :attr:`creates`; field names are snake_case.

        Raises:
            KeyError: No such resource.
            ValueError: The Hub would refuse the record (the message says why).
        """
        kind = _KINDS[resource]
        admin = {"id": self.admin_id, "kind": "user", "realm_id": self.realm_id}
        try:
            record = self._admit(kind, fields, admin)
        except _Refused as refused:
            body = refused.response.body
            detail = orjson.loads(body) if isinstance(body, bytes) and body else {}
            raise ValueError(
                f"{resource}: {detail.get('message', refused.response.status)}"
            ) from None
        created = self._insert(resource, record)
        self._after_create(kind, created)
        return dict(created)

    def inject(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Hurt the next request that matches ``method`` and ``path`` (a template such as
        ``/nodes`` or ``/nodes/{id}``; None matches any), once.

        ``"503"``/``"500"`` answer unserved, ``"429"`` answers with
        ``Retry-After: faults.retry_after``, ``"drop-before"`` closes the connection
        unserved and ``"drop-after"`` serves the request, then closes the connection.
        """
        self._injected.append((method, path, fault, dict(headers or {})))

    # -- request handling --------------------------------------------------------------------

    async def _handle(self, service: _Service, request: Request) -> Response:
        path = request.decoded_path.rstrip("/") or "/"
        template = "/".join(
            "{id}" if _ID_SEGMENT.fullmatch(seg) else seg for seg in path.split("/")
        )
        kind = f"{request.method} {template}"
        self.requests[kind] += 1
        if self.faults.latency:
            await anyio.sleep(self.faults.latency)
        fault = self._fault(request.method, template, kind, token=path == "/token")
        if fault in ("503", "500"):
            return _error(int(fault), "injected by the Hub emulator")
        if fault == "429":
            retry = str(self.faults.retry_after)
            return _json(
                {"statusCode": 429, "code": "TOO_MANY_REQUESTS", "message": "slow down"},
                429,
                {"retry-after": retry},
            )
        if fault == "drop-before":
            raise ConnectionDropped
        try:
            response = await self._route(service, request, path)
        except _Refused as refused:
            response = refused.response
        finally:
            if request.method not in ("GET", "HEAD"):
                # a write may change any record (counters of parents, commands, relations):
                # no cached listing outlives it
                self._listings.clear()
        if fault == "drop-after":
            await response.aclose()
            raise ConnectionDropped
        return response

    def _fault(self, method: str, template: str, kind: str, *, token: bool) -> Fault | None:
        for i, (m, p, fault, _) in enumerate(self._injected):
            if (m is None or m == method) and (p is None or p == template):
                del self._injected[i]
                return fault
        f = self.faults
        if token or not (f.get_503 or f.drop_before or f.drop_after or f.too_many):
            return None
        n = self._dice[kind]
        self._dice[kind] += 1
        roll = random.Random(f"{f.seed}|{kind}|{n}").random()  # noqa: S311 - test dice
        dice: tuple[tuple[float, Fault], ...] = (
            (f.get_503 if method == "GET" else 0.0, "503"),
            (f.drop_before, "drop-before"),
            (f.drop_after, "drop-after"),
            (f.too_many, "429"),
        )
        for fraction, fault in dice:
            if roll < fraction:
                return fault
            roll -= fraction
        return None

    async def _route(  # noqa: PLR0911, PLR0912 - a route table as code
        self, service: _Service, request: Request, path: str
    ) -> Response:
        parts = [p for p in path.split("/") if p]
        method = request.method
        if not parts:
            return _json({"version": "0.8.14", "timestamp": int(time.time() * 1000)})
        if service == "auth" and parts == ["token"] and method == "POST":
            return await self._token(request)
        identity = self._identity(service, request)
        name = parts[0]
        kind = _KINDS.get(name)
        if kind is None or kind.service != service:
            return Response(404)  # the Hub's router: no body
        rest = parts[1:]
        if name == "analyses" and len(rest) == 2 and rest[1] == "command" and method == "POST":
            return await self._command(request, rest[0])
        if name == "buckets" and len(rest) == 2 and rest[1] == "upload" and method == "POST":
            return await self._upload(request, rest[0], identity)
        if name in ("buckets", "bucket-files") and len(rest) == 2 and rest[1] == "stream":
            if method != "GET":
                return Response(404)
            return self._stream_bucket(rest[0]) if name == "buckets" else self._stream_file(rest[0])
        if not rest:
            if method in ("GET", "HEAD"):
                return self._list(kind, request)
            if method == "POST" and kind.writable:
                return await self._create(kind, request, identity)
        elif len(rest) == 1:
            if method in ("GET", "HEAD"):
                return self._get(kind, rest[0], request)
            if method == "POST" and kind.writable:
                return await self._update(kind, rest[0], request)
            if method == "DELETE":
                return self._delete(kind, rest[0])
        return Response(404)

    # -- identity and tokens -----------------------------------------------------------------

    def _identity(self, service: _Service, request: Request) -> dict[str, Any]:
        """Who sent the request, or the answer authup / the Hub's middleware gives instead:
        401 without a header, 500 ``auth_header_parse`` for another scheme, 400 for a token that
        does not verify (core: ``BAD_REQUEST`` with no message; authup: ``invalid_token``), 500
        for an expired one."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise _Refused(_error(401))
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refused(_error(500, _INTERNAL, code="auth_header_parse"))
        invalid = (
            _error(400, "The JWT is invalid.", code="invalid_token")
            if service == "auth"
            else _error(400)
        )
        try:
            claims = self._tokens.verify(token.strip())
        except _TokenError as exc:
            if exc.kind == "expired":
                raise _Refused(_error(500, _INTERNAL)) from exc
            raise _Refused(invalid) from exc
        if claims.get("kind") != "access_token":
            raise _Refused(invalid)
        return {"id": claims["sub"], "kind": claims["sub_kind"], "realm_id": claims["realm_id"]}

    async def _token(self, request: Request) -> Response:  # noqa: PLR0911 - one per grant
        body = await self._body(request)
        grant = body.get("grant_type")
        if grant is None:
            grant = "password" if "username" in body else "robot_credentials"
        subject: dict[str, Any] | None = None
        if grant == "password":
            user = self._find("users", name=str(body.get("username")))
            if user is None or user.get("password") != body.get("password"):
                return _oauth_error("invalid_credentials", "The user credentials are invalid.")
            subject = {"id": user["id"], "kind": "user", "realm_id": user["realm_id"]}
        elif grant == "robot_credentials":
            robot = self._records["robots"].get(str(body.get("id")))
            if robot is None or robot.record.get("secret") != body.get("secret"):
                return _oauth_error("invalid_credentials", "The robot credentials are invalid.")
            subject = {"id": robot.record["id"], "kind": "robot",
                       "realm_id": robot.record["realm_id"]}  # fmt: skip
        elif grant == "client_credentials":
            client = self._records["clients"].get(str(body.get("client_id")))
            if client is None or client.record.get("secret") != body.get("client_secret"):
                return _oauth_error("invalid_credentials", "The client credentials are invalid.")
            subject = {"id": client.record["id"], "kind": "client",
                       "realm_id": client.record["realm_id"]}  # fmt: skip
        elif grant == "refresh_token":
            try:
                claims = self._tokens.use_refresh(str(body.get("refresh_token", "")))
            except _TokenError as exc:
                if exc.kind == "expired":
                    return _error(500, _INTERNAL)
                return _oauth_error("inactive_token", "The JWT is not active.")
            subject = {"id": claims["sub"], "kind": claims["sub_kind"],
                       "realm_id": claims["realm_id"]}  # fmt: skip
        else:
            return _error(400, _INVALID_GRANT, code="invalid_grant", error="invalid_grant")
        self.token_grants[grant] += 1
        return _json(self._tokens.grant(subject))

    # -- bodies and casing -------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.read(_JSON_LIMIT)
        if not raw.strip():
            return {}
        if request.content_type == "application/x-www-form-urlencoded":
            return dict(parse_qsl(raw.decode("utf-8", "replace")))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Refused(_error(400, "The request body is not valid JSON.")) from exc
        if not isinstance(body, dict):
            raise _Refused(_error(400, "The request body must be an object."))
        return _keys(body, _to_snake) if self.wire_case == "camel" else body

    def _wire_key(self, key: str) -> str:
        return _to_snake(key) if self.wire_case == "camel" else key

    def _out(
        self, kind: _Kind, record: dict[str, Any], fields: str | None = None
    ) -> dict[str, Any]:
        shown = {k: v for k, v in record.items() if k not in kind.hidden}
        if fields is not None and kind.selectable:
            shown = self._select(kind, shown, fields)
        return _keys(shown, _to_camel) if self.wire_case == "camel" else shown

    def _select(self, kind: _Kind, shown: dict[str, Any], fields: str) -> dict[str, Any]:
        """rapiq ``fields``: a plain list selects (unknown names ignored), ``-x`` drops, ``+x``
        adds (every field is shown already); relations asked for with ``include`` stay."""
        names = [self._wire_key(f.strip()) for f in fields.split(",") if f.strip()]
        plain = [n for n in names if n[0] not in "+-" and n in shown]
        dropped = {n[1:] for n in names if n.startswith("-")}
        relations = {r for r in kind.relations if r in shown}
        if plain:
            return {k: v for k, v in shown.items() if k in plain or k in relations}
        return {k: v for k, v in shown.items() if k not in dropped}

    # -- storage of records ------------------------------------------------------------------

    def _insert(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        kind = _KINDS[name]
        now = _now()
        record = {"id": str(uuid.uuid4()), **kind.defaults, "created_at": now, "updated_at": now}
        record.update(data)
        self._seq += 1
        self._records[name][record["id"]] = _Stored(self._seq, record)
        self._listings.clear()
        self.creates[name] += 1
        return record

    def _find(self, resource: str, **match: Any) -> dict[str, Any] | None:
        for stored in self._records[resource].values():
            if all(stored.record.get(k) == v for k, v in match.items()):
                return stored.record
        return None

    def _require(self, name: str, record_id: Any, what: str) -> dict[str, Any]:
        stored = self._records[name].get(str(record_id))
        if stored is None:
            raise _Refused(_error(400, f"The {what} does not exist."))
        return stored.record

    # -- generic CRUD ------------------------------------------------------------------------

    def _query(self, request: Request) -> list[tuple[str, str]]:
        return parse_qsl(request.query_string, keep_blank_values=True)

    def _list(self, kind: _Kind, request: Request) -> Response:
        filters: list[_Filter] = []
        limit: int | None = None
        offset: int | None = None
        sort: list[tuple[str, bool]] = []
        include: list[str] = []
        fields: str | None = None
        for key, value in self._query(request):
            if key.startswith("filter[") and key.endswith("]"):
                dotted = (
                    self._wire_key(key[7:-1])
                    if "." not in key
                    else ".".join(self._wire_key(p) for p in key[7:-1].split("."))
                )
                parsed = self._filter(kind, dotted, value)
                if parsed is not None:
                    filters.append(parsed)
            elif key == "page[limit]":
                limit = _positive_int(value, minimum=1)
            elif key == "page[offset]":
                offset = _positive_int(value, minimum=0)
            elif key == "sort":
                sort = self._sort(kind, value)
            elif key == "include":
                include = self._include(kind, value)
            elif key == "fields":
                fields = value
        paged = any(key.startswith("page[") for key, _ in self._query(request))
        limit = MAX_LIMIT if limit is None or limit > MAX_LIMIT else limit
        offset = offset or 0
        rows = self._rows(kind, filters, tuple(sort or kind.default_sort))
        if kind.service == "auth" and not paged:
            # authup pages only when asked to: everything, and only the total
            data = [self._out(kind, self._with(kind, s.record, include), fields) for s in rows]
            return _json({"data": data, "meta": {"total": len(rows)}})
        page = rows[offset : offset + limit]
        data = [self._out(kind, self._with(kind, s.record, include), fields) for s in page]
        return _json({"data": data, "meta": {"total": len(rows), "limit": limit, "offset": offset}})

    def _rows(
        self, kind: _Kind, filters: list[_Filter], order: tuple[tuple[str, bool], ...]
    ) -> list[_Stored]:
        """The records that pass ``filters``, in ``order`` (ties in insertion order); cached
        until the next change, so the pages of one listing filter and sort only once."""
        # repr, not the values: 1, 1.0 and True are equal keys but different filters
        key = (kind.name, repr(filters), order)
        rows = self._listings.get(key)
        if rows is None:
            rows = [
                s for s in self._records[kind.name].values() if self._keep(kind, s.record, filters)
            ]
            rows.sort(key=lambda s: s.seq)
            for field, descending in reversed(order):
                rows.sort(key=functools.partial(_sort_key, self, kind, field), reverse=descending)
            if len(self._listings) >= _LISTINGS_KEPT:
                self._listings.clear()
            self._listings[key] = rows
        return rows

    def _filter(self, kind: _Kind, dotted: str, value: str) -> _Filter | None:
        path, _, key = dotted.rpartition(".")
        allowed = kind.filters is None and (not path or path in kind.relations)
        allowed = allowed or (kind.filters is not None and dotted in kind.filters)
        if not allowed:
            if self.strict_filters:
                raise _Refused(_error(400, f"The filter key {dotted!r} is not allowed."))
            return None
        return _parse_filter(path or None, key, value)

    def _sort(self, kind: _Kind, value: str) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        for raw in value.split(","):
            item = raw.strip()
            descending = item.startswith("-")
            field = ".".join(self._wire_key(p) for p in item.lstrip("-").split("."))
            if kind.sorts is not None and field not in kind.sorts:
                continue
            if kind.sorts is None and "." in field:
                continue
            out.append((field, descending))
        return out

    def _include(self, kind: _Kind, value: str) -> list[str]:
        names = [self._wire_key(n.strip()) for n in value.split(",") if n.strip()]
        return [n for n in names if n in kind.relations]

    def _related(self, kind: _Kind, record: dict[str, Any], relation: str) -> dict[str, Any] | None:
        fk, target = kind.relations[relation]
        stored = self._records[target].get(str(record.get(fk)))
        return None if stored is None else stored.record

    def _value(self, kind: _Kind, record: dict[str, Any], path: str | None, key: str) -> Any:
        if path is None:
            return record.get(key)
        related = self._related(kind, record, path) if path in kind.relations else None
        return None if related is None else related.get(key)

    def _keep(self, kind: _Kind, record: dict[str, Any], filters: list[_Filter]) -> bool:
        for f in filters:
            # an inner join on the relation: no related record, no row
            if f.path is not None and (
                f.path not in kind.relations or self._related(kind, record, f.path) is None
            ):
                return False
            if not _matches(self._value(kind, record, f.path, f.key), f):
                return False
        return True

    def _with(self, kind: _Kind, record: dict[str, Any], include: Iterable[str]) -> dict[str, Any]:
        out = dict(record)
        for relation in include:
            related = self._related(kind, record, relation)
            target = _KINDS[kind.relations[relation][1]]
            out[relation] = (
                None
                if related is None
                else {k: v for k, v in related.items() if k not in target.hidden}
            )
        return out

    def _get(self, kind: _Kind, record_id: str, request: Request) -> Response:
        stored = self._records[kind.name].get(record_id)
        if stored is None:
            return _error(404)
        include: list[str] = []
        fields: str | None = None
        for key, value in self._query(request):
            if key == "include":
                include = self._include(kind, value)
            elif key == "fields":
                fields = value
        return _json(self._out(kind, self._with(kind, stored.record, include), fields))

    async def _create(self, kind: _Kind, request: Request, identity: dict[str, Any]) -> Response:
        body = await self._body(request)
        record = self._admit(kind, body, identity)
        # the answer joins the related records as they were before the create's side effects
        joined = self._with(kind, record, kind.created_with)
        created = self._insert(kind.name, record)
        self._after_create(kind, created)
        joined.update(created)
        return _json(self._out(kind, joined), 201)

    def _admit(
        self, kind: _Kind, body: Mapping[str, Any], identity: dict[str, Any]
    ) -> dict[str, Any]:
        """The record a create would store, after the Hub's checks (raises :class:`_Refused`)."""
        missing = [f for f in kind.required if body.get(f) in (None, "")]
        if missing:
            raise _Refused(_invalid(*missing))
        self._check_lengths(kind, body)
        data = {k: v for k, v in body.items() if k not in ("id", "created_at", "updated_at")}
        if "realm_id" in kind.defaults:
            data.setdefault("realm_id", identity["realm_id"])
        record = self._prepare(kind, data, identity)
        self._check_unique(kind, record, None)
        return record

    def _prepare(
        self, kind: _Kind, data: dict[str, Any], identity: dict[str, Any]
    ) -> dict[str, Any]:
        name = kind.name
        if name == "nodes":
            robot = self._insert("robots", {
                "name": str(uuid.uuid4()), "realm_id": data.get("realm_id") or self.realm_id,
                "secret": secrets.token_hex(16), "display_name": data.get("name"),
            })  # fmt: skip
            data["robot_id"] = robot["id"]
        elif name == "projects":
            data.setdefault("user_id", identity["id"] if identity["kind"] == "user" else None)
        elif name == "project-nodes":
            project = self._require("projects", data["project_id"], "project")
            node = self._require("nodes", data["node_id"], "node")
            data["project_realm_id"], data["node_realm_id"] = project["realm_id"], node["realm_id"]
            project["nodes"] += 1
        elif name == "analyses":
            project = self._require("projects", data["project_id"], "project")
            data.setdefault("master_image_id", project.get("master_image_id"))
            data["realm_id"] = project["realm_id"]
            data["user_id"] = identity["id"]
            project["analyses"] += 1
        elif name == "analysis-nodes":
            analysis = self._require("analyses", data["analysis_id"], "analysis")
            node = self._require("nodes", data["node_id"], "node")
            if (
                self._find("project-nodes", project_id=analysis["project_id"], node_id=node["id"])
                is None
            ):
                raise _Refused(
                    _error(404, "The referenced node is not part of the analysis project.")
                )
            data["analysis_realm_id"], data["node_realm_id"] = (
                analysis["realm_id"],
                node["realm_id"],
            )
            analysis["nodes"] += 1
        elif name in ("analysis-node-logs",):
            analysis = self._require("analyses", data["analysis_id"], "analysis")
            node = self._require("nodes", data["node_id"], "node")
            data["analysis_realm_id"], data["node_realm_id"] = (
                analysis["realm_id"],
                node["realm_id"],
            )
        elif name in ("analysis-logs", "analysis-buckets"):
            analysis = self._require("analyses", data["analysis_id"], "analysis")
            data["realm_id"] = analysis["realm_id"]
            if name == "analysis-buckets":
                data.pop("external_id", None)  # the 0.8.14 validator drops it on create
        elif name == "analysis-bucket-files":
            bucket = self._require("analysis-buckets", data["bucket_id"], "analysis bucket")
            data["analysis_id"], data["realm_id"] = bucket["analysis_id"], bucket["realm_id"]
            key = "user_id" if identity["kind"] == "user" else "robot_id"
            data[key] = identity["id"]
        elif name == "buckets":
            data["actor_id"], data["actor_type"] = identity["id"], identity["kind"]
        return data

    def _after_create(self, kind: _Kind, record: dict[str, Any]) -> None:
        if kind.name == "analyses" and self.auto_buckets:
            for bucket_type in ("CODE", "RESULT", "TEMP"):
                storage = self._insert("buckets", {
                    "name": f"analysis-{bucket_type.lower()}-{record['id']}",
                    "realm_id": record["realm_id"], "actor_id": record["user_id"],
                    "actor_type": "user",
                })  # fmt: skip
                self._insert("analysis-buckets", {
                    "type": bucket_type, "analysis_id": record["id"],
                    "external_id": storage["id"], "realm_id": record["realm_id"],
                })  # fmt: skip

    def _check_unique(self, kind: _Kind, record: Mapping[str, Any], own_id: str | None) -> None:
        for columns in kind.unique:
            values = [record.get(c) for c in columns]
            if any(v is None for v in values):
                continue
            for stored in self._records[kind.name].values():
                other = stored.record
                if other["id"] != own_id and [other.get(c) for c in columns] == values:
                    message = "An entry with some unique attributes already exist."
                    raise _Refused(_error(409, message, code="SQLITE_CONSTRAINT_UNIQUE"))

    @staticmethod
    def _check_lengths(kind: _Kind, body: Mapping[str, Any]) -> None:
        for field, (low, high) in kind.lengths.items():
            value = body.get(field)
            if value is not None and (not isinstance(value, str) or not low <= len(value) <= high):
                raise _Refused(_invalid(field, received=value))

    async def _update(self, kind: _Kind, record_id: str, request: Request) -> Response:
        stored = self._records[kind.name].get(record_id)
        if stored is None:
            return _error(404)
        body = await self._body(request)
        self._check_lengths(kind, body)
        self._check_unique(kind, {**stored.record, **body}, record_id)
        for key, value in body.items():
            if key not in ("id", "created_at", "updated_at"):
                stored.record[key] = value
        stored.record["updated_at"] = _now()
        return _json(self._out(kind, stored.record), 202)

    def _delete(self, kind: _Kind, record_id: str) -> Response:
        stored = self._records[kind.name].pop(record_id, None)
        if stored is None:
            return _error(404)
        if kind.name == "bucket-files":
            path = self._object(stored.record["bucket_id"], stored.record["hash"])
            path.unlink(missing_ok=True)
        return _json(self._out(kind, stored.record), 202)

    # -- analysis commands -------------------------------------------------------------------

    async def _command(  # noqa: PLR0911 - one answer per command
        self, request: Request, analysis_id: str
    ) -> Response:
        kind = _KINDS["analyses"]
        body = await self._body(request)
        stored = self._records["analyses"].get(analysis_id)
        if stored is None:
            return _error(404)
        analysis = stored.record
        command = body.get("command")
        if command == "configurationLock":
            checks = (
                (analysis["configuration_locked"], "configuration is already locked."),
                (analysis["build_status"], "build process has already been initialized."),
                (analysis["nodes"] < 2, "requires at least two nodes."),
            )
            for failed, message in checks:
                if failed:
                    return _error(400, f"The analysis {message}")
            if not analysis["master_image_id"]:
                return _error(400, "A master image must be assigned to the analysis.")
            self._check_lockable(analysis)
            analysis["configuration_locked"] = True
        elif command == "configurationUnlock":
            if not analysis["configuration_locked"]:
                return _error(400, "The analysis configuration is already unlocked.")
            analysis["configuration_locked"] = False
            analysis["build_status"] = None
        elif command in ("buildStart", "distributionStart"):
            if not analysis["configuration_locked"]:
                return _error(400, "The analysis configuration must be locked first.")
            analysis["build_status"] = "starting"
        elif command in ("buildStop",):
            analysis["build_status"] = "stopping"
        elif command not in (
            "spinUp", "tearDown", "buildStatus", "buildCheck", "distributionCheck", "storageCheck",
        ):  # fmt: skip
            return _invalid("command", received=command)
        analysis["updated_at"] = _now()
        return _json(self._out(kind, analysis), 202)

    def _check_lockable(self, analysis: dict[str, Any]) -> None:
        code = self._find("analysis-buckets", analysis_id=analysis["id"], type="CODE")
        if code is None:
            raise _Refused(_error(400, "The analysis bucket for code files does not exist."))
        if self._find("analysis-bucket-files", bucket_id=code["id"], root=True) is None:
            raise _Refused(_error(400, "At least one code file must be uploaded and at least "
                                       "one entrypoint file is required."))  # fmt: skip
        aggregators = 0
        for stored in self._records["analysis-nodes"].values():
            if stored.record["analysis_id"] == analysis["id"]:
                node = self._records["nodes"].get(stored.record["node_id"])
                aggregators += node is not None and node.record["type"] == "aggregator"
        if aggregators > 1:
            raise _Refused(_error(400, "Only one aggregator node can be part of the analysis."))
        if aggregators == 0:
            raise _Refused(
                _error(400, "At least one aggregator node has to be part of the analysis.")
            )

    # -- storage -----------------------------------------------------------------------------

    async def _upload(self, request: Request, bucket_id: str, identity: dict[str, Any]) -> Response:
        bucket = self._records["buckets"].get(bucket_id)
        if bucket is None:
            return _error(404)
        form = request.body
        if not isinstance(form, Form):
            return _error(400, "The request body must be multipart/form-data.")
        created: list[dict[str, Any]] = []
        async for part in form:
            filename = part.filename or part.name
            if not filename:
                continue
            # busboy reads a plain filename parameter as latin-1: UTF-8 names arrive garbled
            filename = filename.encode("utf-8", "surrogateescape").decode("latin-1")
            # the object is keyed by the hash of the path: the same path again replaces the
            # content for every record of it, as in the real storage
            file_hash = hashlib.sha256(filename.encode()).hexdigest()
            target = self._object(bucket_id, file_hash)
            target.parent.mkdir(exist_ok=True)
            partial = target.with_name(f"{file_hash}.{uuid.uuid4().hex}.part")
            size = 0
            try:
                async with await anyio.open_file(partial, "wb") as out:
                    async for chunk in part.chunks():
                        size += len(chunk)
                        await out.write(chunk)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
            directory, _, name = filename.rpartition("/")
            directory = directory or "."
            created.append(self._insert("bucket-files", {
                "name": name, "path": filename, "directory": directory,
                "hash": file_hash, "size": size, "bucket_id": bucket_id,
                "realm_id": bucket.record["realm_id"], "actor_id": identity["id"],
                "actor_type": identity["kind"],
            }))  # fmt: skip
        kind = _KINDS["bucket-files"]
        data = [self._out(kind, r) for r in created]
        return _json({"data": data, "meta": {"total": len(data)}}, 201)

    def _object(self, bucket_id: str, file_hash: str) -> Path:
        return self._files_dir / bucket_id / file_hash

    def _stream_file(self, file_id: str) -> Response:
        stored = self._records["bucket-files"].get(file_id)
        if stored is None:
            return _error(404)
        path = self._object(stored.record["bucket_id"], stored.record["hash"])
        if not path.exists():
            return _error(404)
        return Response(
            200,
            FileBody(path),
            headers={"content-type": "application/octet-stream"},
            content_length=path.stat().st_size,
        )

    def _stream_bucket(self, bucket_id: str) -> Response:
        if bucket_id not in self._records["buckets"]:
            return _error(404)
        files = [
            (s.record["path"] or s.record["name"], self._object(bucket_id, s.record["hash"]))
            for s in sorted(self._records["bucket-files"].values(), key=lambda s: s.seq)
            if s.record["bucket_id"] == bucket_id
        ]
        return Response(
            200, _tar_stream(files, traversal=self.faults.traversal_tar),
            headers={"content-type": "application/x-tar"},
        )  # fmt: skip


def _positive_int(value: str, *, minimum: int) -> int | None:
    """``parseInt(value, 10)`` as rapiq reads page values; None when rapiq ignores it."""
    match = re.match(r"\s*([+-]?\d+)", value)
    if match is None:
        return None
    number = int(match.group(1))
    return number if number >= minimum else None


def _sort_key(emulator: HubEmulator, kind: _Kind, field: str, stored: _Stored) -> tuple[int, Any]:
    path, _, key = field.rpartition(".")
    value = emulator._value(kind, stored.record, path or None, key)
    if value is None:
        return (0, 0)  # SQLite sorts NULL first
    value = _sql_value(value)
    return (1, value) if isinstance(value, int | float) else (2, str(value))


async def _tar_stream(files: list[tuple[str, Path]], *, traversal: bool) -> AsyncIterator[bytes]:
    """A ustar archive of ``files``, produced file by file (nothing held whole in memory)."""
    members = list(files)
    for name, path in members:
        info = tarfile.TarInfo(name)
        info.size = path.stat().st_size
        info.mtime = int(time.time())
        info.mode = 0o644
        yield info.tobuf(format=tarfile.USTAR_FORMAT)
        async with await anyio.open_file(path, "rb") as file:
            while chunk := await file.read(_CHUNK):
                yield chunk
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    if traversal:
        payload = b"escaped\n"
        info = tarfile.TarInfo("../x")
        info.size = len(payload)
        info.mode = 0o644
        yield info.tobuf(format=tarfile.USTAR_FORMAT)
        yield payload + b"\0" * (tarfile.BLOCKSIZE - len(payload))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
