"""The real-Hub fixture's decisions that need no Hub: when it skips, and why it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._backends import INSTANCES, prepare_instance


def test_missing_hub_sources_skip_with_the_path_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLAME_SHARED_HUB", str(tmp_path / "nowhere"))
    state = prepare_instance(INSTANCES["main"])
    assert state.connection is None
    assert state.skip_reason is not None
    assert f"{tmp_path / 'nowhere'}/vendor" in state.skip_reason
    assert not state.started


def test_real_hub_tests_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAME_REAL_HUB", "0")
    state = prepare_instance(INSTANCES["main"])
    assert state.connection is None
    assert state.skip_reason == "FLAME_REAL_HUB=0 turns the real-Hub tests off"


def test_instances_use_distinct_fixed_ports() -> None:
    ports = [
        port
        for instance in INSTANCES.values()
        for port in (
            instance.auth_port,
            instance.core_port,
            instance.storage_port,
            instance.s3_port,
        )
    ]
    assert len(ports) == len(set(ports))
    assert INSTANCES["short"].access_token_max_age == 5
    assert INSTANCES["short"].refresh_token_max_age == 20
