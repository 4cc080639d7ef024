"""Run status, progress and log shipping to the pod orchestrator, and partner-status sync."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Final

import anyio
from anyio.abc import TaskStatus

from ._transport import GatewayClient
from ._wire import LogType, StreamLog
from .errors import FlameError, InvalidArgument
from .models import RunStatus

__all__ = ["PoLogHandler", "Progress", "StatusService"]

log = logging.getLogger("flame_async.status")

MAX_LOG_CHARS: Final = 64 * 1024
"""Longest log text shipped to the PO in one line; longer texts are cut and say so."""

_LOG_TYPES: tuple[tuple[int, LogType], ...] = (
    (50, "crit"),
    (40, "error"),
    (30, "warn"),
    (25, "notice"),
    (20, "info"),
)


def log_type_for(levelno: int) -> LogType:
    """Map a :mod:`logging` level to the PO's ``log_type`` vocabulary."""
    for threshold, name in _LOG_TYPES:
        if levelno >= threshold:
            return name
    return "debug"


class Progress:
    """Monotonic progress in ``[0, 1]`` with nested sub-ranges for phases.

    ``progress.update(0.5)`` sets half done; ``with progress.phase(0.2, 0.8) as p`` gives a view
    where ``p.update(x)`` means ``0.2 + x * 0.6`` of the whole, and leaving the block completes the
    phase. Progress never goes backwards: a lower value is ignored.
    """

    def __init__(
        self,
        on_change: Callable[[float], None],
        *,
        start: float = 0.0,
        end: float = 1.0,
        root: Progress | None = None,
    ) -> None:
        self._on_change = on_change
        self._start = start
        self._end = end
        self._root = root
        self._value = 0.0

    @property
    def value(self) -> float:
        """The overall progress in ``[0, 1]``."""
        return (self._root or self)._value

    @property
    def percent(self) -> int:
        """The overall progress in whole percent, as the PO receives it."""
        return int(self.value * 100)

    def update(self, fraction: float) -> None:
        """Set this range's progress to ``fraction`` (0-1).

        Raises:
            InvalidArgument: ``fraction`` is not a finite number in ``[0, 1]``.
        """
        if not isinstance(fraction, int | float) or not math.isfinite(fraction):
            raise InvalidArgument(f"progress must be a finite number in [0, 1], got {fraction!r}")
        if not 0 <= fraction <= 1:
            raise InvalidArgument(
                f"progress must be in [0, 1], got {fraction!r} (use set_progress() for percent)"
            )
        overall = self._start + fraction * (self._end - self._start)
        root = self._root or self
        if overall > root._value:
            root._value = overall
            self._on_change(overall)

    @contextlib.contextmanager
    def phase(self, start: float, end: float) -> Iterator[Progress]:
        """A sub-range ``[start, end]`` of this range; completed when the block exits normally.

        Raises:
            InvalidArgument: The bounds are not ``0 <= start <= end <= 1``.
        """
        if not 0 <= start <= end <= 1:
            raise InvalidArgument(f"a phase needs 0 <= start <= end <= 1, got {start}, {end}")
        width = self._end - self._start
        sub = Progress(
            self._on_change,
            start=self._start + start * width,
            end=self._start + end * width,
            root=self._root or self,
        )
        yield sub
        sub.update(1.0)


