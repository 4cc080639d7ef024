"""Every request and response body of the node services, typed once (PROTOCOL §2-§5).

Both sides use these: the SDK's services to build what they send and to read what they get,
and :mod:`flame_async.local` to read what it is sent and to build its answers. Field names are
the wire's (``nodeId``, ``webhookUrl``) through aliases; attributes are snake_case. Unknown
fields are ignored on input unless a model says otherwise (the message ``meta`` keeps them, so
that a message can be acknowledged verbatim).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr

__all__ = [
    "ANNOUNCE_PATH",
    "BLOCKED_PATH",
    "LOG_TYPES",
    "ApiAnnouncement",
    "BlockReport",
    "BroadcastRequest",
    "DatastoreList",
    "HealthAnswer",
    "KongService",
    "LogType",
    "PartnerStatusAnswer",
    "PartnerStatusRequest",
    "PoRunStatus",
    "SendRequest",
    "StreamInfo",
    "StreamLog",
    "Subscription",
    "SubscriptionRequest",
    "TagAnswer",
    "TagEntry",
    "TaggedAnswer",
    "TaggedEntry",
    "TagsAnswer",
    "TokenRefreshAnswer",
    "TokenRefreshRequest",
    "UploadAnswer",
    "WireMeta",
    "WireParticipant",
    "WireParticipants",
]


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The body as sent: wire names, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True)


# -- broker (PROTOCOL §2) ------------------------------------------------------------------------


class WireParticipant(_Wire):
    """One participant as the broker lists it: ``{"nodeId", "nodeType"}``."""

    node_id: StrictStr = Field(alias="nodeId", min_length=1)
    node_type: StrictStr | None = Field(default=None, alias="nodeType")


class WireParticipants(RootModel[list[WireParticipant]]):
    """``GET /analyses/{id}/participants``: every participant, the caller included."""


class SendRequest(_Wire):
    """``POST /analyses/{id}/messages``: the message goes to each recipient verbatim."""

    recipients: list[StrictStr] = Field(min_length=1)
    message: Any

    @staticmethod
    def encode(recipients: Sequence[str], message: Any) -> bytes:
        """The body for trusted values, serialised straight away (the message hot path)."""
        return b'{"recipients":%b,"message":%b}' % (orjson.dumps(recipients), orjson.dumps(message))


class BroadcastRequest(_Wire):
    """``POST /analyses/{id}/messages/broadcast``: to every participant but the sender."""

    message: Any

    @staticmethod
    def encode(message: Any) -> bytes:
        """The body for a trusted value, serialised straight away (the message hot path)."""
        return b'{"message":%b}' % orjson.dumps(message)


class SubscriptionRequest(_Wire):
    """``POST /analyses/{id}/messages/subscriptions``."""

    webhook_url: StrictStr = Field(alias="webhookUrl")


class Subscription(_Wire):
    """A webhook subscription as the broker answers it."""

    subscription_id: StrictStr = Field(alias="subscriptionId", min_length=1)
    analysis_id: StrictStr = Field(alias="analysisId")
    webhook_url: StrictStr = Field(alias="webhookUrl")


# -- the message envelope (PROTOCOL §2.7, §2.8) --------------------------------------------------


class StreamInfo(BaseModel):
    """flame-async's ordering extension inside ``meta`` (ignored by flamesdk).

    ``seq`` numbers the messages of one sender to each receiver from 1; ``floor`` tells each
    receiver that every lower number has been settled by the sender (acknowledged or given up),
    so a gap below it will never be filled. ``epoch`` changes when the sender restarts.

    Both maps may hold the key ``"*"``: the value for every receiver the map does not name.
    A fan-out to many receivers whose numbers agree (a star round) carries one entry, not one
    per receiver, so each copy stays the same size however many nodes take part.
    """

    model_config = ConfigDict(extra="ignore")

    epoch: StrictStr
    seq: dict[str, StrictInt] = Field(default_factory=dict)
    floor: dict[str, StrictInt] = Field(default_factory=dict)

    def seq_for(self, node_id: str) -> int | None:
        """The number of this message to ``node_id`` (None: not numbered for it)."""
        seq = self.seq
        return seq.get(node_id, seq.get(EVERY_RECEIVER))

    def floor_for(self, node_id: str) -> int | None:
        """The sender's floor to ``node_id`` (None: not told)."""
        floor = self.floor
        return floor.get(node_id, floor.get(EVERY_RECEIVER))


EVERY_RECEIVER: Final = "*"
"""The key of a ``stream`` map's value for every receiver it does not name."""


def compact_numbers(numbers: Mapping[str, int]) -> dict[str, int]:
    """``numbers`` (per receiver) as a ``stream`` map: the most common value under ``"*"`` and
    only the receivers whose number differs by name. One receiver keeps its name."""
    if len(numbers) < 2:
        return dict(numbers)
    common, count = Counter(numbers.values()).most_common(1)[0]
    if count == 1:
        return dict(numbers)
    compact = {EVERY_RECEIVER: common}
    compact.update((r, n) for r, n in numbers.items() if n != common)
    return compact


