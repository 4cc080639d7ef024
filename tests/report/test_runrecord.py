"""The run summary (``run.json``): dropped copies split by whether their recipient had ended,
failures marked as root causes or consequences."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flame_async._runrecord import EndJudge, to_ended_recipients
from flame_async.local import DeliveryEvent, DeliveryOutcome, LogRecord
from flame_async.runner import NodeOutcome, run_script

ROOT = Path(__file__).resolve().parents[2]
ANALYSES = ROOT / "tests" / "cli" / "analyses"

T0 = 1000.0  # monotonic seconds of the synthetic run's start
WALL0 = datetime(2026, 11, 22, 4, 20, tzinfo=UTC)


def _wall(monotonic: float) -> datetime:
    return WALL0 + timedelta(seconds=monotonic - T0)


def _event(
    recipient: str,
    at: float,
    *,
    outcome: DeliveryOutcome = "dropped",
    reason: str = "no subscription",
    subscription: str | None = None,
    dropped_at: float | None = None,
) -> DeliveryEvent:
    known = at if dropped_at is None else dropped_at
    return DeliveryEvent(
        sender="node-1",
        recipient=recipient,
        subscription_id=subscription,
        category="local_value",
        message_id=f"m-{recipient}-{at}",
        size=100,
        outcome=outcome,
        attempts=0 if subscription is None else 1,
        status=None,
        reason="" if outcome == "delivered" else reason,
        sent_monotonic=at,
        monotonic=known,
        time=_wall(known),
    )


def _record(node_id: str, at: float, status: str) -> LogRecord:
    return LogRecord(node_id, f"run status: {status}", "info", status, 0, at, _wall(at))


@dataclass
class _Logs:
    """Stands in for the platform: the PO log records per node."""

    records: dict[str, list[LogRecord]] = field(default_factory=dict)

    def logs(self, node_id: str, /) -> Sequence[LogRecord]:
        if node_id not in self.records:
            raise KeyError(node_id)
        return self.records[node_id]


def _outcome(node_id: str, status: str, *, ended_at: float | None = None) -> NodeOutcome:
    outcome = NodeOutcome(node_id, "default", status=status, started=_wall(T0))
    if ended_at is not None:
        outcome.seconds = ended_at - T0
    return outcome


def test_a_copy_to_a_node_that_has_not_subscribed_yet_is_lost() -> None:
    logs = _Logs({"node-2": [_record("node-2", T0 + 0.1, "starting")]})
    events = [_event("node-2", T0 + 0.2)]

    assert to_ended_recipients(logs, [_outcome("node-2", "running")], events) == [False]
    # ... also once the node ended later: it never had the message
    ended = [_outcome("node-2", "executed", ended_at=T0 + 5)]
    assert to_ended_recipients(logs, ended, events) == [False]


def test_no_subscription_after_the_node_had_subscribed_means_it_left() -> None:
    logs = _Logs({"node-2": [], "node-3": [_record("node-3", T0 + 0.1, "executing")]})
    events = [
        _event("node-2", T0 + 0.1, outcome="delivered", subscription="s-2"),
        _event("node-2", T0 + 0.5),  # its subscription is gone: it is on its way out
        _event("node-3", T0 + 0.5),  # it had reported executing, which comes after subscribing
    ]
    outcomes = [_outcome("node-2", "running"), _outcome("node-3", "running")]

    assert to_ended_recipients(logs, outcomes, events) == [False, True, True]


def test_a_copy_dropped_after_its_recipient_ended_is_no_failure() -> None:
    logs = _Logs({"node-2": [_record("node-2", T0 + 0.1, "executing")]})
    refused = "gave up after 6 attempts (NodeUnreachable: connection refused)"
    events = [
        # sent while the node ran, given up on after it had ended
        _event("node-2", T0 + 0.9, reason=refused, subscription="s-2", dropped_at=T0 + 3),
        # given up on while the node still ran: lost
        _event("node-2", T0 + 0.2, reason=refused, subscription="s-2", dropped_at=T0 + 1.5),
    ]
    outcomes = [_outcome("node-2", "executed", ended_at=T0 + 2)]

    assert to_ended_recipients(logs, outcomes, events) == [True, False]


def test_a_copy_dropped_after_the_node_announced_its_end_is_no_failure() -> None:
    logs = _Logs(
        {
            "node-2": [
                _record("node-2", T0 + 0.1, "executing"),
                _record("node-2", T0 + 1.0, "executed"),
            ]
        }
    )
    events = [
        _event("node-2", T0 + 0.5, reason="HTTP 503", subscription="s", dropped_at=T0 + 0.8),
        _event("node-2", T0 + 0.9, reason="HTTP 503", subscription="s", dropped_at=T0 + 1.1),
    ]

    assert to_ended_recipients(logs, [_outcome("node-2", "running")], events) == [False, True]


def test_delivered_copies_and_unknown_recipients() -> None:
    logs = _Logs({"node-2": []})
    events = [
        _event("node-2", T0 + 0.1, outcome="delivered", subscription="s"),
        _event("elsewhere", T0 + 0.2),
    ]

    assert to_ended_recipients(logs, [_outcome("node-2", "running")], events) == [False, False]


@dataclass
class _CountingLogs(_Logs):
    """:class:`_Logs` that counts reads, and serves ``logs_since`` too."""

    reads: Counter[str] = field(default_factory=Counter)

    def logs(self, node_id: str, /) -> Sequence[LogRecord]:
        self.reads[node_id] += 1
        return super().logs(node_id)

    def logs_since(self, node_id: str, cursor: int, /) -> tuple[Sequence[LogRecord], int]:
        records = super().logs(node_id)
        return records[cursor:], len(records)


def test_each_recipients_logs_are_read_once_however_many_copies_it_lost() -> None:
    logs = _CountingLogs(
        {n: [_record(n, T0 + 0.1, "executing")] for n in ("node-2", "node-3", "node-4")}
    )
    events = [
        _event(f"node-{2 + i % 3}", T0 + 1 + i / 1000, reason="HTTP 503") for i in range(3000)
    ]

    verdicts = to_ended_recipients(logs, [_outcome("node-2", "running")], events)

    assert verdicts == [False] * 3000
    assert logs.reads == {"node-2": 1, "node-3": 1, "node-4": 1}


def test_judging_batch_by_batch_gives_the_verdicts_of_judging_all_at_once() -> None:
    logs = _CountingLogs(
        {
            "node-2": [],
            "node-3": [_record("node-3", T0 + 0.1, "executing")],
            "node-4": [_record("node-4", T0 + 0.1, "executing")],
        }
    )
    events = [
        _event("node-2", T0 + 0.1, outcome="delivered", subscription="s-2"),
        _event("node-2", T0 + 0.5),  # it had subscribed: it left
        _event("node-3", T0 + 0.5),  # it had reported executing: it left
        _event("node-4", T0 + 0.6, reason="HTTP 503", subscription="s", dropped_at=T0 + 0.8),
        _event("node-4", T0 + 0.9, reason="HTTP 503", subscription="s", dropped_at=T0 + 1.1),
        _event("node-5", T0 + 1.0),  # no node of the platform
    ]
    outcomes = [_outcome(n, "running") for n in ("node-2", "node-3", "node-4")]
    judge = EndJudge(logs)
    verdicts = []
    for i, event in enumerate(events):
        if i == 4:  # node-4 announces its end between two of its copies
            logs.records["node-4"].append(_record("node-4", T0 + 1.0, "executed"))
        judge.see([event])
        verdicts.append(
            judge.to_ended(event, next((o for o in outcomes if o.node_id == event.recipient), None))
        )

    assert verdicts == to_ended_recipients(logs, outcomes, events)
    assert verdicts == [False, True, True, False, True, False]


# --- real runs ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_successful_run_records_no_lost_copies(tmp_path: Path) -> None:
    result = await run_script(
        ROOT / "examples" / "fhir_mean_histogram.py",
        nodes=3,
        data=ROOT / "examples" / "data",
        out_dir=tmp_path / "out",
        timeout=60,
    )
    record = result.record

    assert result.ok
    assert record["dropped_to_running"] == 0
    dropped = [m for m in record["messages"] if m["outcome"] != "delivered"]
    assert record["dropped_to_ended"] == len(dropped)
    assert all(m["recipient_ended"] is (m["outcome"] != "delivered") for m in record["messages"])
    assert not any(n["root_cause"] or n["consequential"] for n in record["nodes"])


@pytest.mark.slow
async def test_a_failed_run_marks_its_root_cause(tmp_path: Path) -> None:
    result = await run_script(
        ANALYSES / "raise_after_first.py",
        nodes=3,
        out_dir=tmp_path / "out",
        timeout=60,
        fail_fast_grace=1.0,
    )
    nodes = {n["node_id"]: n for n in result.record["nodes"]}

    assert [o.node_id for o in result.root_causes] == ["node-3"]
    assert nodes["node-3"]["root_cause"] and not nodes["node-3"]["consequential"]
    for node_id in ("node-1", "node-2"):
        assert not nodes[node_id]["root_cause"]
        assert nodes[node_id]["consequential"] is (nodes[node_id]["status"] == "failed")
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'class="node-row status-failed root-cause" data-node="node-3"' in page
