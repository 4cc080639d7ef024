"""``examples/hub_start_analysis.py`` runs against the real Hub and the emulator.

No node executes analyses on either, so the example must say so about the results rather
than fail or wait: the real Hub of the 0.8 line creates no result bucket (its analysis manager
is absent), the emulator with ``auto_buckets`` has one that stays empty.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from flame_async.hub import HubClient, PasswordAuth
from flame_async.local import HubEmulator

from ._backends import HubConnection

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hub_start_analysis.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_hub_start_analysis", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def environ(hub: HubConnection) -> dict[str, str]:
    return {
        "FLAME_HUB_AUTH_URL": hub.auth_url,
        "FLAME_HUB_CORE_URL": hub.core_url,
        "FLAME_HUB_STORAGE_URL": hub.storage_url,
        "FLAME_HUB_USER": hub.user,
        "FLAME_HUB_PASSWORD": hub.password,
    }


async def check_created(hub: HubConnection, outcome: Any) -> None:
    """The project has both nodes, the analysis both nodes and the uploaded files."""
    async with HubClient(
        auth_url=hub.auth_url,
        core_url=hub.core_url,
        storage_url=hub.storage_url,
        credentials=PasswordAuth(hub.user, hub.password),
    ) as api:
        project_id = outcome.project_id
        analysis_id = outcome.analysis_id
        members = await api.core.project_nodes.find_all(filter={"project_id": project_id})
        assert sorted(str(m.node_id) for m in members) == sorted(outcome.node_ids)
        nodes = await api.core.analysis_nodes.find_all(filter={"analysis_id": analysis_id})
        assert sorted(str(n.node_id) for n in nodes) == sorted(outcome.node_ids)
        files = await api.analysis_files(analysis_id)
        assert sorted(f.name or "" for f in files) == ["README.txt", "main.py"]
        assert [f.name for f in files if f.root] == ["main.py"]


async def test_the_example_runs_against_the_real_hub(
    real_hub: HubConnection, tmp_path: Path
) -> None:
    example = load_example()
    outcome = await example.main(tmp_path / "results", environ=environ(real_hub))
    await check_created(real_hub, outcome)
    if real_hub.commands:  # RabbitMQ runs beside the Hub: the lock goes through
        assert outcome.locked is True, outcome.lock_error
    else:
        assert outcome.locked is False
        assert outcome.lock_error and "500" in outcome.lock_error
    # nothing executes there: no result bucket, and the example says so
    assert outcome.results == []
    assert "no result bucket" in outcome.results_note


async def test_the_example_downloads_an_empty_result_bucket_from_the_emulator(
    tmp_path: Path,
) -> None:
    example = load_example()
    async with HubEmulator(wire_case="camel", auto_buckets=True) as emulator:
        hub = HubConnection.of_emulator(emulator)
        outcome = await example.main(tmp_path / "results", environ=environ(hub))
        await check_created(hub, outcome)
    assert outcome.locked is True
    assert outcome.results == []
    assert "result bucket is empty" in outcome.results_note
