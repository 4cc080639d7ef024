"""What the local platform records while an analysis runs: deliveries and streamed logs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["DeliveryEvent", "DeliveryOutcome", "LogRecord"]

DeliveryOutcome = Literal["delivered", "dropped"]


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """The fate of one copy of a broker message (one recipient subscription).

    Attributes:
        sender: The sending node (the ``sub`` claim of its token), ``None`` if the token had none.
        recipient: The node the copy was addressed to.
        subscription_id: The webhook subscription it went to; ``None`` when the recipient had no
            subscription (the copy is then dropped without any attempt).
        category: ``message["meta"]["category"]`` when the message carries one.
        message_id: ``message["meta"]["id"]`` when the message carries one.
        size: Size of the delivered JSON body in bytes.
        outcome: ``"delivered"`` (the webhook answered 2xx) or ``"dropped"``.
        attempts: Webhook POSTs made (0 without a subscription).
        status: HTTP status of the last attempt; ``None`` if it never got an answer.
        reason: Why the copy was dropped; empty when delivered.
        sent_monotonic: ``time.monotonic()`` when the broker accepted the message.
        monotonic: ``time.monotonic()`` when the outcome was known.
        time: Wall-clock time (UTC) when the outcome was known.
    """

    sender: str | None
    recipient: str
    subscription_id: str | None
    category: str | None
    message_id: str | None
    size: int
    outcome: DeliveryOutcome
    attempts: int
    status: int | None
    reason: str
    sent_monotonic: float
    monotonic: float
    time: datetime


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log line a node streamed to the pod orchestrator (``POST /po/stream_logs``).

    Attributes:
        node_id: The node whose gateway received it.
        log: The log text (may contain newlines).
        log_type: ``emerg``, ``alert``, ``crit``, ``error``, ``warn``, ``notice``, ``info`` or
            ``debug``.
        status: The run status the node reported with the line.
        progress: The progress (0-100) the node reported with the line.
        monotonic: ``time.monotonic()`` at arrival.
        time: Wall-clock arrival time (UTC).
    """

    node_id: str
    log: str
    log_type: str
    status: str
    progress: int
    monotonic: float
    time: datetime
