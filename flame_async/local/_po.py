"""The pod orchestrator (PROTOCOL.md §5): log intake and the status loop per node.

``POST /po/stream_logs`` stores each log line and the node's reported status and progress. A loop
per node, every ``interval`` seconds, does what the real PO's status loop does: tell the node
its partners' statuses (``/partner_status``), read its ``/healthz`` and refresh its token shortly
before it expires (``/token_refresh``). The loop stops once the node's status is terminal.

Locally the ``/partner_status`` keys are node ids; the real Hub sends analysis-node record ids.

A node streams only its own logs: its token works on its own gateway only (403 otherwise), and
a log for another analysis than the token's is refused (403).

Limits (a log entry is one request's ``log``, one :class:`~flame_async.local.LogRecord`):

* A request body is at most 1 MiB (413 naming the limit).
* An entry keeps at most 64 Ki characters and 1000 lines; the rest is cut and the entry ends
  with the marker :data:`TRUNCATED` saying how much there was. Cutting rather than refusing
  keeps the status and progress the entry carries, and the start of a long traceback.
* Per node the PO keeps the last 20 000 entries and at most 16 Mi characters of log text,
  whichever is reached first; older entries go first (a ring buffer).
* A validation error is answered 422 in FastAPI's shape; its ``input`` is shown only when it
  is short and serialisable (an integer beyond 64 bits is described, not echoed).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import orjson
from pydantic import ValidationError

from .._transport import Request, Response
from .._wire import HealthAnswer, StreamLog
from ._core import NodeUnreachable, PlatformCore
from ._http import (
    Call,
    Route,
    detail_response,
    json_response,
    read_body,
    require_bearer,
    shown,
    validation_response,
)
from ._node import LocalNode
from ._records import LogRecord

__all__ = ["TERMINAL_STATUSES", "TRUNCATED", "PodOrchestrator"]

logger = logging.getLogger("flame_async.local.po")

TERMINAL_STATUSES = frozenset({"executed", "failed", "stopped"})
"""Statuses after which the PO stops polling a node."""

TRUNCATED: Final = "\n[… cut by the local platform: {chars} characters, {lines} lines in all]"
"""Ends a log entry that was cut (formatted with the entry's original size)."""

_BODY_LIMIT: Final = 1 << 20
_MAX_ENTRY_CHARS: Final = 64 * 1024
_MAX_ENTRY_LINES: Final = 1000
_MAX_ENTRIES: Final = 20_000
_MAX_KEPT_CHARS: Final = 16 << 20


@dataclass(slots=True)
class _NodeState:
    token: str
    logs: deque[LogRecord]
    status: str | None = None
    progress: int = 0
    health: str | None = None
    token_refreshes: int = 0
    kept_chars: int = 0  # of the log texts in ``logs``


def _cut(text: str) -> str:
    """``text``, or its first 64 Ki characters / 1000 lines and :data:`TRUNCATED`."""
    if len(text) <= _MAX_ENTRY_CHARS and text.count("\n") < _MAX_ENTRY_LINES:
        return text
    lines = text.count("\n") + 1
    head = text[:_MAX_ENTRY_CHARS]
    if head.count("\n") >= _MAX_ENTRY_LINES:
        head = "\n".join(head.split("\n", _MAX_ENTRY_LINES)[:_MAX_ENTRY_LINES])
    return head + TRUNCATED.format(chars=len(text), lines=lines)


class PodOrchestrator:
    """The PO of one local analysis.

    Args:
        core: The running platform.
        interval: Seconds between two status-loop rounds of a node.
        healthz_attempts: Tries of ``GET /healthz`` per round before the node counts as
            unreachable.
        max_logs: Log entries kept per node; the oldest go first.
        max_log_chars: Characters of log text kept per node; the oldest entries go first.
    """

    prefixes = ("/po",)

    def __init__(
        self,
        core: PlatformCore,
        *,
        interval: float = 2.0,
        healthz_attempts: int = 3,
        max_logs: int = _MAX_ENTRIES,
        max_log_chars: int = _MAX_KEPT_CHARS,
    ) -> None:
        self._core = core
        self._max_log_chars = max_log_chars
        self._interval = interval
        self._healthz_attempts = healthz_attempts
        self._healthz_pause = min(1.0, interval / 4)
        self._timeout = max(1.0, min(interval, 10.0))
        self._refresh_below = 2 * interval + 1
        self._states = {
            node_id: _NodeState(token=node.env["KEYCLOAK_TOKEN"], logs=deque(maxlen=max_logs))
            for node_id, node in core.nodes.items()
        }

    # -- what the platform reads ---------------------------------------------------------------

    def logs(self, node_id: str) -> list[LogRecord]:
        """The log entries ``node_id`` streamed, oldest first (the last ones the PO keeps)."""
        return list(self._states[node_id].logs)

    def status(self, node_id: str) -> str | None:
        """The node's last reported status (``None`` before it reported any)."""
        return self._states[node_id].status

    def progress(self, node_id: str) -> int:
        """The node's highest reported progress (0-100)."""
        return self._states[node_id].progress

    def health(self, node_id: str) -> str | None:
        """The status the node's ``/healthz`` last answered, ``"unreachable"``, or ``None``."""
        return self._states[node_id].health

    def token_refreshes(self, node_id: str) -> int:
        """How often the node's token was refreshed (``/token_refresh`` accepted it)."""
        return self._states[node_id].token_refreshes

    def token(self, node_id: str) -> str:
        """The node's current token (the last one sent to ``/token_refresh``)."""
        return self._states[node_id].token

    # -- gateway -------------------------------------------------------------------------------

    def routes(self, node: LocalNode) -> Iterable[Route]:
        """``POST /po/stream_logs`` for ``node``."""

        async def stream_logs(call: Call) -> Response:
            body = await read_body(call, limit=_BODY_LIMIT, what="a log request")
            if isinstance(body, Response):
                return body
            return self._stream_logs(node.node_id, body)

        core = self._core
        return [
            Route(
                "POST",
                "/po/stream_logs",
                require_bearer(stream_logs, core.issuer, core.analysis_id, node_id=node.node_id),
            )
        ]

    def _stream_logs(self, node_id: str, body: bytes) -> Response:
        try:
            entry = StreamLog.model_validate_json(body)
        except ValidationError as exc:
            return validation_response(exc)
        if entry.analysis_id != self._core.analysis_id:
            return detail_response(
                403,
                f"the log is for analysis {shown(entry.analysis_id)!r}, but the token is for "
                f"{self._core.analysis_id}",
            )
        state = self._states[node_id]
        text = _cut(entry.log)
        logs = state.logs
        if len(logs) == logs.maxlen:
            state.kept_chars -= len(logs[0].log)  # the deque drops it on append
        logs.append(
            LogRecord(
                node_id=node_id,
                log=text,
                log_type=entry.log_type,
                status=entry.status,
                progress=entry.progress,
                monotonic=time.monotonic(),
                time=datetime.now(UTC),
            )
        )
        state.kept_chars += len(text)
        while state.kept_chars > self._max_log_chars and len(logs) > 1:
            state.kept_chars -= len(logs.popleft().log)
        state.status = entry.status
        state.progress = max(state.progress, entry.progress)
        logger.debug("%s [%s] %s", node_id, entry.log_type, text)
        return json_response(None)

    # -- status loop ---------------------------------------------------------------------------

    async def watch(self, node: LocalNode) -> None:
        """Run the status loop of ``node`` until its status is terminal.

        A round that fails unexpectedly is logged and the loop goes on.

        Cancellation: stops the loop at once (the platform cancels it on exit).
        """
        state = self._states[node.node_id]
        while state.status not in TERMINAL_STATUSES:
            await anyio.sleep(self._interval)
            try:
                await self._round(node.node_id, state)
            except Exception:  # loop supervisor: one bad round must not end the loop
                logger.warning("status round for %s failed", node.node_id, exc_info=True)

    async def _round(self, node_id: str, state: _NodeState) -> None:
        partners = {
            other: self._states[other].status for other in self._core.nodes if other != node_id
        }
        await self._post(node_id, "/partner_status", {"partner_status": partners})

        reply = await self._healthz(node_id)
        if reply is None:
            state.health = "unreachable"
            return
        state.health = reply.status
        if reply.status in TERMINAL_STATUSES and state.status not in TERMINAL_STATUSES:
            state.status = reply.status
        if reply.token_remaining_time < self._refresh_below:
            token = self._core.issuer.mint(node_id)
            if await self._post(node_id, "/token_refresh", {"token": token}):
                state.token = token
                state.token_refreshes += 1

    async def _post(self, node_id: str, path: str, body: dict[str, Any]) -> bool:
        """POST ``body`` to the node's API; True on a 2xx answer. Failures are normal while a
        node starts."""
        request = Request("POST", path, headers=_JSON, body=orjson.dumps(body))
        try:
            async with self._core.call_node(node_id, request, timeout=self._timeout) as answer:
                await answer.read()
                status = answer.status
        except (NodeUnreachable, TimeoutError, OSError) as exc:
            logger.debug("PO: POST %s to %s failed: %r", path, node_id, exc)
            return False
        if not 200 <= status < 300:
            logger.debug("PO: POST %s to %s answered %d", path, node_id, status)
            return False
        return True

    async def _healthz(self, node_id: str) -> HealthAnswer | None:
        """The node's ``/healthz`` answer, or None if it never answered."""
        for attempt in range(self._healthz_attempts):
            if attempt:
                await anyio.sleep(self._healthz_pause)
            try:
                async with self._core.call_node(
                    node_id, Request("GET", "/healthz", headers=_ACCEPT_JSON), timeout=self._timeout
                ) as answer:
                    if answer.status != 200:
                        continue
                    raw = await answer.read()
            except (NodeUnreachable, TimeoutError, OSError) as exc:
                logger.debug("PO: GET /healthz of %s failed: %r", node_id, exc)
                continue
            try:
                return HealthAnswer.model_validate_json(raw)
            except ValidationError:
                try:  # a status the PO cannot read counts as "unknown", like the real PO's
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    status = value.get("status")
                    return HealthAnswer(status=status if isinstance(status, str) else "unknown")
        return None


_JSON = {"content-type": "application/json", "accept": "application/json"}
_ACCEPT_JSON = {"accept": "application/json"}
