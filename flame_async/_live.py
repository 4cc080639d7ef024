"""Live view of a local run: a table per node on a terminal, plain prefixed lines otherwise.

An update costs what changed since the last one, not what the run recorded so far: the view
takes only the deliveries and the log lines that are new (cursors into the platform's records:
``deliveries_since``, ``nodes_changed_since``, ``logs_since``; its running counts for the
totals), keeps what it shows per node, and draws at most ``refresh_per_second`` times a second,
only when something changed. With more than 50 nodes a row per node fits no screen: the view
then shows how many nodes are in each status and the rows of the nodes furthest behind.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO

from ._failures import nodes_label
from ._runrecord import EndJudge
from .errors import InvalidArgument

if TYPE_CHECKING:
    from ._wire import BlockReport
    from .local import DeliveryCounts, DeliveryEvent, LogRecord, NodeDeliveryCounts
    from .runner import NodeOutcome

__all__ = ["LiveView"]


class _Platform(Protocol):
    """What the view reads of a :class:`~flame_async.local.LocalPlatform`."""

    def deliveries_since(self, cursor: int, /) -> tuple[Sequence[DeliveryEvent], int]: ...
    def delivery_counts(self) -> DeliveryCounts: ...
    def node_delivery_counts(self, node_id: str, /) -> NodeDeliveryCounts: ...
    def nodes_changed_since(self, cursor: int, /) -> tuple[Sequence[str], int]: ...
    def logs_since(self, node_id: str, cursor: int, /) -> tuple[Sequence[LogRecord], int]: ...
    def status(self, node_id: str, /) -> str | None: ...
    def progress(self, node_id: str, /) -> int: ...
    def blocked(self, node_id: str, /) -> BlockReport | None: ...


_STATUS_STYLE: Final = {
    "executed": "green",
    "failed": "bold red",
    "stopped": "yellow",
    "running": "cyan",
    "executing": "cyan",
    "starting": "dim",
    "blocked": "bold yellow",
}

# Column layout of the table (characters). Node id, role, status and progress percent are
# never cut; as the terminal narrows, the progress bar shrinks first (to _BAR_MIN), then the
# last-log column, which takes whatever is left; below _LOG_MIN it is left out.
_STATUS_MIN: Final = len("executing")  # the longest status word: the column never jumps
_PERCENT: Final = len("100%")
_BAR_MAX: Final = 14
_BAR_MIN: Final = 5
_LOG_WANTED: Final = 40  # the bar grows beyond _BAR_MIN only when the log column has this
_LOG_MIN: Final = 8
_FOLD: Final = 5  # plain lines: this many nodes printing the same line in one tick read as one
_COMPACT_ABOVE: Final = 50  # more nodes: counts per status and the rows furthest behind
_NOTABLE: Final = 10  # rows shown then
# the order of the per-status counts, and which rows come first (lower: further behind)
_RANK: Final = {"failed": 0, "blocked": 1, "stopped": 2}
_COUNT_ORDER: Final = ("failed", "blocked", "stopped", "starting", "executing", "running")


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    node: str
    role: str
    status: str
    percent: int
    traffic: str  # "sent/received"
    last: str  # last log line


@dataclasses.dataclass(frozen=True, slots=True)
class _Traffic:
    delivered: int
    to_ended: int  # dropped because the recipient had already ended: no failure
    to_running: int  # dropped while the recipient was still running: lost messages


@dataclasses.dataclass(frozen=True, slots=True)
class _Widths:
    node: int
    role: int
    status: int
    traffic: int
    bar: int  # 0: percent only
    log: int  # 0: no log column

    @property
    def progress(self) -> int:
        return self.bar + 1 + _PERCENT if self.bar else max(_PERCENT, len("progress"))


def _layout(rows: Sequence[_Row], width: int) -> _Widths:
    """Column widths that fit ``width`` characters (see the constants above)."""
    node = max([len("node"), *(len(r.node) for r in rows)])
    role = max([len("role"), *(len(r.role) for r in rows)])
    status = max([_STATUS_MIN, *(len(r.status) for r in rows)])
    traffic = max([len("out/in"), *(len(r.traffic) for r in rows)])
    fixed = node + role + status + traffic
    # rich's default box: a border between and around the columns, one space padding each
    free = width - _overhead(6) - fixed
    bar = max(_BAR_MIN, min(_BAR_MAX, free - (1 + _PERCENT) - _LOG_WANTED))
    log = free - (bar + 1 + _PERCENT)
    if log >= _LOG_MIN:
        return _Widths(node, role, status, traffic, bar, log)
    bar = min(_BAR_MAX, width - _overhead(5) - fixed - (1 + _PERCENT))
    return _Widths(node, role, status, traffic, bar if bar >= 3 else 0, 0)


def _overhead(columns: int) -> int:
    return 3 * columns + 1


@dataclasses.dataclass(frozen=True, slots=True)
class _Summary:
    """Above 50 nodes: how many nodes are in each status (most urgent first)."""

    nodes: int
    counts: tuple[tuple[str, int], ...]

    def line(self) -> Any:
        from rich.text import Text

        line = Text(f"nodes: {self.nodes:,}", no_wrap=True, overflow="ellipsis")
        for i, (status, count) in enumerate(self.counts):
            line.append(", " if i else " (")
            line.append(f"{count:,} {status}", style=_STATUS_STYLE.get(status, ""))
        if self.counts:
            line.append(")")
        return line


class _Frame:
    """One frame of the table, laid out for the width rich offers when it is drawn.

    With a ``summary`` (many nodes), the rows are only those of the nodes furthest behind.
    """

    def __init__(self, rows: list[_Row], traffic: _Traffic, summary: _Summary | None = None):
        self.rows = rows
        self.traffic = traffic
        self.summary = summary

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        # above the table: a run with more nodes than the terminal has rows still shows it
        yield _traffic_line(self.traffic, rich=True)
        if self.summary is not None:
            yield self.summary.line()
            if not self.rows:
                return
            yield Text(
                f"the {len(self.rows)} furthest behind: failed, blocked, least progress",
                style="dim",
                no_wrap=True,
                overflow="ellipsis",
            )
        widths = _layout(self.rows, options.max_width)
        table = Table(expand=False)
        table.add_column("node", width=widths.node, no_wrap=True, overflow="ellipsis")
        table.add_column("role", width=widths.role, no_wrap=True, overflow="ellipsis")
        table.add_column("status", width=widths.status, no_wrap=True, overflow="ellipsis")
        table.add_column("progress", width=widths.progress, no_wrap=True)
        table.add_column("out/in", width=widths.traffic, justify="right", no_wrap=True)
        if widths.log:
            table.add_column("last log line", width=widths.log, no_wrap=True, overflow="ellipsis")
        for row in self.rows:
            percent = Text(f"{row.percent:>3}%")
            if widths.bar:
                progress: Any = Table.grid(padding=(0, 1))
                progress.add_row(
                    ProgressBar(total=100, completed=row.percent, width=widths.bar), percent
                )
            else:
                progress = percent
            cells = [
                row.node,
                row.role,
                Text(row.status, style=_STATUS_STYLE.get(row.status, "")),
                progress,
                row.traffic,
            ]
            if widths.log:
                cells.append(Text(row.last, no_wrap=True, overflow="ellipsis"))
            table.add_row(*cells)
        yield table


def _traffic_line(traffic: _Traffic, *, rich: bool) -> Any:
    """``messages: N delivered, N to nodes that had ended, N dropped`` (Text when ``rich``)."""
    parts: list[tuple[str, str]] = [(f"messages: {traffic.delivered:,} delivered", "")]
    if traffic.to_ended:
        parts.append((f"{traffic.to_ended:,} to nodes that had ended", "dim"))
    if traffic.to_running:
        parts.append((f"{traffic.to_running:,} dropped", "bold red"))
    if not rich:
        return ", ".join(text for text, _ in parts)
    from rich.text import Text

    line = Text(no_wrap=True, overflow="ellipsis")
    for i, (text, style) in enumerate(parts):
        if i:
            line.append(", ")
        line.append(text, style=style)
    return line


def _log_lines(log: str) -> list[str]:
    """The lines of a log record to print: a traceback is cut to its last line (the
    summary shows it once, the node's log file whole)."""
    lines = log.splitlines() or [""]
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            head = [*lines[:i]]
            last = next((t for t in reversed(lines[i:]) if t and not t[0].isspace()), "")
            if head and head[-1].endswith(":"):  # "analysis failed:" + the exception
                head[-1] = f"{head[-1]} {last}"
            else:
                head.append(last)
            return head
    return lines


def _blocked_now(platform: _Platform, node: str, *, short: bool = False) -> str:
    """What to show while ``node``'s event loop is blocked (its watchdog reports it from a
    thread), or ``""``; ``short`` for the table's log column (``analysis.py:7, 12 s``). A node
    sharing the view's loop cannot be seen while it blocks; its warning log says so after."""
    report = platform.blocked(node)
    if report is None or not report.ongoing:
        return ""
    if short:
        where = report.location.split(" (in ")[0] or "event loop"
        return f"{where}, {report.seconds:.0f} s"
    where = f" at {report.location}" if report.location else ""
    return (
        f"event loop blocked for {report.seconds:.0f} s{where}: nothing else of this node runs "
        "until it returns (run such work with 'await asyncio.to_thread(...)')"
    )


def _final(outcome: NodeOutcome, *, closing: bool) -> str:
    """The status to show: once the view closes, nothing runs any more."""
    return "stopped" if closing and outcome.running else outcome.status


@dataclasses.dataclass(slots=True)
class _Seen:
    """What the view knows of one node."""

    index: int  # in the outcomes
    log_cursor: int = 0  # log records taken (``logs_since``)
    last: str = ""  # first line of its last log record that is no progress report
    outcome_status: str = ""  # as of the last look
    outputs: int = 0  # output lines seen (the table shows the last)
    outputs_printed: int = 0  # ... printed (plain lines)
    status_printed: str = ""
    block_printed: bool = False


@dataclasses.dataclass(slots=True)
class _News:
    """What one look found."""

    changed: bool = False
    logs: dict[str, Sequence[LogRecord]] = dataclasses.field(default_factory=dict)


class LiveView:
    """Observer for :func:`flame_async.runner.run_script` that shows per-node progress.

    On a terminal (and with ``rich`` installed) it redraws one row per node: role, status,
    progress bar, messages out/in and the last log line, and above the table the broker's
    deliveries: delivered, dropped to nodes that had already ended (no failure) and dropped to
    nodes still running (lost, in red). At 80 columns the node id, role, status and percent are
    shown in full; the progress bar shrinks first, then the last-log column. With more than 50
    nodes the table shows how many nodes are in each status and the rows of the 10 nodes
    furthest behind (failed, then blocked, then those with the least progress). Otherwise it
    prints each new log line and status change once, prefixed with the node id, so CI logs stay
    readable, and the delivery counts at the end.

    An update takes only what is new since the last (deliveries, log lines, outcomes that
    changed) and draws at most ``refresh_per_second`` times a second, and only when something
    changed; calls that come sooner return at once.

    The view prints no title of its own (the caller says what runs). Call :meth:`close` when
    the run is over, also when it was interrupted: the last frame then shows how each node
    ended.

    Args:
        stream: Where to write (default ``sys.stdout``).
        rich: Force (True) or forbid (False) the table; default: only on a TTY.
        width: Columns of the table (default: the terminal's width, or 80 off a terminal).
        refresh_per_second: How often at most an update looks at the platform and redraws
            (``math.inf``: at every call).

    Raises:
        InvalidArgument: ``refresh_per_second`` is not positive.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        rich: bool | None = None,
        width: int | None = None,
        refresh_per_second: float = 4.0,
    ) -> None:
        if not refresh_per_second > 0:
            raise InvalidArgument(
                f"refresh_per_second must be positive, got {refresh_per_second!r}"
            )
        self._stream = stream or sys.stdout
        use_rich = self._stream.isatty() if rich is None else rich
        self._live: Any = None
        if use_rich:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:  # the 'cli' extra is not installed: plain lines
                use_rich = False
            else:
                console = Console(file=self._stream, width=width)
                # no refresh thread: the view redraws when something changed
                self._live = Live(console=console, auto_refresh=False, transient=False)
        self._gap = 1 / refresh_per_second
        self._looked = -math.inf  # time.monotonic() of the last look
        self._finished = False  # the final frame is drawn: no more redraws
        self._platform: _Platform | None = None
        self._outcomes: Sequence[NodeOutcome] = ()
        self._outcome_of: dict[str, NodeOutcome] = {}
        self._seen: dict[str, _Seen] = {}
        self._judge: EndJudge | None = None
        self._deliveries = 0  # cursor: delivery events taken
        self._changes = 0  # cursor: PO changes taken
        self._to_ended = 0  # dropped copies judged "to a node that had ended"
        self._lost: dict[str, list[DeliveryEvent]] = {}  # the others, per running recipient
        self._width = 0  # of the node ids (plain lines)

    async def __call__(self, platform: _Platform, outcomes: Sequence[NodeOutcome]) -> None:
        """Update the view (called by the runner about ten times a second)."""
        self._platform, self._outcomes = platform, outcomes
        if self._finished:
            return
        if not any(o.running for o in outcomes):  # every node ended: the last frame
            self._finish(platform, outcomes, closing=False)
            return
        now = time.monotonic()
        if now - self._looked < self._gap:
            return
        self._looked = now
        if self._live is None:
            self._plain(platform, outcomes, closing=False)
            return
        news = self._take(platform, outcomes)
        if not self._live.is_started:
            self._live.start()
        elif not (news.changed or self._any_blocked(platform, outcomes)):
            return
        self._live.update(self._frame(platform, outcomes, closing=False), refresh=True)

    def close(self, outcomes: Sequence[NodeOutcome] | None = None) -> None:
        """Draw the final frame and stop redrawing (the table stays on screen).

        Safe to call more than once, and after an interrupted run: nodes still marked running
        are shown as ``stopped``.

        Args:
            outcomes: The final outcomes (default: those of the last update; the runner updates
                them in place, so they are final by the time the run returns or is cancelled).
        """
        if outcomes is not None:
            self._outcomes = outcomes
        if self._finished:
            return
        if self._platform is None or not self._outcomes:  # never updated: nothing to show
            self._finished = True
            return
        try:
            self._finish(self._platform, self._outcomes, closing=True)
        finally:  # called from the caller's `finally`: never leave the terminal redrawing
            if self._live is not None and self._live.is_started:
                self._live.stop()

    def _finish(
        self, platform: _Platform, outcomes: Sequence[NodeOutcome], *, closing: bool
    ) -> None:
        self._finished = True
        if self._live is None:
            self._plain(platform, outcomes, closing=closing)
            self._stream.write(_traffic_line(self._traffic(platform), rich=False) + "\n")
            self._stream.flush()
            return
        self._take(platform, outcomes)
        if not self._live.is_started:
            self._live.start()
        self._live.update(self._frame(platform, outcomes, closing=closing))
        self._live.stop()  # draws the frame once more, whole, and leaves it on screen

    # -- what is new -----------------------------------------------------------------------------

    def _take(self, platform: _Platform, outcomes: Sequence[NodeOutcome]) -> _News:
        """Take the deliveries and log records that are new, and the outcomes that changed.

        Costs O(new events + new log records + nodes), the last for a look at each outcome
        (no call to the platform for it).
        """
        if len(self._outcome_of) != len(outcomes):  # the runner keeps one list
            self._outcome_of = {o.node_id: o for o in outcomes}
            self._width = max((len(o.node_id) for o in outcomes), default=0)
        news = _News(changed=self._take_deliveries(platform))
        changed, self._changes = platform.nodes_changed_since(self._changes)
        for node in changed:
            seen = self._node(node)
            records, seen.log_cursor = platform.logs_since(node, seen.log_cursor)
            if records:
                news.logs[node] = records
                last = next((r.log for r in reversed(records) if not _progress(r)), None)
                if last is not None:
                    seen.last = last.splitlines()[0] if last else ""
            news.changed = True
        for outcome in outcomes:
            seen = self._node(outcome.node_id)
            if outcome.status != seen.outcome_status:
                seen.outcome_status = outcome.status
                news.changed = True
                if not outcome.running and outcome.node_id in self._lost:
                    self._judge_again(outcome)
            if len(outcome.output) != seen.outputs:
                seen.outputs = len(outcome.output)
                news.changed = True
        return news

    def _take_deliveries(self, platform: _Platform) -> bool:
        """Judge the dropped copies among the new delivery events; whether there were any."""
        events, self._deliveries = platform.deliveries_since(self._deliveries)
        if not events:
            return False
        if self._judge is None:
            self._judge = EndJudge(platform)
        judge, outcome_of = self._judge, self._outcome_of
        judge.see(events)
        for event in events:
            if event.outcome == "delivered":
                continue
            if judge.to_ended(event, outcome_of.get(event.recipient)):
                self._to_ended += 1
            else:  # lost, unless its recipient turns out to have ended before (_judge_again)
                self._lost.setdefault(event.recipient, []).append(event)
        return True

    def _node(self, node_id: str) -> _Seen:
        seen = self._seen.get(node_id)
        if seen is None:
            seen = self._seen[node_id] = _Seen(len(self._seen))
        return seen

    def _judge_again(self, outcome: NodeOutcome) -> None:
        """A node ended: copies dropped to it before the runner knew may have come after its
        end (no failure then)."""
        judge, lost = self._judge, self._lost.pop(outcome.node_id)
        if judge is None:  # not in practice: copies were judged, so there is a judge
            return
        still = [e for e in lost if not judge.to_ended(e, outcome)]
        self._to_ended += len(lost) - len(still)
        if still:
            self._lost[outcome.node_id] = still

    @staticmethod
    def _any_blocked(platform: _Platform, outcomes: Sequence[NodeOutcome]) -> bool:
        """Whether a running node's loop is blocked now (its seconds grow: redraw)."""
        return any(
            o.running and (r := platform.blocked(o.node_id)) is not None and r.ongoing
            for o in outcomes
        )

    def _traffic(self, platform: _Platform) -> _Traffic:
        counts = platform.delivery_counts()
        return _Traffic(counts.delivered, self._to_ended, counts.dropped - self._to_ended)

    # -- plain lines -----------------------------------------------------------------------------

    def _plain(
        self, platform: _Platform, outcomes: Sequence[NodeOutcome], *, closing: bool
    ) -> None:
        news = self._take(platform, outcomes)
        # this tick's new lines, as (what, text) per node; identical lines of many nodes fold
        lines: dict[tuple[str, str], list[str]] = {}
        for outcome in outcomes:
            node = outcome.node_id
            seen = self._seen[node]
            for record in news.logs.get(node, ()):
                if not _progress(record):
                    for line in _log_lines(record.log):
                        lines.setdefault((record.log_type, line), []).append(node)
            if seen.outputs_printed < len(outcome.output):
                for _, stream, text in outcome.output[seen.outputs_printed :]:
                    lines.setdefault((stream, text), []).append(node)
                seen.outputs_printed = len(outcome.output)
            if outcome.running and not seen.block_printed:  # once: the seconds keep growing
                block = _blocked_now(platform, node)
                if block:
                    lines.setdefault(("warn", block), []).append(node)
                    seen.block_printed = True
            status = _final(outcome, closing=closing)
            if seen.status_printed != status and status not in ("starting", "running"):
                lines.setdefault(("-----", status), []).append(node)
                seen.status_printed = status
        width = self._width
        for (what, text), nodes in lines.items():
            if len(nodes) >= _FOLD:
                self._stream.write(f"[{nodes_label(nodes)}] {what:<5} {text}\n")
                continue
            for node in nodes:
                self._stream.write(f"[{node:<{width}}] {what:<5} {text}\n")
        self._stream.flush()

    # -- the table -------------------------------------------------------------------------------

    def _frame(
        self, platform: _Platform, outcomes: Sequence[NodeOutcome], *, closing: bool
    ) -> _Frame:
        """The frame for what was taken last (:meth:`_take`): a row per node, or above 50
        nodes the counts per status and the rows of the nodes furthest behind."""
        traffic = self._traffic(platform)
        if len(outcomes) <= _COMPACT_ABOVE:
            return _Frame([self._row(platform, o, closing=closing) for o in outcomes], traffic)
        counts: Counter[str] = Counter()
        behind: list[tuple[int, int, int]] = []  # (rank, percent, index) of unfinished nodes
        for i, outcome in enumerate(outcomes):
            status, percent = self._status(platform, outcome, closing=closing)
            counts[status] += 1
            if status != "executed":
                behind.append((_RANK.get(status, 3), percent, i))
        order = [s for s in _COUNT_ORDER if counts[s]]
        order += sorted(s for s in counts if s not in _COUNT_ORDER and s != "executed")
        if counts["executed"]:
            order.append("executed")
        rows = [
            self._row(platform, outcomes[i], closing=closing)
            for _, _, i in heapq.nsmallest(_NOTABLE, behind)
        ]
        summary = _Summary(len(outcomes), tuple((s, counts[s]) for s in order))
        return _Frame(rows, traffic, summary)

    @staticmethod
    def _status(platform: _Platform, outcome: NodeOutcome, *, closing: bool) -> tuple[str, int]:
        """The status and percent to show for a node."""
        node = outcome.node_id
        status = _final(outcome, closing=closing)
        if outcome.running and not closing:
            # what the node last reported; before its first report it is still starting
            status = platform.status(node) or "starting"
            if (report := platform.blocked(node)) is not None and report.ongoing:
                status = "blocked"
        # a node that ended normally is done, whatever it last reported
        percent = 100 if outcome.status == "executed" else platform.progress(node)
        return status, percent

    def _row(self, platform: _Platform, outcome: NodeOutcome, *, closing: bool) -> _Row:
        node = outcome.node_id
        status, percent = self._status(platform, outcome, closing=closing)
        seen = self._seen.get(node)
        last = seen.last if seen is not None else ""
        if outcome.output:
            last = outcome.output[-1][2]
        if outcome.status == "failed":
            last = f"{outcome.error_type}: {outcome.error_message}".splitlines()[0]
        if status == "blocked":
            last = _blocked_now(platform, node, short=True)
        counts = platform.node_delivery_counts(node)
        return _Row(node, outcome.role, status, percent, f"{counts.sent}/{counts.received}", last)


def _progress(record: LogRecord) -> bool:
    """Whether a log record only reports progress (the progress bar shows it)."""
    return record.log.startswith("progress ")
