"""Fixtures for Hub tests: the real Hub (``real_hub``), the emulator, and both (``hub_backend``).

The real Hub is prepared once per test session, after collection and before the first test
(``pytest_collection_finish``), so its first build (4-5 minutes, once per machine: the build is
cached in ``$REAL_HUB_DIR``, default ``/tmp/flame-real-hub``) and its start (about 15 s) never run
inside a test's 60-s time limit. Only what the selected tests need is prepared: the ``main``
instance for tests marked ``real_hub`` (tests that use the ``real_hub`` fixture are marked
automatically), the ``short`` instance (5-s access tokens, 20-s refresh tokens) for tests that use
``real_hub_short_tokens`` or are marked ``real_hub("short")``, and the ``flame-hub-client``
venv for tests that use ``flame_hub_python``. A Hub that was running before the session is
reused and left running; one the session started is stopped at its end (``FLAME_REAL_HUB_KEEP=1``
keeps it).

Where the Hub cannot run (no ``../shared/hub``, a failed build, ``FLAME_REAL_HUB=0``) its tests are
skipped with the reason, and the run's last lines say so: never a silent pass.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from flame_async.local import HubEmulator

from ._backends import (
    INSTANCES,
    HubConnection,
    RealHubState,
    prepare_instance,
    stop_instance,
)
from ._venvs import FLAME_HUB_VERSIONS, VenvState, prepare_flame_hub_venv

_HUBS = pytest.StashKey[dict[str, RealHubState]]()
_VENVS = pytest.StashKey[dict[str, VenvState]]()
_INSTANCE_FIXTURES = {"real_hub": "main", "real_hub_short_tokens": "short"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture, instance in _INSTANCE_FIXTURES.items():
            if fixture in names:
                item.add_marker(pytest.mark.real_hub(instance))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build/start the real Hub instances and venvs the selected tests need (outside timeouts)."""
    config = session.config
    hubs: dict[str, RealHubState] = {}
    venvs: dict[str, VenvState] = {}
    config.stash[_HUBS] = hubs
    config.stash[_VENVS] = venvs
    if config.option.collectonly:
        return
    wanted: set[str] = set()
    want_venv = False
    for item in session.items:
        names = getattr(item, "fixturenames", ())
        for marker in item.iter_markers("real_hub"):
            wanted.update(marker.args or ("main",))
        if "flame_hub_python" in names:
            want_venv = True
    unknown = wanted - INSTANCES.keys()
    if unknown:
        raise pytest.UsageError(f"real_hub marker names unknown instances {sorted(unknown)}")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for name in sorted(wanted):
        if reporter is not None:
            reporter.write_line(f"real Hub: preparing instance {name!r} ...")
        hubs[name] = state = prepare_instance(INSTANCES[name])
        if reporter is not None:
            reporter.write_line(_describe(name, state))
    if want_venv:
        for version in FLAME_HUB_VERSIONS:
            venvs[version] = prepare_flame_hub_venv(version)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if os.environ.get("FLAME_REAL_HUB_KEEP") == "1":
        return
    for name, state in session.config.stash.get(_HUBS, {}).items():
        if state.started:
            stop_instance(INSTANCES[name])


def _describe(name: str, state: RealHubState) -> str:
    if state.connection is None:
        return f"real Hub {name!r}: NOT AVAILABLE, its tests are skipped: {state.skip_reason}"
    how = "started by this session" if state.started else "reused (it was running)"
    commands = "with" if state.connection.commands else "WITHOUT"
    return (
        f"real Hub {name!r}: {how} in {state.seconds:.1f} s at {state.connection.core_url}, "
        f"{commands} RabbitMQ (analysis commands)"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    """Say what became of the real Hub after the short test summary, just above the totals."""
    yield
    hubs = terminalreporter.config.stash.get(_HUBS, {})
    venvs = terminalreporter.config.stash.get(_VENVS, {})
    if not hubs and not venvs:
        return
    terminalreporter.section("real Hub")
    for name, state in hubs.items():
        terminalreporter.write_line(_describe(name, state))
    for version, venv in venvs.items():
        if venv.python is None:
            terminalreporter.write_line(
                f"flame-hub-client {version}: NOT AVAILABLE, its tests are skipped: "
                f"{venv.skip_reason}"
            )


def _instance(request: pytest.FixtureRequest, name: str) -> HubConnection:
    state = request.config.stash.get(_HUBS, {}).get(name)
    if state is None:
        pytest.skip(f"the real Hub {name!r} was not prepared (test not marked real_hub?)")
    if state.connection is None:
        pytest.skip(f"real Hub unavailable: {state.skip_reason}")
    return state.connection


@pytest.fixture(scope="session")
def real_hub(request: pytest.FixtureRequest) -> HubConnection:
    """The real Hub (authup 1.0.0-beta.26, Hub core and storage 0.8.14), default lifetimes."""
    return _instance(request, "main")


@pytest.fixture(scope="session")
def real_hub_short_tokens(request: pytest.FixtureRequest) -> HubConnection:
    """A second real Hub whose authup issues 5-s access and 20-s refresh tokens."""
    return _instance(request, "short")


@pytest.fixture(scope="session")
def flame_hub_python(request: pytest.FixtureRequest) -> Path:
    """The interpreter of a cached venv with ``flame-hub-client==0.2.0``."""
    venv = request.config.stash.get(_VENVS, {}).get(FLAME_HUB_VERSIONS[0])
    if venv is None or venv.python is None:
        reason = "not prepared" if venv is None else venv.skip_reason
        pytest.skip(f"flame-hub-client {FLAME_HUB_VERSIONS[0]} unavailable: {reason}")
    return venv.python


@pytest.fixture
async def hub_emulator() -> AsyncIterator[HubConnection]:
    """A fresh emulator (snake case, no faults) for one test."""
    async with HubEmulator() as emulator:
        yield HubConnection.of_emulator(emulator)


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.real_hub), "emulator"])
async def hub_backend(request: pytest.FixtureRequest) -> AsyncIterator[HubConnection]:
    """The same test against the real Hub and against a fresh emulator."""
    if request.param == "real":
        yield request.getfixturevalue("real_hub")
        return
    async with HubEmulator() as emulator:
        yield HubConnection.of_emulator(emulator)
