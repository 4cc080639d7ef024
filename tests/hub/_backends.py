"""Where a Hub test connects: the real Hub (authup + core + storage on 127.0.0.1) or the emulator.

Both backends hand out the same frozen :class:`HubConnection`, so a test written against one
runs against the other. The real Hub is built and started by ``real_hub/start_real_hub.sh`` (the
project's copy of ``../shared/hub/start_real_hub.sh``) once per test session, outside every test's
time limit (see ``conftest.py``); this module only runs the script and reads its ``env`` output.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Final, Literal

from flame_async.local import HubEmulator

__all__ = [
    "INSTANCES",
    "SCRIPT",
    "SHARED_HUB",
    "HubConnection",
    "RealHubInstance",
    "RealHubState",
    "prepare_instance",
    "shared_hub",
    "stop_instance",
]

ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = Path(__file__).resolve().parent / "real_hub" / "start_real_hub.sh"
SHARED_HUB: Final = ROOT.parent / "shared" / "hub"
"""The real Hub's sources and lockfile (``vendor/``); CI lays ``shared/`` beside the clone.
``FLAME_SHARED_HUB`` names another folder."""


def shared_hub() -> Path:
    """Where the real Hub's ``vendor/`` folder is looked for."""
    return Path(os.environ.get("FLAME_SHARED_HUB", SHARED_HUB))


_BUILD_TIMEOUT: Final = 40 * 60.0
"""The whole ``start`` (a first build takes 4-5 minutes on 2 cores; a built tree ~15 s)."""

WireCase = Literal["snake", "camel"]


