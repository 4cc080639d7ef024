"""The sans-I/O node protocol: every messaging decision, events in, actions out.

:class:`NodeProtocol` owns numbering, de-duplication, per-sender order, how gaps close, acks
and their batching, peer lifecycle, category dispatch, reply and waiter matching and the
validation of webhook bodies. It never does I/O, reads a clock or touches an event loop; the
broker service (:mod:`flame_async.broker`) feeds it events with the time and performs the
actions it returns. Its tests drive it synchronously.
"""

from ._actions import (
    AcksPending,
    Action,
    AnalysisFinished,
    Fetch,
    Instant,
    PeerEnded,
    Post,
    PostFailure,
    PostKind,
    Rejection,
    RunHandler,
    Settled,
    Wake,
)
from ._core import NodeProtocol, ProtocolSettings, new_epoch
from ._mailbox import Mailbox, Waiter
from ._ordering import Arrival, SenderStream
from ._stored import STORED_KEY, stored_data, stored_reference
from ._wiretime import format_wire_time, parse_wire_time

__all__ = [
    "STORED_KEY",
    "AcksPending",
    "Action",
    "AnalysisFinished",
    "Arrival",
    "Fetch",
    "Instant",
    "Mailbox",
    "NodeProtocol",
    "PeerEnded",
    "Post",
    "PostFailure",
    "PostKind",
    "ProtocolSettings",
    "Rejection",
    "RunHandler",
    "SenderStream",
    "Settled",
    "Waiter",
    "Wake",
    "format_wire_time",
    "new_epoch",
    "parse_wire_time",
    "stored_data",
    "stored_reference",
]
