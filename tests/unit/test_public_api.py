"""The public surface: sorted __all__, everything importable, py.typed shipped, long names exist."""

from __future__ import annotations

from pathlib import Path

import flame_async
from flame_async import FlameSDK


def test_all_is_sorted_and_importable() -> None:
    assert flame_async.__all__ == sorted(flame_async.__all__)
    for name in flame_async.__all__:
        assert getattr(flame_async, name) is not None


def test_py_typed_is_shipped() -> None:
    assert (Path(flame_async.__file__).parent / "py.typed").exists()


def test_design_surface_names_exist() -> None:
    names = [
        "get_participants",
        "get_list_of_participants",
        "send_message",
        "send_message_and_wait_for_response",
        "send_message_and_wait_for_responses",
        "await_message",
        "await_messages",
        "get_list_of_messages",
        "ask_status_nodes",
        "send_intermediate_result",
        "await_intermediate_result",
        "ready_check",
        "analysis_finished",
        "messages",
        "handler",
        "send_result",
        "save_intermediate_result",
        "save_intermediate_result_local",
        "list_intermediate_results",
        "list_intermediate_local_results",
        "get_intermediate_result",
        "get_intermediate_result_local",
        "get_role",
        "get_data_sources",
        "get_data_client",
        "get_fhir_data",
        "get_s3_data",
        "set_progress",
        "get_progress",
    ]
    missing = [n for n in names if not hasattr(FlameSDK, n)]
    assert missing == []


def test_private_modules_are_not_exported() -> None:
    assert not [n for n in flame_async.__all__ if n.startswith("_") and n != "__version__"]