class WireMeta(BaseModel):
    """The ``meta`` object of a flamesdk 0.6 message (PROTOCOL §2.7), plus optional extensions.

    Unknown fields are kept so that a message can be acknowledged verbatim.
    """

    model_config = ConfigDict(extra="allow")

    id: StrictStr = Field(min_length=1)
    sender: StrictStr = Field(min_length=1)
    category: StrictStr
    akn_id: StrictStr | None = None
    type: StrictStr = "outgoing"
    status: StrictStr = "unread"
    created_at: StrictStr | None = None
    arrived_at: StrictStr | None = None
    number: StrictInt = 0
    stream: StreamInfo | None = None
    reply_to: StrictStr | None = None
    error: StrictStr | None = None
    acks: list[StrictStr] | None = None
    """flame-async only: further message ids this ack covers (acks coalesced per peer)."""
    acked: list[StrictStr] | None = None
    """flame-async only, on originals to one receiver: ids of the receiver's messages that
    this one acknowledges (an answer carries the acknowledgement of what it answers)."""
    ordered: bool | None = None
    """flame-async only, on acks: the receiver keeps per-sender order (it reads ``stream``)."""
    refused: StrictStr | None = None
    """flame-async only, on acks: the receiver did not take the message, and why."""


# -- storage (PROTOCOL §3) -----------------------------------------------------------------------


class UploadAnswer(_Wire):
    """``PUT /intermediate`` and ``PUT /local``: where the object is (``object_id`` on SS)."""

    url: StrictStr
    object_id: StrictStr | None = None


class TagEntry(_Wire):
    """One tag of the project."""

    name: StrictStr
    url: StrictStr


class TagsAnswer(_Wire):
    """``GET /local/tags``."""

    tags: list[TagEntry] = Field(default_factory=list)


class TaggedEntry(_Wire):
    """One object under a tag."""

    filename: StrictStr = ""
    url: StrictStr


class TaggedAnswer(_Wire):
    """``GET /local/tags/{tag}``."""

    results: list[TaggedEntry] = Field(default_factory=list)


class TagAnswer(_Wire):
    """``POST /local/tags``."""

    filename: StrictStr
    url: StrictStr


# -- hub-adapter (PROTOCOL §4.1) -----------------------------------------------------------------


class KongService(BaseModel):
    """A Kong Service object as the hub-adapter lists it (unknown fields are kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: StrictStr | None = None
    name: StrictStr | None = None
    tags: list[StrictStr] | None = None
    path: StrictStr | None = None
    protocol: StrictStr | None = None
    host: StrictStr | None = None
    port: int | None = None


class DatastoreList(_Wire):
    """``GET /kong/datastore/{project_id}``: the project's data stores."""

    data: list[KongService] = Field(default_factory=list)
    next: StrictStr | None = None


# -- pod orchestrator and the node API (PROTOCOL §5) ---------------------------------------------

LogType = Literal["emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"]
LOG_TYPES: tuple[LogType, ...] = (
    "emerg",
    "alert",
    "crit",
    "error",
    "warn",
    "notice",
    "info",
    "debug",
)
PoRunStatus = Literal[
    "starting", "started", "executing", "executed", "stopping", "stopped", "failed", "stuck"
]


class StreamLog(_Wire):
    """``POST /po/stream_logs`` (the PO's ``CreateLogEntity``; every field is required)."""

    log: str
    log_type: LogType
    analysis_id: str
    status: PoRunStatus
    progress: int = Field(ge=0, le=100)


class HealthAnswer(_Wire):
    """``GET /healthz`` of the node API (``waiting_for`` is flame-async's, the PO ignores it)."""

    status: str
    token_remaining_time: float = 0
    waiting_for: list[str] | None = None


class TokenRefreshRequest(_Wire):
    """``POST /token_refresh``."""

    token: StrictStr


class TokenRefreshAnswer(_Wire):
    """The node API's answer to a token refresh."""

    message: str = "Token refreshed successfully"


class PartnerStatusRequest(_Wire):
    """``POST /partner_status``: the other nodes' statuses, keyed by analysis-node id."""

    partner_status: dict[str, StrictStr | None]


class PartnerStatusAnswer(_Wire):
    """The node API's answer to a partner-status push: its own status."""

    status: str


ANNOUNCE_PATH: Final = "/local-platform/node-api"
"""Local platform only: where a node tells its gateway which port its API got."""
BLOCKED_PATH: Final = "/local-platform/node-blocked"
"""Local platform only: where a node's watchdog says its event loop is blocked."""


class BlockReport(_Wire):
    """Local platform only: a node's event loop is (or was) blocked, and where."""

    seconds: float = Field(ge=0)
    location: str = ""
    ongoing: bool = True


class ApiAnnouncement(_Wire):
    """Local platform only: where a node's API listens (``PUT /local-platform/node-api``)."""

    port: int = Field(ge=1, le=65535)
