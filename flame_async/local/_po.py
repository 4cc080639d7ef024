"""The pod orchestrator (PROTOCOL.md §5): log intake and the status loop of every node.

``POST /po/stream_logs`` stores each log line and the node's reported status and progress. Every
``interval`` seconds the status loop does for each node what the real PO's does: tell the node
its partners' statuses (``/partner_status``), read its ``/healthz`` and refresh its token shortly
before it expires (``/token_refresh``). A node gets no more rounds once its status is terminal.

The loop is one scheduler task, not a task per node, so that an interval costs O(N) with
10 000 nodes in one process: the rounds go out in groups of about 64 spread over the interval,
at most 128 run at once (in short-lived tasks), and the statuses are encoded once per change,
each node's ``/partner_status`` body cut from that one encoding (its own entry left out).

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

import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import anyio
import orjson
from pydantic import ValidationError

from .._transport import Request, Response
from .._wire import HealthAnswer, StreamLog
from ..errors import InvalidArgument
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
from ._records import LogRecord, newest

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
_MAX_ROUNDS_AT_ONCE: Final = 128  # half the platform's HTTP connections; the rest deliver
# The scheduler wakes often enough for about this many rounds each time (a wake-up costs more
# than a round in memory), but at most every _MIN_TICK seconds and at least once an interval.
_ROUNDS_PER_TICK: Final = 64
_MIN_TICK: Final = 0.05
FULL_PARTNER_STATUS_UP_TO: Final = 256
"""Up to this many nodes, ``/partner_status`` lists every other node, as the real PO does;
above, only those in a status a node acts on (see ``_ACTED_ON``): the SDKs adopt a partner's
ended status and ignore the others, and a full list to each of N nodes would cost O(N^2) per
interval (10^8 entries every 10 s at 10,000 nodes)."""
_ACTED_ON: Final = frozenset({"executed", "stopped", "stopping", "failed"})
_PARTNERS_HEAD: Final = b'{"partner_status":{'
_PARTNERS_TAIL: Final = b"}}"


@dataclass(slots=True)
class _NodeState:
    token: str
    logs: deque[LogRecord]
    status: str | None = None
    progress: int = 0
    health: str | None = None
    token_refreshes: int = 0
    kept_chars: int = 0  # of the log texts in ``logs``
    logged: int = 0  # entries ever stored: the number of the last one (``logs_since``)
    in_round: bool = False  # a status round is queued or running


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
        # each node's `"id":status` JSON, updated as statuses change; joined at most once a tick
        self._index = {node_id: i for i, node_id in enumerate(self._states)}
        self._entries = [_entry(node_id, None) for node_id in self._states]
        self._entries_changed = True
        self._acted_on: dict[str, bytes] = {}  # the entries of nodes in a status in _ACTED_ON
        self._joined = memoryview(b"")
        self._offsets: list[int] = []  # _offsets[i]: bytes of the entries before entry i
        self._join_entries()
        self._changes = 0  # log entries and status changes so far, every node's
        self._changed: dict[str, int] = {}  # node: number of its last change; oldest first
        self._backlog: deque[str] = deque()  # rounds due while _MAX_ROUNDS_AT_ONCE ran
        self._rounds_running = 0

    # -- what the platform reads ---------------------------------------------------------------

    def logs(self, node_id: str) -> list[LogRecord]:
        """The log entries ``node_id`` streamed, oldest first (the last ones the PO keeps)."""
        return list(self._states[node_id].logs)

    def logs_since(self, node_id: str, cursor: int) -> tuple[list[LogRecord], int]:
        """The log entries ``node_id`` streamed after entry number ``cursor``, and the new cursor.

        Entries are numbered 1, 2, ... as they arrive; the answer costs O(new entries). When
        more arrived than are kept, the kept ones are returned.

        Raises:
            KeyError: There is no such node.
            InvalidArgument: ``cursor`` is negative.
        """
        state = self._states[node_id]
        if cursor < 0:
            raise InvalidArgument(f"a log cursor is 0 or more, got {cursor}")
        logs, logged = state.logs, state.logged
        return newest(logs, logged - cursor), logged

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

    def changed_since(self, cursor: int) -> tuple[list[str], int]:
        """The nodes that streamed a log entry or changed status after change number ``cursor``
        (least recently changed first), and the new cursor.

        Changes are numbered 1, 2, ... across all nodes; the answer costs O(nodes changed).

        Raises:
            InvalidArgument: ``cursor`` is negative.
        """
        if cursor < 0:
            raise InvalidArgument(f"a change cursor is 0 or more, got {cursor}")
        changed = self._changed
        found = []
        for node_id in reversed(changed):
            if changed[node_id] <= cursor:
                break
            found.append(node_id)
        found.reverse()
        return found, self._changes

    def _touch(self, node_id: str) -> None:
        self._changes += 1
        self._changed.pop(node_id, None)  # to the end: the dict stays in order of changes
        self._changed[node_id] = self._changes

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
        state.logged += 1
        state.kept_chars += len(text)
        while state.kept_chars > self._max_log_chars and len(logs) > 1:
            state.kept_chars -= len(logs.popleft().log)
        self._set_status(node_id, state, entry.status)
        self._touch(node_id)
        state.progress = max(state.progress, entry.progress)
        logger.debug("%s [%s] %s", node_id, entry.log_type, text)
        return json_response(None)

    # -- status loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the status loop of every node until each node's status is terminal.

        One task schedules the rounds: each node has its first round ``interval`` seconds
        after the start or a little later, then one every ``interval`` seconds. Up to 64 nodes
        go all at once; more are split into groups of about 64 spread over the interval (the
        scheduler sleeps at least 0.05 s between wake-ups, or an interval if that is shorter).
        At most 128 rounds run at once, each in a short-lived task that goes on with the next
        waiting round; a node whose round has not ended when the next is due skips that one. A
        node whose status is terminal gets no more rounds. A round that fails unexpectedly is
        logged and the loop goes on.

        Cancellation: stops the loop at once, rounds in flight included (the platform cancels
        it on exit).
        """
        order = list(self._states)
        if not order:
            return
        interval = self._interval
        start = anyio.current_time()
        n = len(order)
        tick = min(interval, max(_MIN_TICK, interval * _ROUNDS_PER_TICK / n))
        slots = math.ceil(interval / tick - 1e-9)  # groups per interval
        # (when, node index): sorted, hence a heap
        due = [(start + interval + (i * slots // n) * tick, i) for i in range(n)]
        async with anyio.create_task_group() as tg:
            woke = -math.inf
            while due:
                await anyio.sleep_until(max(due[0][0], woke + tick))
                now = woke = anyio.current_time()
                self._join_entries()
                while due and due[0][0] <= now:
                    at, i = due[0]
                    node_id = order[i]
                    state = self._states[node_id]
                    if state.status in TERMINAL_STATUSES:
                        heapq.heappop(due)
                        continue
                    if not state.in_round:
                        state.in_round = True
                        if self._rounds_running < _MAX_ROUNDS_AT_ONCE:
                            self._rounds_running += 1
                            tg.start_soon(self._rounds, node_id, name="PO status round")
                        else:
                            self._backlog.append(node_id)
                    at += interval
                    if at <= now:  # the loop fell behind: skip what was missed, keep the phase
                        at += interval * (math.floor((now - at) / interval) + 1)
                    heapq.heapreplace(due, (at, i))

    async def _rounds(self, node_id: str) -> None:
        """Run the round of ``node_id``, then those waiting in the backlog, if any."""
        try:
            while True:
                state = self._states[node_id]
                try:
                    if state.status not in TERMINAL_STATUSES:
                        await self._round(node_id, state)
                except Exception:  # loop supervisor: one bad round must not end the loop
                    logger.warning("status round for %s failed", node_id, exc_info=True)
                finally:
                    state.in_round = False
                if not self._backlog:
                    return
                node_id = self._backlog.popleft()
        finally:
            self._rounds_running -= 1

    async def _round(self, node_id: str, state: _NodeState) -> None:
        await self._post(node_id, "/partner_status", self._partner_body(node_id))

        reply = await self._healthz(node_id)
        if reply is None:
            state.health = "unreachable"
            return
        state.health = reply.status
        if reply.status in TERMINAL_STATUSES and state.status not in TERMINAL_STATUSES:
            self._set_status(node_id, state, reply.status)
            self._touch(node_id)
        if reply.token_remaining_time < self._refresh_below:
            token = self._core.issuer.mint(node_id)
            if await self._post(node_id, "/token_refresh", orjson.dumps({"token": token})):
                state.token = token
                state.token_refreshes += 1

    def _set_status(self, node_id: str, state: _NodeState, status: str) -> None:
        if state.status != status:
            state.status = status
            entry = _entry(node_id, status)
            self._entries[self._index[node_id]] = entry
            self._entries_changed = True
            if status in _ACTED_ON:
                self._acted_on[node_id] = entry
            else:
                self._acted_on.pop(node_id, None)

    def _join_entries(self) -> None:
        """Encode every node's status once more if one changed (C-level joins, O(N))."""
        if not self._entries_changed:
            return
        self._entries_changed = False
        self._joined = memoryview(b",".join(self._entries))
        self._offsets = list(itertools.accumulate(map(len, self._entries), initial=0))

    def _partner_body(self, node_id: str) -> bytes:
        """``{"partner_status": {...}}`` with every other node's status as last joined; above
        :data:`FULL_PARTNER_STATUS_UP_TO` nodes only the partners in a status a node acts on
        (ended or stopping), so that an interval stays O(N) and not O(N^2)."""
        if len(self._entries) > FULL_PARTNER_STATUS_UP_TO:
            others = [entry for other, entry in self._acted_on.items() if other != node_id]
            return b"".join((_PARTNERS_HEAD, b",".join(others), _PARTNERS_TAIL))
        i = self._index[node_id]
        start = self._offsets[i] + i  # i commas before entry i
        end = self._offsets[i + 1] + i
        joined = self._joined
        if i == 0:  # leave out the entry and the comma after it (if any)
            return b"".join((_PARTNERS_HEAD, joined[end + 1 :], _PARTNERS_TAIL))
        # ... or the comma before it
        return b"".join((_PARTNERS_HEAD, joined[: start - 1], joined[end:], _PARTNERS_TAIL))

    async def _post(self, node_id: str, path: str, body: bytes) -> bool:
        """POST the JSON ``body`` to the node's API; True on a 2xx answer. Failures are normal
        while a node starts."""
        request = Request("POST", path, headers=_JSON, body=body)
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


def _entry(node_id: str, status: str | None) -> bytes:
    """``"node_id":status`` as in the JSON object of ``/partner_status``."""
    return orjson.dumps(node_id) + b":" + orjson.dumps(status)


_JSON = {"content-type": "application/json", "accept": "application/json"}
_ACCEPT_JSON = {"accept": "application/json"}
