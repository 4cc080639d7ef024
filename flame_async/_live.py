"""Live view of a local run: a table per node on a terminal, plain prefixed lines otherwise."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .local import LocalPlatform

if TYPE_CHECKING:
    from .runner import NodeOutcome

__all__ = ["LiveView"]

_STATUS_STYLE = {
    "executed": "green",
    "failed": "bold red",
    "stopped": "yellow",
    "running": "cyan",
    "executing": "cyan",
    "starting": "dim",
}


class LiveView:
    """Observer for :func:`flame_async.runner.run_script` that shows per-node progress.

    On a terminal (and with ``rich`` installed) it redraws one row per node: role, status,
    progress bar, messages in/out and the last log line. Otherwise it prints each new log line
    and status change once, prefixed with the node id, so CI logs stay readable.

    Args:
        stream: Where to write (default ``sys.stdout``).
        rich: Force (True) or forbid (False) the table; default: only on a TTY.
    """

    def __init__(self, stream: TextIO | None = None, *, rich: bool | None = None) -> None:
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
                console = Console(file=self._stream)
                self._live = Live(console=console, refresh_per_second=8, transient=False)
        self._printed: Counter[str] = Counter()
        self._output_printed: Counter[str] = Counter()
        self._last_status: dict[str, str] = {}

    async def __call__(self, platform: LocalPlatform, outcomes: Sequence[NodeOutcome]) -> None:
        """Update the view (called by the runner about ten times a second)."""
        if self._live is not None:
            if not self._live.is_started:
                self._live.start()
            self._live.update(self._table(platform, outcomes))
            if not any(o.running for o in outcomes):
                self._live.stop()
            return
        self._plain(platform, outcomes)

    def close(self) -> None:
        """Stop redrawing (the table stays on screen)."""
        if self._live is not None and self._live.is_started:
            self._live.stop()

    def _plain(self, platform: LocalPlatform, outcomes: Sequence[NodeOutcome]) -> None:
        width = max(len(o.node_id) for o in outcomes)
        for outcome in outcomes:
            node = outcome.node_id
            records = platform.logs(node)
            for record in records[self._printed[node] :]:
                if not record.log.startswith("progress "):
                    for line in record.log.splitlines() or [""]:
                        self._stream.write(f"[{node:<{width}}] {record.log_type:<5} {line}\n")
            self._printed[node] = len(records)
            for _, stream, text in outcome.output[self._output_printed[node] :]:
                self._stream.write(f"[{node:<{width}}] {stream:<6} {text}\n")
            self._output_printed[node] = len(outcome.output)
            if self._last_status.get(node) != outcome.status and not outcome.running:
                self._stream.write(f"[{node:<{width}}] ----- {outcome.status}\n")
                self._last_status[node] = outcome.status
        self._stream.flush()

    @staticmethod
    def _table(platform: LocalPlatform, outcomes: Sequence[NodeOutcome]) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        sent: Counter[str] = Counter()
        received: Counter[str] = Counter()
        for event in platform.deliveries:
            if event.sender:
                sent[event.sender] += 1
            if event.outcome == "delivered":
                received[event.recipient] += 1
        table = Table(expand=True, title=f"analysis {platform.analysis_id[:8]}")
        for column, options in (
            ("node", {"no_wrap": True}),
            ("role", {"no_wrap": True}),
            ("status", {"no_wrap": True}),
            ("progress", {"width": 22}),
            ("out/in", {"justify": "right", "no_wrap": True}),
            ("last log line", {"ratio": 1, "overflow": "ellipsis", "no_wrap": True}),
        ):
            table.add_column(column, **options)
        for outcome in outcomes:
            node = outcome.node_id
            status = outcome.status
            if outcome.running:
                status = platform.status(node) or status
            percent = platform.progress(node)
            lines = [r.log for r in platform.logs(node) if not r.log.startswith("progress ")]
            last = lines[-1].splitlines()[0] if lines else ""
            if outcome.output:
                last = outcome.output[-1][2]
            if outcome.status == "failed":
                last = f"{outcome.error_type}: {outcome.error_message}"
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=100, completed=percent, width=14), f"{percent:>3}%")
            table.add_row(
                node,
                outcome.role,
                Text(status, style=_STATUS_STYLE.get(status, "")),
                bar,
                f"{sent[node]}/{received[node]}",
                last,
            )
        return table
