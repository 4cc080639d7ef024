"""Live view of a local run: a table per node on a terminal, plain prefixed lines otherwise."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

from ._failures import nodes_label
from ._runrecord import to_ended_recipients
from .local import DeliveryEvent, LocalPlatform

if TYPE_CHECKING:
    from .runner import NodeOutcome

__all__ = ["LiveView"]

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


class _Frame:
    """One frame of the table, laid out for the width rich offers when it is drawn."""

    def __init__(self, rows: list[_Row], traffic: _Traffic) -> None:
        self.rows = rows
        self.traffic = traffic

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

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
        # above the table: a run with more nodes than the terminal has rows still shows it
        yield _traffic_line(self.traffic, rich=True)
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


def _blocked_now(platform: LocalPlatform, node: str, *, short: bool = False) -> str:
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


class LiveView:
    """Observer for :func:`flame_async.runner.run_script` that shows per-node progress.

    On a terminal (and with ``rich`` installed) it redraws one row per node: role, status,
    progress bar, messages out/in and the last log line, and above the table the broker's
    deliveries: delivered, dropped to nodes that had already ended (no failure) and dropped to
    nodes still running (lost, in red). At 80 columns the node id, role, status and percent are
    shown in full; the progress bar shrinks first, then the last-log column. Otherwise it
    prints each new log line and status change once, prefixed with the node id, so CI logs stay
    readable, and the delivery counts at the end.

    The view prints no title of its own (the caller says what runs). Call :meth:`close` when
    the run is over, also when it was interrupted: the last frame then shows how each node
    ended.

    Args:
        stream: Where to write (default ``sys.stdout``).
        rich: Force (True) or forbid (False) the table; default: only on a TTY.
        width: Columns of the table (default: the terminal's width, or 80 off a terminal).
    """

    def __init__(
        self, stream: TextIO | None = None, *, rich: bool | None = None, width: int | None = None
    ) -> None:
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
                self._live = Live(console=console, refresh_per_second=8, transient=False)
        self._finished = False  # the final frame is drawn: no more redraws
        self._platform: LocalPlatform | None = None
        self._outcomes: Sequence[NodeOutcome] = ()
        self._printed: Counter[str] = Counter()
        self._output_printed: Counter[str] = Counter()
        self._last_status: dict[str, str] = {}
        self._blocks_printed: Counter[str] = Counter()

    async def __call__(self, platform: LocalPlatform, outcomes: Sequence[NodeOutcome]) -> None:
        """Update the view (called by the runner about ten times a second)."""
        self._platform, self._outcomes = platform, outcomes
        if self._finished:
            return
        if not any(o.running for o in outcomes):  # every node ended: the last frame
            self._finish(platform, outcomes, closing=False)
        elif self._live is not None:
            if not self._live.is_started:
                self._live.start()
            self._live.update(self._frame(platform, outcomes, closing=False))
        else:
            self._plain(platform, outcomes, closing=False)

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
        self, platform: LocalPlatform, outcomes: Sequence[NodeOutcome], *, closing: bool
    ) -> None:
        self._finished = True
        if self._live is None:
            self._plain(platform, outcomes, closing=closing)
            self._stream.write(_traffic_line(self._traffic(platform, outcomes), rich=False) + "\n")
            self._stream.flush()
            return
        if not self._live.is_started:
            self._live.start()
        self._live.update(self._frame(platform, outcomes, closing=closing))
        self._live.stop()  # draws the frame once more, whole, and leaves it on screen

    @staticmethod
    def _traffic(
        platform: LocalPlatform,
        outcomes: Sequence[NodeOutcome],
        events: Sequence[DeliveryEvent] | None = None,
    ) -> _Traffic:
        events = platform.deliveries if events is None else events
        verdicts = to_ended_recipients(platform, outcomes, events)
        delivered = sum(1 for e in events if e.outcome == "delivered")
        to_ended = sum(verdicts)
        return _Traffic(delivered, to_ended, len(events) - delivered - to_ended)

    def _plain(
        self, platform: LocalPlatform, outcomes: Sequence[NodeOutcome], *, closing: bool
    ) -> None:
        # this tick's new lines, as (what, text) per node; identical lines of many nodes fold
        lines: dict[tuple[str, str], list[str]] = {}
        for outcome in outcomes:
            node = outcome.node_id
            records = platform.logs(node)
            for record in records[self._printed[node] :]:
                if not record.log.startswith("progress "):
                    for line in _log_lines(record.log):
                        lines.setdefault((record.log_type, line), []).append(node)
            self._printed[node] = len(records)
            for _, stream, text in outcome.output[self._output_printed[node] :]:
                lines.setdefault((stream, text), []).append(node)
            self._output_printed[node] = len(outcome.output)
            block = _blocked_now(platform, node) if outcome.running else None
            if block and not self._blocks_printed[node]:  # once: the seconds keep growing
                lines.setdefault(("warn", block), []).append(node)
                self._blocks_printed[node] = True
            status = _final(outcome, closing=closing)
            if self._last_status.get(node) != status and status not in ("starting", "running"):
                lines.setdefault(("-----", status), []).append(node)
                self._last_status[node] = status
        width = max(len(o.node_id) for o in outcomes)
        for (what, text), nodes in lines.items():
            if len(nodes) >= _FOLD:
                self._stream.write(f"[{nodes_label(nodes)}] {what:<5} {text}\n")
                continue
            for node in nodes:
                self._stream.write(f"[{node:<{width}}] {what:<5} {text}\n")
        self._stream.flush()

    @classmethod
    def _frame(
        cls, platform: LocalPlatform, outcomes: Sequence[NodeOutcome], *, closing: bool
    ) -> _Frame:
        sent: Counter[str] = Counter()
        received: Counter[str] = Counter()
        events = platform.deliveries
        for event in events:
            if event.sender:
                sent[event.sender] += 1
            if event.outcome == "delivered":
                received[event.recipient] += 1
        rows = []
        for outcome in outcomes:
            node = outcome.node_id
            status = _final(outcome, closing=closing)
            if outcome.running and not closing:
                status = platform.status(node) or status
            # a node that ended normally is done, whatever it last reported
            percent = 100 if outcome.status == "executed" else platform.progress(node)
            lines = [r.log for r in platform.logs(node) if not r.log.startswith("progress ")]
            last = lines[-1].splitlines()[0] if lines and lines[-1] else ""
            if outcome.output:
                last = outcome.output[-1][2]
            if outcome.status == "failed":
                last = f"{outcome.error_type}: {outcome.error_message}".splitlines()[0]
            block = _blocked_now(platform, node, short=True) if outcome.running else ""
            if block and not closing:
                status, last = "blocked", block
            rows.append(
                _Row(node, outcome.role, status, percent, f"{sent[node]}/{received[node]}", last)
            )
        return _Frame(rows, cls._traffic(platform, outcomes, events))