class PoLogHandler(logging.Handler):
    """A :mod:`logging` handler that ships records to the PO without ever blocking.

    Records go into a bounded queue (the oldest are dropped and counted when it is full); the
    status service's background task posts them to ``/po/stream_logs``. Safe to call from any
    thread: off the event loop it hands the record over with ``call_soon_threadsafe``.
    """

    def __init__(self, service: StatusService, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._service = service

    def emit(self, record: logging.LogRecord) -> None:
        """Queue ``record`` for shipping; never blocks, never raises."""
        try:
            text = self.format(record)
            self._service.enqueue(text, log_type_for(record.levelno))
        except Exception:  # noqa: BLE001 - logging handlers must not raise
            self.handleError(record)


class StatusService:
    """Run status, progress, partner-status sync and the log queue of one node.

    Args:
        status_sync: Partner statuses this node adopts (the pod orchestrator forwards the
            other nodes' statuses; with the defaults one executed, stopped or failed partner
            ends this node too).
        grace: Seconds after start during which ``/partner_status`` is ignored.
        queue_size: Most log records held for shipping.
    """

    def __init__(
        self,
        *,
        status_sync: tuple[str, ...] = ("executed", "stopped", "failed"),
        grace: float = 100.0,
        queue_size: int = 1000,
    ) -> None:
        self.status = RunStatus.STARTING
        self.progress = Progress(self._progress_changed)
        self.status_sync = status_sync
        self.grace = grace
        self.dropped = 0
        self.shipped = 0
        self.analysis_id = ""
        self._queue: collections.deque[tuple[str, LogType, RunStatus, int]] = collections.deque(
            maxlen=queue_size
        )
        self._wake = anyio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ship_lock = anyio.Lock()
        self._loop_thread = 0
        self.failed_posts = 0
        self._started_at: float | None = None
        self._reported_progress = 0
        self._synced = False

    # --------------------------------------------------------------- status

    def set_status(
        self, status: RunStatus, *, cause: str | None = None, force: bool = False
    ) -> bool:
        """Move to ``status``; a terminal status is kept unless ``force`` (returns True if changed).

        ``force`` is used when the analysis itself ends: its real outcome wins over a status
        adopted earlier from partners.
        """
        if status == self.status:
            return False
        if self.status.is_terminal and not (force and self._synced):
            return False
        self._synced = False
        self.status = status
        self.enqueue(f"run status: {status.value}" + (f" ({cause})" if cause else ""), "info")
        return True

    def started(self, now: float) -> None:
        """Record when the node API started (the partner-status grace period starts here)."""
        self._started_at = now

    def partner_status(self, statuses: Mapping[str, str | None], now: float) -> RunStatus:
        """Apply a PO ``/partner_status`` push and return the own status.

        Ignored during the grace period after start; then the first of executed, stopped,
        failed (in that order) that a partner reports and ``status_sync`` lists is adopted,
        unless this node already ended.
        """
        if self._started_at is None or now - self._started_at < self.grace:
            return self.status
        if self.status.is_terminal:
            return self.status
        values = set(statuses.values())
        for candidate in (RunStatus.EXECUTED, RunStatus.STOPPED, RunStatus.FAILED):
            if candidate.value in values and candidate.value in self.status_sync:
                who = ", ".join(sorted(k for k, v in statuses.items() if v == candidate.value))
                self.set_status(candidate, cause=f"adopted from partner {who}")
                self._synced = True
                break
        return self.status

    # -------------------------------------------------------------- progress

    def set_percent(self, percent: float) -> None:
        """flamesdk-style progress in percent (0-100); lower values are ignored.

        Raises:
            InvalidArgument: ``percent`` is not a finite number in ``[0, 100]``.
        """
        if not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise InvalidArgument(f"progress must be a number in [0, 100], got {percent!r}")
        self.progress.update(percent / 100)

    def _progress_changed(self, value: float) -> None:
        if int(value * 100) != self._reported_progress:
            self._wake_shipper()

    # ------------------------------------------------------------------ logs

    def enqueue(self, text: str, log_type: LogType) -> None:
        """Queue one log line for the PO; drops the oldest when the queue is full.

        A text longer than 64 Ki characters is cut (and says so): a PO takes bounded requests,
        and the status and progress that travel with the line must not be lost with it.
        """
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        if len(text) > MAX_LOG_CHARS:
            text = text[:MAX_LOG_CHARS] + f"\n[… cut: {len(text):,} characters in all]"
        self._queue.append((text, log_type, self.status, self.progress.percent))
        self._wake_shipper()

    def _wake_shipper(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def run_shipper(
        self, transport: GatewayClient, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Post queued logs (and progress changes) to ``/po/stream_logs`` until cancelled.

        Failures are counted and logged at debug level; they never reach the analysis.

        Cancellation:
            Stops at once; call :meth:`flush` first to ship what is queued.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        task_status.started()
        if self._queue:
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._ship_all(transport)

    async def flush(self, transport: GatewayClient) -> None:
        """Ship everything queued now (used at shutdown).

        Cancellation:
            Stops shipping; unshipped records stay queued.
        """
        await self._ship_all(transport)

    async def _ship_all(self, transport: GatewayClient) -> None:
        # one shipper at a time (the background task and the shutdown flush), in order
        async with self._ship_lock:
            while self._queue or self.progress.percent != self._reported_progress:
                if self._queue:
                    text, log_type, status, progress = self._queue.popleft()
                else:
                    text, log_type = f"progress {self.progress.percent}%", "debug"
                    status, progress = self.status, self.progress.percent
                body = StreamLog.model_construct(  # built from typed values: no re-validation
                    log=text,
                    log_type=log_type,
                    analysis_id=self.analysis_id,
                    status=status.value,
                    progress=progress,
                )
                try:
                    await transport.request(
                        "POST",
                        "/po/stream_logs",
                        service="po",
                        json=body.wire(),
                        retry=False,
                        timeout=10,
                    )
                except FlameError as exc:
                    self.failed_posts += 1
                    log.debug("shipping a log to the PO failed: %s", exc)
                else:
                    self.shipped += 1
                self._reported_progress = max(self._reported_progress, progress)
