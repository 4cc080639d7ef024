"""The run summary of a local run (``OUT/run.json``) and the files written next to it.

The schema is documented in ``docs/run-json.md``; ``report.html`` is rendered from the same
record.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from .local import DeliveryEvent, LocalPlatform, LogRecord

if TYPE_CHECKING:
    from .runner import NodeOutcome

__all__ = ["build_run_record", "root_causes", "to_ended_recipients", "write_outputs"]

log = logging.getLogger("flame_async.runner")

FORMAT = 1
_MAX_LOGS_PER_NODE = 2000

_NOT_YET_ACTIVE: Final = frozenset({"", "starting", "started"})
"""Statuses a node reports before it has subscribed to the broker (``executing`` comes after)."""
_ENDED: Final = frozenset({"executed", "failed", "stopped"})


class _PoLogs(Protocol):
    def logs(self, node_id: str, /) -> Sequence[LogRecord]: ...


def _end_of(outcome: NodeOutcome) -> datetime | None:
    """When a node that is no longer running ended (wall clock, UTC); None while it runs."""
    if outcome.running:
        return None
    return outcome.started + timedelta(seconds=outcome.seconds)


def to_ended_recipients(
    platform: _PoLogs,
    outcomes: Sequence[NodeOutcome],
    events: Sequence[DeliveryEvent],
) -> list[bool]:
    """For each event, whether it is a copy dropped because its recipient had already ended.

    Such drops are no failure: the acks and ``analysis_finished`` copies that reach a node after
    it left. A dropped copy counts as one when its recipient

    * had ended (its outcome is final) before the copy was dropped, or
    * had already left the broker when the copy was sent: "no subscription" although the node
      had been subscribed before (an earlier copy went to its subscription, or it had reported
      ``executing``, which the SDK does after subscribing; a node unsubscribes only on its way
      out, a little before its ``main()`` returns), or
    * had announced its end (reported ``executed``, ``failed`` or ``stopped`` to the PO) before
      the copy was dropped.

    Every other dropped copy went to a node that was still running (or still starting): a lost
    message. Delivered copies are always ``False``.

    Args:
        platform: The run's platform (its PO logs tell when each node reported what; only its
            ``logs()`` is used).
        outcomes: The nodes' outcomes, as far as they are known (while the run goes on too).
        events: The deliveries to judge (``platform.deliveries`` or a reordering of them).
    """
    outcome_of = {o.node_id: o for o in outcomes}
    subscribed: dict[str, float] = {}
    for event in events:
        if event.subscription_id is not None:
            first = subscribed.get(event.recipient, math.inf)
            subscribed[event.recipient] = min(first, event.sent_monotonic)
    marks: dict[str, tuple[float, float]] = {}

    def mark(node_id: str) -> tuple[float, float]:
        """(since when the node was subscribed, when it announced its end), monotonic."""
        if node_id not in marks:
            active = announced = math.inf
            try:
                records = platform.logs(node_id)
            except KeyError:  # not a node of this platform
                records = []
            for record in records:
                if active == math.inf and record.status not in _NOT_YET_ACTIVE:
                    active = record.monotonic
                if record.status in _ENDED:
                    announced = record.monotonic
                    break
            marks[node_id] = (min(active, subscribed.get(node_id, math.inf)), announced)
        return marks[node_id]

    verdicts = []
    for event in events:
        if event.outcome == "delivered":
            verdicts.append(False)
            continue
        outcome = outcome_of.get(event.recipient)
        end = None if outcome is None else _end_of(outcome)
        if end is not None and event.time >= end:
            verdicts.append(True)
            continue
        active, announced = mark(event.recipient)
        left = event.reason == "no subscription" and active <= event.sent_monotonic
        verdicts.append(left or announced <= event.monotonic)
    return verdicts


def root_causes(outcomes: Sequence[NodeOutcome]) -> list[NodeOutcome]:
    """The failed nodes whose failure was their own (as ``RunResult.root_causes``)."""
    own = [o for o in outcomes if o.status == "failed" and not o.consequential]
    return own or [o for o in outcomes if o.status == "failed"]


def _result_repr(value: Any) -> str | None:
    if value is None:
        return None
    text = repr(value)
    return text if len(text) <= 500 else text[:497] + "..."


def build_run_record(
    platform: LocalPlatform,
    outcomes: Sequence[NodeOutcome],
    *,
    started: datetime,
    t0: float,
    mode: str,
    script: str,
    timed_out: bool,
    stop_reason: str | None,
    out_dir: Path | None,
) -> dict[str, Any]:
    """Collect what the platform saw and how each node ended into one JSON-able record.

    Beyond what ``docs/run-json.md`` describes, the record splits the dropped copies (see
    :func:`to_ended_recipients`):

    * ``dropped_to_running`` (top level): copies dropped while their recipient was still running
      (or starting): lost messages, the ones to look at;
    * ``dropped_to_ended`` (top level): copies dropped because their recipient had already ended
      (acks and ``analysis_finished`` copies to nodes that had left): no failure;
    * ``messages[].recipient_ended``: ``true`` for a dropped copy of the second kind, ``false``
      otherwise (always ``false`` for delivered copies);

    and it marks the failures:

    * ``nodes[].root_cause``: ``true`` for a node that failed on its own (one of
      ``RunResult.root_causes``), not as a consequence of a peer's failure;
    * ``nodes[].consequential``: ``true`` for a node that failed only because a peer it waited
      on had failed (``PeerFailed``);
    * ``nodes[].blocked``: one line per time the node's event loop was blocked beyond the
      watchdog's threshold, with where (empty when it never was);

    and, in chaos mode, ``faults``: the spec (with its seed, to replay the run) and how many
    faults of each kind were injected (None without chaos mode).
    """
    messages: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str, str | None]] = set()
    sent: Counter[str] = Counter()
    received: Counter[str] = Counter()
    bytes_sent: Counter[str] = Counter()
    bytes_received: Counter[str] = Counter()
    events = sorted(platform.deliveries, key=lambda e: e.sent_monotonic)
    ended = to_ended_recipients(platform, outcomes, events)
    dropped_to_ended = sum(ended)
    dropped = sum(1 for e in events if e.outcome != "delivered")
    for event, to_ended in zip(events, ended, strict=True):
        # an ack carries the id of the message it answers, in the other direction
        is_ack = (event.recipient, event.sender or "", event.message_id) in seen
        seen.add((event.sender, event.recipient, event.message_id))
        messages.append(
            {
                "t": round(event.sent_monotonic - t0, 6),
                "sender": event.sender,
                "recipient": event.recipient,
                "category": event.category,
                "message_id": event.message_id,
                "size": event.size,
                "outcome": event.outcome,
                "attempts": event.attempts,
                "ack": is_ack,
                "recipient_ended": to_ended,
            }
        )
        if event.sender:
            sent[event.sender] += 1
            bytes_sent[event.sender] += event.size
        if event.outcome == "delivered":
            received[event.recipient] += 1
            bytes_received[event.recipient] += event.size

    progress: dict[str, list[list[Any]]] = {}
    logs: dict[str, list[list[Any]]] = {}
    for outcome in outcomes:
        records = platform.logs(outcome.node_id)
        series: list[list[Any]] = []
        for record in records:
            point = [round(record.monotonic - t0, 6), record.progress, record.status]
            if not series or series[-1][1:] != point[1:]:
                series.append(point)
        progress[outcome.node_id] = series
        lines: list[list[Any]] = [[round(r.monotonic - t0, 6), r.log_type, r.log] for r in records]
        lines.extend(
            [t, "error" if stream == "stderr" else "info", text]
            for t, stream, text in outcome.output
        )
        lines.sort(key=lambda line: float(line[0]))
        logs[outcome.node_id] = lines[-_MAX_LOGS_PER_NODE:]

    finished = datetime.now(UTC)
    finals = [
        str(p.relative_to(out_dir)) if out_dir is not None and p.is_relative_to(out_dir) else str(p)
        for p in platform.final_results()
    ]
    causes = {o.node_id for o in root_causes(outcomes)}
    nodes = []
    for outcome in outcomes:
        error = None
        if outcome.status == "failed":
            error = {
                "type": outcome.error_type,
                "message": outcome.error_message,
                "traceback": outcome.traceback,
            }
        nodes.append(
            {
                "node_id": outcome.node_id,
                "role": outcome.role,
                "status": outcome.status,
                "started": outcome.started.isoformat(),
                "ended": (outcome.started + timedelta(seconds=outcome.seconds)).isoformat(),
                "seconds": round(outcome.seconds, 6),
                "progress": platform.progress(outcome.node_id),
                "messages_sent": sent[outcome.node_id],
                "messages_received": received[outcome.node_id],
                "bytes_sent": bytes_sent[outcome.node_id],
                "bytes_received": bytes_received[outcome.node_id],
                "result": _result_repr(outcome.result),
                "error": error,
                "waiting_for": outcome.waiting_for,
                "root_cause": outcome.node_id in causes,
                "consequential": outcome.status == "failed" and outcome.node_id not in causes,
                "blocked": list(outcome.blocked),
            }
        )
    return {
        "format": FORMAT,
        "analysis_id": platform.analysis_id,
        "project_id": platform.project_id,
        "mode": mode,
        "transport": platform.transport,
        "script": script,
        "started": started.isoformat(),
        "ended": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 6),
        "ok": not timed_out and all(o.status == "executed" for o in outcomes),
        "timed_out": timed_out,
        "stop_reason": stop_reason,
        "faults": platform.faults.record() if platform.faults is not None else None,
        "dropped_to_running": dropped - dropped_to_ended,
        "dropped_to_ended": dropped_to_ended,
        "nodes": nodes,
        "messages": messages,
        "progress": progress,
        "logs": logs,
        "final_results": finals,
    }


def write_outputs(
    record: dict[str, Any], outcomes: Sequence[NodeOutcome], platform: LocalPlatform, out: Path
) -> None:
    """Write ``run.json``, ``logs/<node>.log`` and ``report.html`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")
    logs_dir = out / "logs"
    logs_dir.mkdir(exist_ok=True)
    started = datetime.fromisoformat(record["started"])
    for outcome in outcomes:
        lines: list[str] = []
        for t, log_type, text in record["logs"].get(outcome.node_id, []):
            stamp = (started + timedelta(seconds=t)).strftime("%H:%M:%S.%f")[:-3]
            lines.extend(
                f"{stamp} [{outcome.node_id}] {log_type:<5} {part}"
                for part in str(text).splitlines() or [""]
            )
        (logs_dir / f"{outcome.node_id}.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        from .report import write_report
    except ImportError:  # pragma: no cover - the report module ships with the package
        log.debug("no report renderer available")
        return
    write_report(record, out / "report.html")
