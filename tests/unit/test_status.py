"""Run status, progress phases, partner-status sync and the PO log handler."""

from __future__ import annotations

import logging
import threading

import pytest

from flame_async import InvalidArgument, RunStatus
from flame_async.status import PoLogHandler, StatusService, log_type_for


def test_progress_is_monotonic_and_phases_map_into_their_range() -> None:
    status = StatusService()
    progress = status.progress
    progress.update(0.1)
    with progress.phase(0.2, 0.6) as load:
        load.update(0.5)
        assert progress.value == pytest.approx(0.4)
        with load.phase(0.5, 1.0) as inner:
            inner.update(0.5)
            assert progress.value == pytest.approx(0.5)
    assert progress.value == pytest.approx(0.6)  # leaving a phase completes it
    progress.update(0.3)  # going backwards is ignored
    assert progress.percent == 60
    status.set_percent(75)
    assert progress.percent == 75


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "half"])
def test_progress_rejects_bad_values(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        StatusService().progress.update(bad)  # type: ignore[arg-type]


def test_terminal_status_is_kept_but_own_outcome_wins_over_an_adopted_one() -> None:
    status = StatusService(grace=0)
    status.started(0.0)
    status.set_status(RunStatus.EXECUTING)
    assert status.partner_status({"b": "executed"}, now=1.0) is RunStatus.EXECUTED
    assert not status.set_status(RunStatus.STOPPED)  # terminal: kept
    assert status.set_status(RunStatus.FAILED, force=True)  # the analysis itself failed
    assert status.status is RunStatus.FAILED
    assert not status.set_status(RunStatus.EXECUTED, force=True)  # own terminal: kept


def test_partner_status_respects_grace_and_sync_set() -> None:
    status = StatusService(grace=100, status_sync=("failed",))
    status.started(0.0)
    status.set_status(RunStatus.EXECUTING)
    assert status.partner_status({"b": "failed"}, now=50.0) is RunStatus.EXECUTING  # in grace
    assert status.partner_status({"b": "executed"}, now=150.0) is RunStatus.EXECUTING  # not synced
    assert status.partner_status({"b": "failed", "c": None}, now=150.0) is RunStatus.FAILED


@pytest.mark.parametrize(
    ("level", "expected"),
    [(10, "debug"), (20, "info"), (25, "notice"), (30, "warn"), (40, "error"), (50, "crit")],
)
def test_log_levels_map_to_po_log_types(level: int, expected: str) -> None:
    assert log_type_for(level) == expected


def test_log_handler_never_blocks_and_drops_oldest_when_full() -> None:
    status = StatusService(queue_size=3)
    logger = logging.getLogger("flame_async.test.handler")
    logger.propagate = False
    handler = PoLogHandler(status)
    logger.addHandler(handler)
    try:
        threads = [threading.Thread(target=logger.warning, args=(f"line {i}",)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        logger.removeHandler(handler)
    assert status.dropped == 2


def test_a_huge_log_line_is_cut_so_its_status_still_ships() -> None:
    from flame_async.status import MAX_LOG_CHARS

    service = StatusService()
    service.enqueue("x" * (MAX_LOG_CHARS * 3), "info")
    text = service._queue[-1][0]
    assert len(text) < MAX_LOG_CHARS + 100
    assert text.endswith(f"[… cut: {MAX_LOG_CHARS * 3:,} characters in all]")