@dataclasses.dataclass(frozen=True, slots=True)
class HubConnection:
    """How a test reaches a Hub: base URLs and credentials.

    Attributes:
        kind: ``"real"`` or ``"emulator"``.
        auth_url: authup's base URL (ends with ``/``).
        core_url: Hub core's base URL.
        storage_url: Hub storage's base URL.
        user: An admin user of the master realm.
        password: Its password (not shown in ``repr``).
        robot_id: The ``system`` robot's id (``robot_credentials`` grant).
        robot_secret: Its secret (not shown in ``repr``).
        wire_case: ``"snake"`` (Hubs up to 0.8) or ``"camel"`` (current Hubs).
        commands: True when analysis commands work (the real Hub needs RabbitMQ for them).
        access_token_max_age: The server's access-token lifetime in seconds (3600 by default;
            ``expires_in`` always says 3600, only the JWT's ``exp`` tells).
        refresh_token_max_age: The server's refresh-token lifetime in seconds.
        emulator: The :class:`HubEmulator` behind an ``"emulator"`` connection (its counters
            and fault knobs), None for the real Hub.
    """

    kind: Literal["real", "emulator"]
    auth_url: str
    core_url: str
    storage_url: str
    user: str
    password: str = dataclasses.field(repr=False)
    robot_id: str
    robot_secret: str = dataclasses.field(repr=False)
    wire_case: WireCase
    commands: bool = False
    access_token_max_age: float = 3600.0
    refresh_token_max_age: float = 259200.0
    emulator: HubEmulator | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def of_emulator(cls, emulator: HubEmulator) -> HubConnection:
        """The connection to a running emulator."""
        return cls(
            kind="emulator",
            auth_url=emulator.auth_url,
            core_url=emulator.core_url,
            storage_url=emulator.storage_url,
            user=emulator.admin_user,
            password=emulator.admin_password,
            robot_id=emulator.robot_id,
            robot_secret=emulator.robot_secret,
            wire_case=emulator.wire_case,
            commands=True,
            access_token_max_age=emulator.access_token_lifetime,
            refresh_token_max_age=emulator.refresh_token_lifetime,
            emulator=emulator,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RealHubInstance:
    """One real Hub the script runs from the shared build, on its own fixed loopback ports."""

    name: str
    auth_port: int
    core_port: int
    storage_port: int
    s3_port: int
    rabbitmq: bool
    access_token_max_age: int | None = None
    refresh_token_max_age: int | None = None

    def environ(self) -> dict[str, str]:
        """The script's settings for this instance (on top of ``os.environ``)."""
        env = {
            **os.environ,
            "HUB_INSTANCE": self.name,
            "AUTH_PORT": str(self.auth_port),
            "CORE_PORT": str(self.core_port),
            "STORAGE_PORT": str(self.storage_port),
            "S3_PORT": str(self.s3_port),
            "RABBITMQ": "1" if self.rabbitmq else "0",
            "REAL_HUB_VENDOR": str(shared_hub() / "vendor"),
        }
        for key in ("TOKEN_ACCESS_MAX_AGE", "TOKEN_REFRESH_MAX_AGE"):
            env.pop(key, None)
        if self.access_token_max_age is not None:
            env["TOKEN_ACCESS_MAX_AGE"] = str(self.access_token_max_age)
        if self.refresh_token_max_age is not None:
            env["TOKEN_REFRESH_MAX_AGE"] = str(self.refresh_token_max_age)
        return env


INSTANCES: Final = {
    # the Hub every real-Hub test shares (the ports of ../shared/hub/README.md)
    "main": RealHubInstance("main", 3010, 3020, 3030, 9010, rabbitmq=True),
    # authup with 5-s access and 20-s refresh tokens (re-authentication tests), its own core
    # and storage so that nothing else shares its users or tokens
    "short": RealHubInstance(
        "short", 3011, 3021, 3031, 9011, rabbitmq=False,
        access_token_max_age=5, refresh_token_max_age=20,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class RealHubState:
    """What preparing an instance gave: a connection, or why there is none.

    Attributes:
        connection: The running Hub, or None.
        skip_reason: Why the real-Hub tests of this instance are skipped (None when running).
        started: True when this session started it (and so stops it at the end).
        seconds: How long the ``start`` (or the check of a running Hub) took.
    """

    connection: HubConnection | None
    skip_reason: str | None
    started: bool
    seconds: float


def _run(
    instance: RealHubInstance, command: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env=instance.environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _running(instance: RealHubInstance) -> bool:
    """True when every service of the instance is running (per the script's PID files)."""
    status = _run(instance, "status", 30)
    # RabbitMQ is optional (where it cannot be installed the Hub runs without commands)
    names = {"s3", "authup", "core", "storage"}
    up = {
        line.partition(":")[0]
        for line in status.stdout.splitlines()
        if line.partition(":")[2].strip().startswith("running")
    }
    return status.returncode == 0 and names <= up


def _any_running(instance: RealHubInstance) -> bool:
    status = _run(instance, "status", 30)
    return "running" in status.stdout


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def _parse_env(instance: RealHubInstance, text: str) -> HubConnection:
    values = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("FLAME_HUB_"))
    case: WireCase
    if values["FLAME_HUB_WIRE_CASE"] == "camel":
        case = "camel"
    elif values["FLAME_HUB_WIRE_CASE"] == "snake":
        case = "snake"
    else:
        raise ValueError(f"unknown wire case {values['FLAME_HUB_WIRE_CASE']!r}")
    return HubConnection(
        kind="real",
        auth_url=values["FLAME_HUB_AUTH_URL"],
        core_url=values["FLAME_HUB_CORE_URL"],
        storage_url=values["FLAME_HUB_STORAGE_URL"],
        user=values["FLAME_HUB_USER"],
        password=values["FLAME_HUB_PASSWORD"],
        robot_id=values["FLAME_HUB_ROBOT_ID"],
        robot_secret=values["FLAME_HUB_ROBOT_SECRET"],
        wire_case=case,
        commands=values.get("FLAME_HUB_AMQP") == "1",
        access_token_max_age=float(instance.access_token_max_age or 3600),
        refresh_token_max_age=float(instance.refresh_token_max_age or 259200),
    )


def prepare_instance(instance: RealHubInstance) -> RealHubState:
    """Start ``instance`` (building once per machine) or reuse it when it runs already.

    Never raises for an unavailable Hub: the reason comes back in ``skip_reason``.
    """
    began = time.monotonic()
    if os.environ.get("FLAME_REAL_HUB", "1").lower() in ("0", "off", "no", "false"):
        return RealHubState(None, "FLAME_REAL_HUB=0 turns the real-Hub tests off", False, 0.0)
    if not (shared_hub() / "vendor").is_dir():
        return RealHubState(
            None,
            f"no real Hub sources at {shared_hub()}/vendor (../shared/hub beside the clone)",
            False,
            0.0,
        )
    try:
        started = False
        if not _running(instance):
            started = not _any_running(instance)
            result = _run(instance, "start", _BUILD_TIMEOUT)
            if result.returncode != 0:
                return RealHubState(
                    None,
                    f"the real Hub ({instance.name}) did not start (exit {result.returncode}): "
                    f"{_tail(result.stderr)}",
                    False,
                    time.monotonic() - began,
                )
        env = _run(instance, "env", 60)
        if env.returncode != 0:
            return RealHubState(
                None,
                f"the real Hub ({instance.name}) runs but `env` failed: {_tail(env.stderr)}",
                started,
                time.monotonic() - began,
            )
        connection = _parse_env(instance, env.stdout)
    except (OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        return RealHubState(
            None, f"the real Hub ({instance.name}) could not be prepared: {exc!r}", False, 0.0
        )
    return RealHubState(connection, None, started, time.monotonic() - began)


def stop_instance(instance: RealHubInstance) -> None:
    """Stop what the script started for ``instance`` (its PID files only)."""
    _run(instance, "stop", 120)
