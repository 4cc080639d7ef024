"""What goes into the protocol core (a clock reading, post outcomes) and what comes out (actions).

Every action is a plain frozen value: the shell (:mod:`flame_async.broker`) performs it, tests
look at it. None of them holds a coroutine, a future or a socket.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import Enum
from typing import Any, TypeAlias

from ..errors import PeerFailed
from ..models import Message, SendReport

__all__ = [
    "AcksPending",
    "Action",
    "AnalysisFinished",
    "Fetch",
    "Instant",
    "PeerEnded",
    "Post",
    "PostFailure",
    "PostKind",
    "Rejection",
    "RunHandler",
    "Settled",
    "Wake",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Instant:
    """A clock reading handed to the core with every event.

    Attributes:
        mono: Monotonic seconds (all timers).
        wall: The wall-clock time, timezone-aware (message times on the wire).
    """

    mono: float
    wall: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """A webhook body the node refuses, with the HTTP status to answer.

    Attributes:
        status: The 4xx (or 503 while starting) status.
        key: A short, stable name of the reason (counted per key).
        reason: What was wrong, for the sender's logs.
    """

    status: int
    key: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class PostFailure:
    """Why a POST to the broker did not get a 2xx.

    Attributes:
        retryable: False when the broker refused the message itself (a 4xx): sending it again
            cannot help. True for connection failures, timeouts and 5xx.
        reason: What happened, for the send report.
    """

    retryable: bool
    reason: str


class PostKind(Enum):
    """What a broker POST carries."""

    MESSAGE = "message"
    """An original message (first try or a resend)."""
    ACK = "ack"
    """Acknowledgements (or a refusal) for a sender."""
    NOTICE = "notice"
    """A settle notice: sequence numbers a receiver should stop waiting for."""


@dataclasses.dataclass(frozen=True, slots=True)
class Post:
    """POST ``{"recipients": recipients, "message": body}`` to the broker.

    Report the outcome of ``MESSAGE`` posts with :meth:`NodeProtocol.post_done` or
    :meth:`NodeProtocol.post_failed`; acks and notices are best effort.
    """

    post_id: int
    kind: PostKind
    recipients: tuple[str, ...]
    body: dict[str, Any]
    message_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """A send is over: every receiver acknowledged or was given up on.

    ``never_posted`` is true when no POST of the message ever reached the broker (the shell
    then raises the last transport error instead of returning the report).
    """

    report: SendReport
    never_posted: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Wake:
    """Waiters that may find something now (a message or an ended peer)."""

    waiter_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RunHandler:
    """Run the registered handler of ``message.category`` for this request."""

    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class AcksPending:
    """Acknowledgements are waiting; call :meth:`NodeProtocol.flush_acks` soon (not now:
    acks that arrive meanwhile then share one POST)."""


@dataclasses.dataclass(frozen=True, slots=True)
class AnalysisFinished:
    """A peer announced ``analysis_finished``."""

    node_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class PeerEnded:
    """A peer ended (finished, failed or stopped), or this node adopted a terminal status
    (``failure.node_id`` is None)."""

    failure: PeerFailed


@dataclasses.dataclass(frozen=True, slots=True)
class Fetch:
    """Read a large message's payload from the storage service, where its sender put it.

    The message stays queued, unseen, until :meth:`NodeProtocol.fetched` brings its data (or
    the error); later messages of the same sender wait behind it.

    Attributes:
        message: The message as it arrived (its ``data`` is the storage reference).
        result_id: The stored object for this node: ``{object_id}?remote_node_id={sender}``.
        size: The payload's size in bytes, as its sender announced it.
    """

    message: Message
    result_id: str
    size: int


Action: TypeAlias = (
    Post | Settled | Wake | RunHandler | AcksPending | AnalysisFinished | PeerEnded | Fetch
)
"""Anything the core asks the shell to do."""
