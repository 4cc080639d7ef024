"""The run summary of a local run (``OUT/run.json``) and the files written next to it.

The schema is documented in ``docs/run-json.md``; ``report.html`` is rendered from the same
record.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .local import LocalPlatform

if TYPE_CHECKING:
    from .runner import NodeOutcome

__all__ = ["build_run_record", "write_outputs"]

log = logging.getLogger("flame_async.runner")

FORMAT = 1
_MAX_LOGS_PER_NODE = 2000


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
    """Collect what the platform saw and how each node ended into one JSON-able record."""
    messages: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str, str | None]] = set()
    sent: Counter[str] = Counter()
    received: Counter[str] = Counter()
    bytes_sent: Counter[str] = Counter()
    bytes_received: Counter[str] = Counter()
    for event in sorted(platform.deliveries, key=lambda e: e.sent_monotonic):
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

    ended = datetime.now(UTC)
    finals = [
        str(p.relative_to(out_dir)) if out_dir is not None and p.is_relative_to(out_dir) else str(p)
        for p in platform.final_results()
    ]
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
        "ended": ended.isoformat(),
        "seconds": round((ended - started).total_seconds(), 6),
        "ok": not timed_out and all(o.status == "executed" for o in outcomes),
        "timed_out": timed_out,
        "stop_reason": stop_reason,
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
