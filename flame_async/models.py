"""Typed models: the public value types and the wire shapes of the FLAME node services."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Category",
    "LocalDP",
    "Message",
    "NodeRole",
    "NodeStatus",
    "Participant",
    "ResultInfo",
    "RunStatus",
    "SendReport",
]


class NodeRole(StrEnum):
    """The role the Hub gave a node in this analysis."""

    DEFAULT = "default"
    AGGREGATOR = "aggregator"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> NodeRole:
        """Map the broker's ``nodeType`` to a role; anything unexpected is ``UNKNOWN``."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.UNKNOWN


class RunStatus(StrEnum):
    """The run status a node reports on ``/healthz`` and with every shipped log."""

    STARTING = "starting"
    STARTED = "started"
    EXECUTING = "executing"
    EXECUTED = "executed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    STUCK = "stuck"

    @property
    def is_terminal(self) -> bool:
        """True for ``executed``, ``stopped`` and ``failed``: the run is over."""
        return self in (RunStatus.EXECUTED, RunStatus.STOPPED, RunStatus.FAILED)


class NodeStatus(StrEnum):
    """Answer of :meth:`FlameSDK.ask_status_nodes` for one peer."""

    ONLINE = "online"
    """The peer acknowledged a ping within the timeout."""
    OFFLINE = "offline"
    """The peer was heard from earlier in this run but did not answer now."""
    NOT_CONNECTED = "not_connected"
    """The peer has never been heard from in this run and did not answer."""


class Category(StrEnum):
    """Message categories with a meaning to the runtime; any other string is user-defined."""

    READY_CHECK = "ready_check"
    ANALYSIS_FINISHED = "analysis_finished"
    INTERMEDIATE_DATA = "intermediate_data"
    NODE_STATUS = "flame_async.node_status"
    """Sent by flame-async when a node ends with failure, so its peers stop waiting at once."""
    SETTLE = "flame_async.settle"
    """Sent by flame-async to tell a receiver which message numbers it gave up on, so the
    receiver stops holding later messages back for them (never handed over)."""


class Participant(BaseModel):
    """Another node of the analysis.

    Attributes:
        node_id: The node's id (the Hub node id).
        role: Its role in this analysis.
    """

    model_config = ConfigDict(frozen=True)

    node_id: str
    role: NodeRole


class Message(BaseModel):
    """A message handed to the analysis.

    Attributes:
        id: The sender's message id (unique per sender).
        sender: Node id of the sender.
        category: The category the sender chose.
        data: The payload: the JSON object the sender sent, without the reserved ``meta`` key.
        message_number: The sender's running message counter.
        time: When the sender created the message (timezone-aware).
        arrived_at: When this node received it (timezone-aware).
        reply_to: Id of the message this one answers, for replies.
        error: Set on a reply whose handler raised; the text of that error.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    sender: str
    category: str
    data: dict[str, Any]
    message_number: int
    time: datetime
    arrived_at: datetime
    reply_to: str | None = None
    error: str | None = None


_MESSAGE_FIELDS: Final = frozenset(Message.model_fields)
_set = object.__setattr__


def _received_message(
    *,
    id: str,  # noqa: A002 - the field's name
    sender: str,
    category: str,
    data: dict[str, Any],
    message_number: int,
    time: datetime,
    arrived_at: datetime,
    reply_to: str | None,
    error: str | None,
) -> Message:
    """The :class:`Message` ``Message.model_construct`` builds from these fields, already
    validated, at a third of its cost (a node builds one per message it receives).

    Every field is given, so every field counts as set. (pydantic's own ``model_construct``
    also looks up defaults and aliases field by field; ``tests/unit/test_models.py`` checks
    that both build the same message.)
    """
    message = Message.__new__(Message)
    _set(
        message,
        "__dict__",
        {
            "id": id,
            "sender": sender,
            "category": category,
            "data": data,
            "message_number": message_number,
            "time": time,
            "arrived_at": arrived_at,
            "reply_to": reply_to,
            "error": error,
        },
    )
    _set(message, "__pydantic_fields_set__", set(_MESSAGE_FIELDS))
    _set(message, "__pydantic_extra__", None)
    _set(message, "__pydantic_private__", None)
    return message


class SendReport(BaseModel):
    """Outcome of an acknowledged send.

    Attributes:
        message_id: Id of the message that was sent.
        acked: Receivers that acknowledged it: each has it, or will have it, handed over.
        missing: Receivers that did not acknowledge it; nothing more will happen for them.
        reasons: Why each missing receiver is missing (``{node_id: reason}``), e.g. no
            acknowledgement before the deadline, refused by the broker, refused by the
            receiver.
    """

    model_config = ConfigDict(frozen=True)

    message_id: str
    acked: tuple[str, ...]
    missing: tuple[str, ...]
    reasons: dict[str, str] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every receiver acknowledged."""
        return not self.missing


class ResultInfo(BaseModel):
    """What is known about a stored result (the original SDK design's fields).

    Attributes:
        result_id: The id to fetch it with (for global intermediate results the storage query
            string ``{object_id}?remote_node_id={uploader}``, as flamesdk passes it on).
        result_name: File name (final and tagged local results) or the format's name.
        node_id: The node that owns the stored object (uploader).
        analysis_id: The analysis it belongs to.
        result_size: Size in bytes, when known.
        result_time: When it was stored or announced (timezone-aware).
        result_owner: ``"self"`` for this node's results, else the owning node id.
        other: Anything else: ``format``, ``receiver``, ``tag``, ``url``, ``direction``.
    """

    model_config = ConfigDict(frozen=True)

    result_id: str
    result_name: str
    node_id: str
    analysis_id: str
    result_size: int | None = None
    result_time: datetime
    result_owner: str
    other: dict[str, Any] = Field(default_factory=dict)


class LocalDP(BaseModel):
    """Local differential privacy for a numeric final result (Laplace noise on the service).

    Attributes:
        epsilon: Privacy budget; smaller means more noise (scale = sensitivity / epsilon).
        sensitivity: How much one person's data can change the result.
    """

    model_config = ConfigDict(frozen=True)

    epsilon: float = Field(gt=0)
    sensitivity: float = Field(gt=0)
