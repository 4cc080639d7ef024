"""The pod orchestrator (PROTOCOL.md §5): log intake and the status loop per node.

``POST /po/stream_logs`` stores each log line and the node's reported status and progress. A loop
per node, every ``interval`` seconds, does what the real PO's status loop does: tell the node
its partners' statuses (``/partner_status``), read its ``/healthz`` and refresh its token shortly
before it expires (``/token_refresh``). The loop stops once the node's status is terminal.

Locally the ``/partner_status`` keys are node ids; the real Hub sends analysis-node record ids.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import anyio
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from ._core import PlatformCore
from ._node import LocalNode
from ._records import LogRecord
from ._service import bearer_auth, json_response

__all__ = ["TERMINAL_STATUSES", "PodOrchestrator"]

logger = logging.getLogger("flame_async.local.po")

TERMINAL_STATUSES = frozenset({"executed", "failed", "stopped"})
"""Statuses after which the PO stops polling a node."""

LogType = Literal["emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"]
RunStatus = Literal[
    "starting", "started", "executing", "executed", "stopping", "stopped", "failed", "stuck"
]


class _StreamLog(BaseModel):
    """Body of ``POST /po/stream_logs`` (the PO's ``CreateLogEntity``)."""

    model_config = ConfigDict(extra="ignore")

    log: str
    log_type: LogType
    analysis_id: str
    status: RunStatus
    progress: int = Field(ge=0, le=100)


@dataclass(slots=True)
class _NodeState:
    token: str
    logs: deque[LogRecord]
    status: str | None = None
    progress: int = 0
    health: str | None = None
    token_refreshes: int = 0


class PodOrchestrator:
    """The PO of one local analysis.

    Args:
        core: The running platform.
        interval: Seconds between two status-loop rounds of a node.
        healthz_attempts: Tries of ``GET /healthz`` per round before the node counts as
            unreachable.
        max_logs: Log lines kept per node; the oldest go first.
    """

    prefixes = ("/po",)

    def __init__(
        self,
        core: PlatformCore,
        *,
        interval: float = 2.0,
        healthz_attempts: int = 3,
        max_logs: int = 100_000,
    ) -> None:
        self._core = core
        self._interval = interval
        self._healthz_attempts = healthz_attempts
        self._healthz_pause = min(1.0, interval / 4)
        self._timeout = aiohttp.ClientTimeout(total=max(1.0, min(interval, 10.0)))
        self._refresh_below = 2 * interval + 1
        self._states = {
            node_id: _NodeState(token=node.env["KEYCLOAK_TOKEN"], logs=deque(maxlen=max_logs))
            for node_id, node in core.nodes.items()
        }

    # -- what the platform reads ---------------------------------------------------------------

    def logs(self, node_id: str) -> list[LogRecord]:
        """The log lines ``node_id`` streamed, oldest first."""
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

    def token(self, node_id: str) -> str:
        """The node's current token (the last one sent to ``/token_refresh``)."""
        return self._states[node_id].token

    # -- gateway -------------------------------------------------------------------------------

    def mount(self, app: web.Application, node: LocalNode) -> None:
        """Serve ``POST /po/stream_logs`` for ``node``."""
        po = web.Application(middlewares=[bearer_auth(self._core.issuer, self._core.analysis_id)])

        async def stream_logs(request: web.Request) -> web.Response:
            return self._stream_logs(node.node_id, await request.read())

        po.router.add_post("/stream_logs", stream_logs)
        app.add_subapp("/po", po)

    def _stream_logs(self, node_id: str, body: bytes) -> web.Response:
        try:
            entry = _StreamLog.model_validate_json(body)
        except ValidationError as exc:
            errors = [
                {**error, "loc": ["body", *error["loc"]]} for error in exc.errors(include_url=False)
            ]
            return web.Response(
                body=orjson.dumps({"detail": errors}, default=str),
                status=422,
                content_type="application/json",
            )
        state = self._states[node_id]
        state.logs.append(
            LogRecord(
                node_id=node_id,
                log=entry.log,
                log_type=entry.log_type,
                status=entry.status,
                progress=entry.progress,
                monotonic=time.monotonic(),
                time=datetime.now(UTC),
            )
        )
        state.status = entry.status
        state.progress = max(state.progress, entry.progress)
        logger.debug("%s [%s] %s", node_id, entry.log_type, entry.log)
        return json_response(None)

    # -- status loop ---------------------------------------------------------------------------

    async def watch(self, node: LocalNode) -> None:
        """Run the status loop of ``node`` until its status is terminal.

        A round that fails unexpectedly is logged and the loop goes on.

        Cancellation: stops the loop at once (the platform cancels it on exit).
        """
        api = URL(node.api_url)
        state = self._states[node.node_id]
        while state.status not in TERMINAL_STATUSES:
            await anyio.sleep(self._interval)
            try:
                await self._round(node.node_id, api, state)
            except Exception:  # loop supervisor: one bad round must not end the loop
                logger.warning("status round for %s failed", node.node_id, exc_info=True)

    async def _round(self, node_id: str, api: URL, state: _NodeState) -> None:
        partners = {
            other: self._states[other].status for other in self._core.nodes if other != node_id
        }
        await self._post(api / "partner_status", {"partner_status": partners})

        reply = await self._healthz(api)
        if reply is None:
            state.health = "unreachable"
            return
        status, remaining = reply
        state.health = status
        if status in TERMINAL_STATUSES and state.status not in TERMINAL_STATUSES:
            state.status = status
        if remaining < self._refresh_below:
            token = self._core.issuer.mint(node_id)
            if await self._post(api / "token_refresh", {"token": token}):
                state.token = token
                state.token_refreshes += 1

    async def _post(self, url: URL, body: dict[str, Any]) -> bool:
        """POST ``body``; True on a 2xx answer. Failures are normal while a node starts."""
        try:
            async with self._core.session.post(
                url, data=orjson.dumps(body), headers=_JSON, timeout=self._timeout
            ) as response:
                await response.read()
                ok = 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("PO: POST %s failed: %r", url, exc)
            return False
        if not ok:
            logger.debug("PO: POST %s answered %d", url, response.status)
        return ok

    async def _healthz(self, api: URL) -> tuple[str, float] | None:
        """``(status, token_remaining_time)`` from ``/healthz``, or None if it never answered."""
        for attempt in range(self._healthz_attempts):
            if attempt:
                await anyio.sleep(self._healthz_pause)
            try:
                async with self._core.session.get(
                    api / "healthz", headers=_ACCEPT_JSON, timeout=self._timeout
                ) as response:
                    if response.status != 200:
                        continue
                    body = orjson.loads(await response.read())
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                logger.debug("PO: GET %s/healthz failed: %r", api, exc)
                continue
            if not isinstance(body, dict):
                continue
            status = body.get("status")
            remaining = body.get("token_remaining_time")
            return (
                status if isinstance(status, str) else "unknown",
                remaining if isinstance(remaining, int | float) else 0.0,
            )
        return None


_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
_ACCEPT_JSON = {"Accept": "application/json"}
