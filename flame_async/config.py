"""Node configuration: read once from the environment, frozen afterwards.

The FLAME pod orchestrator gives every analysis container exactly five variables
(``ANALYSIS_ID``, ``PROJECT_ID``, ``DEPLOYMENT_NAME``, ``KEYCLOAK_TOKEN``, ``DATA_SOURCE_TOKEN``).
Everything else has a default that matches the real platform and can be overridden with a
``FLAME_*`` variable, which is how the local platform points nodes at 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from yarl import URL

from ._jwt import decode_claims
from .errors import ConfigError

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = [
    "ENV_OVERRIDES",
    "REQUIRED_ENV",
    "FlameConfig",
    "RetryPolicy",
    "TransportFactory",
    "node_environ",
    "node_transport",
    "use_environ",
    "use_transport",
]

REQUIRED_ENV = (
    "ANALYSIS_ID",
    "PROJECT_ID",
    "DEPLOYMENT_NAME",
    "KEYCLOAK_TOKEN",
    "DATA_SOURCE_TOKEN",
)
"""The variables the FLAME platform injects into every analysis container."""

ENV_OVERRIDES = {
    "FLAME_BASE_URL": "base URL of the node gateway (default http://nginx-{DEPLOYMENT_NAME})",
    "FLAME_API_HOST": "address the node API binds (default 0.0.0.0)",
    "FLAME_API_PORT": "port the node API binds (default 8000)",
    "FLAME_WEBHOOK_URL": "URL the broker posts messages to (default {base}/analysis/webhook)",
    "FLAME_PARTNER_STATUS_GRACE": "seconds after start-up during which /partner_status is ignored"
    " (default 100)",
    "FLAME_STARTUP_TIMEOUT": "seconds to wait for the gateway at start-up (default 60)",
    "FLAME_ANNOUNCE_API": "1: tell the local platform's gateway which port the node API got"
    " (local platform only; with FLAME_API_PORT=0)",
    "FLAME_MAX_API_BODY_BYTES": "largest request body the node API accepts (default 16 MiB)",
}
"""Optional variables and what they override."""

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("flame_async_environ", default=None)

TransportFactory: TypeAlias = "Callable[[FlameConfig], Transport]"
"""Builds the transport of a node from its configuration."""

_TRANSPORT: ContextVar[TransportFactory | None] = ContextVar("flame_async_transport", default=None)


def node_environ() -> Mapping[str, str]:
    """The environment a ``FlameSDK()`` without a config reads: the one set by
    :func:`use_environ` for the current task, else ``os.environ``.
    """
    return _ENVIRON.get() or os.environ


@contextmanager
def use_environ(environ: Mapping[str, str]) -> Iterator[None]:
    """Make ``environ`` the node environment of the current task (and tasks it starts).

    This is how several nodes run in one process: each node's task sees its own variables.
    """
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def node_transport() -> TransportFactory | None:
    """The transport factory a ``FlameSDK()`` without a transport uses in the current task
    (set by :func:`use_transport`), or None for the default (HTTP)."""
    return _TRANSPORT.get()


@contextmanager
def use_transport(factory: TransportFactory) -> Iterator[None]:
    """Make ``factory`` build the transport of every ``FlameSDK()`` without one in the current
    task (and tasks it starts): how the local runner gives in-process nodes their socket or the
    in-memory transport."""
    token = _TRANSPORT.set(factory)
    try:
        yield
    finally:
        _TRANSPORT.reset(token)


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class RetryPolicy(BaseModel):
    """When and how often a failed request is tried again.

    Delays grow exponentially from ``initial`` by ``multiplier`` up to ``maximum``, each scaled by
    a random factor in ``[1 - jitter, 1]``. Retrying stops after ``attempts`` tries in all or once
    ``deadline`` seconds have passed since the first try, whichever comes first. ``instant``
    keeps the count but removes the sleeping (for tests).
    """

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(default=6, ge=1)
    initial: float = Field(default=0.05, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    maximum: float = Field(default=2.0, ge=0)
    jitter: float = Field(default=0.5, ge=0, le=1)
    deadline: float = Field(default=30.0, gt=0)
    instant: bool = False

    def delays(self) -> Iterator[float]:
        """Yield the sleep before each retry (``attempts - 1`` values)."""
        delay = self.initial
        for _ in range(self.attempts - 1):
            if self.instant:
                yield 0.0
            else:
                yield min(delay, self.maximum) * (1 - self.jitter * random.random())  # noqa: S311
            delay *= self.multiplier


class FlameConfig(BaseModel):
    """Everything a node needs to know about itself; frozen once built.

    Build it with :meth:`from_env` (the normal path) or directly in tests. Tokens are
    :class:`~pydantic.SecretStr` and never appear in ``repr`` or logs.

    Attributes:
        analysis_id: ``ANALYSIS_ID``: the analysis (the Hub's id).
        project_id: ``PROJECT_ID``: the analysis' project.
        deployment_name: ``DEPLOYMENT_NAME``: the node's deployment; its gateway is
            ``http://nginx-{deployment_name}``.
        keycloak_token: ``KEYCLOAK_TOKEN``: the bearer token for the broker, storage and PO
            (replaced by ``/token_refresh``).
        data_source_token: ``DATA_SOURCE_TOKEN``: the data proxy's key (a secret too: the
            data clients hold it as ``SecretStr`` and unwrap it only into a request's header).
        base_url: ``FLAME_BASE_URL``: the gateway's base URL (default from the deployment).
        api_host: ``FLAME_API_HOST``: address the node API binds (default ``0.0.0.0``).
        api_port: ``FLAME_API_PORT``: port the node API binds (default 8000; 0: any free one).
        webhook_url: ``FLAME_WEBHOOK_URL``: where the broker posts this node's messages
            (default ``{base_url}/analysis/webhook``).
        partner_status_grace: ``FLAME_PARTNER_STATUS_GRACE``: seconds after start-up during
            which partner statuses are ignored (default 100).
        startup_timeout: ``FLAME_STARTUP_TIMEOUT``: seconds to wait for the gateway at start-up
            (default 60).
        request_timeout: Seconds one request to a node service may take (default 30).
        max_api_body_bytes: ``FLAME_MAX_API_BODY_BYTES``: largest request body the node API
            accepts (default 16 MiB).
        announce_api: ``FLAME_ANNOUNCE_API``: tell the local platform's gateway which port the
            node API got (local platform only).
        retry: How failed requests are retried.
    """

    model_config = ConfigDict(frozen=True)

    analysis_id: str
    project_id: str
    deployment_name: str
    keycloak_token: SecretStr
    data_source_token: SecretStr
    base_url: str = ""
    api_host: str = "0.0.0.0"  # noqa: S104 - the platform's nginx must reach the API
    api_port: int = Field(default=8000, ge=0, le=65535)
    webhook_url: str = ""
    partner_status_grace: float = Field(default=100.0, ge=0)
    startup_timeout: float = Field(default=60.0, gt=0)
    request_timeout: float = Field(default=30.0, gt=0)
    max_api_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    announce_api: bool = False
    retry: RetryPolicy = RetryPolicy()

    def model_post_init(self, context: Any, /) -> None:
        """Fill the URLs derived from the deployment name."""
        if not self.base_url:
            object.__setattr__(self, "base_url", f"http://nginx-{self.deployment_name}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not self.webhook_url:
            object.__setattr__(self, "webhook_url", f"{self.base_url}/analysis/webhook")

    @property
    def uses_platform_gateway(self) -> bool:
        """True when the base URL is the real platform's ``http://nginx-{DEPLOYMENT_NAME}``."""
        return self.base_url == f"http://nginx-{self.deployment_name}"

    @property
    def base(self) -> URL:
        """The gateway base URL as a :class:`yarl.URL`."""
        return URL(self.base_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Self:  # noqa: PLR0912, PLR0915 - one check per variable, read top to bottom
        """Read the node configuration from ``environ`` (normally ``os.environ``).

        Args:
            environ: The environment to read; nothing else is consulted.
            **overrides: Field values that win over the environment (for example
                ``retry=RetryPolicy(instant=True)`` in tests).

        Raises:
            ConfigError: One or more variables are missing or malformed; the error lists every
                problem, not just the first.
        """
        problems: list[str] = []
        values: dict[str, Any] = {}

        def required(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                problems.append(f"{name} is not set (the FLAME platform sets it for every node)")
            return value

        for name, field in (("ANALYSIS_ID", "analysis_id"), ("PROJECT_ID", "project_id")):
            value = required(name)
            if value and not _ID.fullmatch(value):
                problems.append(f"{name}={value!r} may contain only letters, digits, '.', '_', '-'")
            values[field] = value
        deployment = required("DEPLOYMENT_NAME")
        if deployment and not _HOSTNAME.fullmatch(deployment):
            problems.append(
                f"DEPLOYMENT_NAME={deployment!r} is not a valid host name label "
                "(letters, digits and '-', at most 63 characters)"
            )
        values["deployment_name"] = deployment
        token = required("KEYCLOAK_TOKEN")
        if token:
            try:
                decode_claims(token)
            except ValueError as exc:
                problems.append(f"KEYCLOAK_TOKEN is not a JWT: {exc}")
        values["keycloak_token"] = SecretStr(token)
        values["data_source_token"] = SecretStr(required("DATA_SOURCE_TOKEN"))

        for name, field in (("FLAME_BASE_URL", "base_url"), ("FLAME_WEBHOOK_URL", "webhook_url")):
            if raw := environ.get(name, "").strip():
                url = URL(raw)
                if url.scheme not in ("http", "https") or not url.host:
                    problems.append(f"{name}={raw!r} is not an absolute http(s) URL")
                values[field] = raw
        if raw := environ.get("FLAME_API_HOST", "").strip():
            values["api_host"] = raw
        if raw := environ.get("FLAME_API_PORT", "").strip():
            if raw.isdigit() and int(raw) <= 65535:
                values["api_port"] = int(raw)
            else:
                problems.append(f"FLAME_API_PORT={raw!r} is not a port number (0-65535)")
        for name, field in (
            ("FLAME_PARTNER_STATUS_GRACE", "partner_status_grace"),
            ("FLAME_STARTUP_TIMEOUT", "startup_timeout"),
        ):
            if raw := environ.get(name, "").strip():
                try:
                    number = float(raw)
                except ValueError:
                    number = -1.0
                if not number >= 0:
                    problems.append(f"{name}={raw!r} is not a non-negative number of seconds")
                else:
                    values[field] = number
        if raw := environ.get("FLAME_MAX_API_BODY_BYTES", "").strip():
            if raw.isascii() and raw.isdigit() and int(raw) > 0:
                values["max_api_body_bytes"] = int(raw)
            else:
                problems.append(
                    f"FLAME_MAX_API_BODY_BYTES={raw!r} is not a positive number of bytes"
                )
        if raw := environ.get("FLAME_ANNOUNCE_API", "").strip():
            if raw.lower() in ("1", "true", "yes"):
                values["announce_api"] = True
            elif raw.lower() not in ("0", "false", "no"):
                problems.append(f"FLAME_ANNOUNCE_API={raw!r} is not 1 or 0")
        if problems:
            raise ConfigError(problems)
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce this configuration with :meth:`from_env`."""
        return {
            "ANALYSIS_ID": self.analysis_id,
            "PROJECT_ID": self.project_id,
            "DEPLOYMENT_NAME": self.deployment_name,
            "KEYCLOAK_TOKEN": self.keycloak_token.get_secret_value(),
            "DATA_SOURCE_TOKEN": self.data_source_token.get_secret_value(),
            "FLAME_BASE_URL": self.base_url,
            "FLAME_API_HOST": self.api_host,
            "FLAME_API_PORT": str(self.api_port),
            "FLAME_WEBHOOK_URL": self.webhook_url,
            "FLAME_PARTNER_STATUS_GRACE": repr(self.partner_status_grace),
            "FLAME_STARTUP_TIMEOUT": repr(self.startup_timeout),
            "FLAME_ANNOUNCE_API": "1" if self.announce_api else "0",
            "FLAME_MAX_API_BODY_BYTES": str(self.max_api_body_bytes),
        }
