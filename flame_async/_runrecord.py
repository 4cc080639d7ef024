"""The run summary of a local run (``OUT/run.json``) and the files written next to it.

The schema is documented in ``docs/run-json.md``; ``report.html`` is rendered from the same
record.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from .local import DeliveryEvent, LocalPlatform, LogRecord

if TYPE_CHECKING:
    from .runner import NodeOutcome

__all__ = [
    "EndJudge",
    "build_run_record",
    "root_causes",
    "to_ended_recipients",
    "write_outputs",
]

log = logging.getLogger("flame_async.runner")

FORMAT = 1
_MAX_LOGS_PER_NODE = 2000

_NOT_YET_ACTIVE: Final = frozenset({"", "starting", "started"})
"""Statuses a node reports before it has subscribed to the broker (``executing`` comes after)."""
_ENDED: Final = frozenset({"executed", "failed", "stopped"})


class _PoLogs(Protocol):
    def logs(self, node_id: str, /) -> Sequence[LogRecord]: ...


class _PoLogsSince(Protocol):
    def logs_since(self, node_id: str, cursor: int, /) -> tuple[Sequence[LogRecord], int]: ...


def _end_of(outcome: NodeOutcome) -> datetime | None:
    """When a node that is no longer running ended (wall clock, UTC); None while it runs."""
    if outcome.running:
        return None
    return outcome.started + timedelta(seconds=outcome.seconds)


class _Marks:
    """Since when a node was active and when it announced its end, from its PO log records
    (monotonic; ``inf`` until seen). Both are set once, by the first record that shows it."""

    __slots__ = ("active", "announced", "cursor")

    def __init__(self) -> None:
        self.active = self.announced = math.inf
        self.cursor = 0  # log records read so far (EndJudge)

    def read(self, records: Iterable[LogRecord]) -> None:
        if self.announced != math.inf:
            return
        for record in records:
            if self.active == math.inf and record.status not in _NOT_YET_ACTIVE:
                self.active = record.monotonic
            if record.status in _ENDED:
                self.announced = record.monotonic
                return


def _to_ended(
    event: DeliveryEvent, outcome: NodeOutcome | None, marks: _Marks, subscribed: float
) -> bool:
    """The verdict of :func:`to_ended_recipients` for one dropped copy."""
    end = None if outcome is None else _end_of(outcome)
    if end is not None and event.time >= end:
        return True
    active = min(marks.active, subscribed)
    left = event.reason == "no subscription" and active <= event.sent_monotonic
    return left or marks.announced <= event.monotonic


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

    Costs O(events + the log records of the nodes that copies were dropped to): two passes over
    the events, each such node's logs read once. :class:`EndJudge` gives the same verdicts one
    batch of events at a time.

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
    marks: dict[str, _Marks] = {}

    def mark(node_id: str) -> _Marks:
        if (found := marks.get(node_id)) is None:
            found = marks[node_id] = _Marks()
            with contextlib.suppress(KeyError):  # KeyError: not a node of this platform
                found.read(platform.logs(node_id))
        return found

    verdicts = []
    for event in events:
        if event.outcome == "delivered":
            verdicts.append(False)
            continue
        recipient = event.recipient
        verdicts.append(
            _to_ended(
                event,
                outcome_of.get(recipient),
                mark(recipient),
                subscribed.get(recipient, math.inf),
            )
        )
    return verdicts


class EndJudge:
    """:func:`to_ended_recipients` for a reader that takes the deliveries a batch at a time.

    The live view hands each batch of new events to :meth:`see`, then asks :meth:`to_ended`
    about each dropped copy of it. A node's log records are read only as far as they are new
    (``logs_since``), when a copy to it is judged. A verdict given while the recipient still
    ran can change once its outcome is final (it ended before the drop, but the runner had not
    noted it yet): ask again then.

    Args:
        platform: Reads the nodes' PO logs since a cursor (``LocalPlatform.logs_since``).
    """

    def __init__(self, platform: _PoLogsSince) -> None:
        self._platform = platform
        self._subscribed: dict[str, float] = {}
        self._marks: dict[str, _Marks] = {}

    def see(self, events: Iterable[DeliveryEvent]) -> None:
        """Note which recipients had a subscription when (do this before judging them)."""
        subscribed = self._subscribed
        for event in events:
            if event.subscription_id is not None:
                first = subscribed.get(event.recipient, math.inf)
                if event.sent_monotonic < first:
                    subscribed[event.recipient] = event.sent_monotonic

    def to_ended(self, event: DeliveryEvent, outcome: NodeOutcome | None) -> bool:
        """Whether ``event`` is a copy dropped because its recipient had already ended.

        Args:
            event: A delivery event already passed to :meth:`see`.
            outcome: Its recipient's outcome as far as it is known (None: no such node).
        """
        if event.outcome == "delivered":
            return False
        recipient = event.recipient
        marks = self._marks.get(recipient)
        if marks is None:
            marks = self._marks[recipient] = _Marks()
        if marks.announced == math.inf:
            try:
                records, marks.cursor = self._platform.logs_since(recipient, marks.cursor)
            except KeyError:  # not a node of this platform
                records = ()
            marks.read(records)
        return _to_ended(event, outcome, marks, self._subscribed.get(recipient, math.inf))


def _sent_at(event: DeliveryEvent) -> float:
    return event.sent_monotonic


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

    ``messages`` holds the events the broker keeps (the last 100 000) and the drop counts
    judge those; ``nodes[].messages_*`` and ``bytes_*`` are the broker's running counts, which
    cover the whole run. Costs O(events + nodes), plus a sort of the events that are nearly in
    order already.
    """
    messages: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str, str | None]] = set()
    # "in time order" (docs/run-json.md): the broker keeps them in the order their outcomes
    # became known, which is nearly the order they were sent, so this sort is about linear
    events = platform.deliveries
    events.sort(key=_sent_at)
    ended = to_ended_recipients(platform, outcomes, events)
    dropped_to_ended = dropped = 0
    for event, to_ended in zip(events, ended, strict=True):
        # an ack carries the id of the message it answers, in the other direction
        is_ack = (event.recipient, event.sender or "", event.message_id) in seen
        seen.add((event.sender, event.recipient, event.message_id))
        if event.outcome != "delivered":
            dropped += 1
            dropped_to_ended += to_ended
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
        # the broker's running counts: the whole run, also copies beyond the kept events
        counts = platform.node_delivery_counts(outcome.node_id)
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
                "messages_sent": counts.sent,
                "messages_received": counts.received,
                "bytes_sent": counts.bytes_sent,
                "bytes_received": counts.bytes_received,
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
