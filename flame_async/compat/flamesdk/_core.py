"""flamesdk 0.6's ``FlameCoreSDK`` on flame-async's runtime.

One :class:`~flame_async.FlameSDK` runs on an event loop in a background thread (an anyio
blocking portal, a daemon thread); every method of :class:`FlameCoreSDK` is one call through
the portal and blocks the caller until it is done. The names, arguments and return shapes are
flamesdk 0.6's (``flamesdk/flame_core.py``); what happens underneath is flame-async's:
event-driven waits instead of 1 s polling, resends with backoff, fail-fast on failed peers,
typed intermediate data between flame-async nodes.

Where flamesdk's behaviour is a bug, this layer does what the caller means instead; the
differences are listed in ``docs/howto/migrating.md`` ("The flamesdk compatibility layer").
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import datetime as _dt
import io
import logging
import math
import pickle
import re
import secrets
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final, Literal, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ...config import FlameConfig, node_environ, node_transport
from ...data import FhirClient, S3Client
from ...errors import FlameError, InvalidArgument, PeerFailed
from ...models import Message as _Message
from ...models import NodeRole
from ...sdk import FlameSDK
from ._colocate import colocation_for
from ._ending import AnalysisEnded, raise_in_thread

__all__ = [
    "FlameCoreSDK",
    "FlameCoreSDKError",
    "Message",
    "NodeConfig",
    "close_thread_instances",
    "use_host_portal",
]

log = logging.getLogger("flame_async.compat.flamesdk")

T = TypeVar("T")

FOREVER: Final = 365 * 24 * 3600.0
"""What flamesdk's ``timeout=None`` ("wait indefinitely") becomes: a year. A run ends long
before (the runner's timeout, a failed peer, or the analysis finishing)."""

_CLOSE_TIMEOUT: Final = 15.0
"""Longest time closing waits for the node's shutdown steps (status, logs, unsubscribe)."""

_LOG_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "normal": logging.INFO,
    "notice": 25,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "alert": 33,
    "emerg": 36,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
}
"""flamesdk's log types and the ``logging`` levels they ship to the PO with."""

_TAG: Final = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class FlameCoreSDKError(FlameError, RuntimeError):
    """A call that flamesdk answers by logging an error and sleeping 1000 s fails here at
    once: invalid arguments, ``flame_log(..., log_type="error")``, a failed start-up."""


class NodeConfig:
    """flamesdk's ``config`` attribute: the node's identity, and ``finished``.

    Attributes:
        analysis_id: The analysis id.
        project_id: The project id.
        node_id: This node's id.
        node_role: ``default`` or ``aggregator``.
        nginx_name: The node gateway's host name (``nginx-{DEPLOYMENT_NAME}``).
        keycloak_token: The token the node started with.
        data_source_token: The data proxy's key.
        finished: True once the analysis finished (this node announced or received
            ``analysis_finished``).
    """

    def __init__(self, config: FlameConfig, node_id: str, role: str) -> None:
        self.analysis_id = config.analysis_id
        self.project_id = config.project_id
        self.node_id = node_id
        self.node_role = role
        self.nginx_name = f"nginx-{config.deployment_name}"
        self.keycloak_token = config.keycloak_token.get_secret_value()
        self.data_source_token = config.data_source_token.get_secret_value()
        self.finished = False

    def __repr__(self) -> str:
        return (
            f"NodeConfig(analysis_id={self.analysis_id!r}, node_id={self.node_id!r}, "
            f"node_role={self.node_role!r}, finished={self.finished})"
        )


class Message:
    """A received message in flamesdk's shape.

    Attributes:
        body: The sender's dict plus flamesdk's ``meta`` (``type``, ``category``, ``id``,
            ``akn_id``, ``status``, ``sender``, ``created_at``, ``arrived_at``, ``number``).
        recipients: ``[sender]``, as flamesdk sets it for incoming messages.
    """

    def __init__(self, message: _Message, node_id: str) -> None:
        self.message = message
        """The flame-async :class:`~flame_async.Message` underneath."""
        self.body: dict[str, Any] = {
            **message.data,
            "meta": {
                "type": "incoming",
                "category": message.category,
                "id": message.id,
                "akn_id": node_id,
                "status": "unread",
                "sender": message.sender,
                "created_at": str(message.time.astimezone().replace(tzinfo=None)),
                "arrived_at": str(message.arrived_at.astimezone().replace(tzinfo=None)),
                "number": message.message_number,
            },
        }
        self.recipients = [message.sender]

    def set_read(self) -> None:
        """Mark the message as read."""
        self.body["meta"]["status"] = "read"

    def __repr__(self) -> str:
        meta = self.body["meta"]
        return (
            f"<Message {meta['id']} from {meta['sender']} ({meta['category']}, {meta['status']})>"
        )


_HOST_PORTAL: ContextVar[BlockingPortal | None] = ContextVar(
    "flame_async_compat_portal", default=None
)


@contextlib.contextmanager
def use_host_portal(portal: BlockingPortal) -> Iterator[None]:
    """Make every ``FlameCoreSDK`` created in the current context (and threads started with a
    copy of it) run its ``FlameSDK`` on ``portal``'s event loop instead of a loop of its own.

    The in-process runner does this: its nodes then share the loop of the local platform, as
    native in-process nodes do, instead of crossing threads for every request (see
    ``benchmarks/compat.py``). The portal's owner keeps it running until the nodes closed.
    """
    token = _HOST_PORTAL.set(portal)
    try:
        yield
    finally:
        _HOST_PORTAL.reset(token)


_instances: dict[int, list[FlameCoreSDK]] = {}
_instances_lock = threading.Lock()


def close_thread_instances(thread_id: int, exc: BaseException | None = None) -> None:
    """Close every :class:`FlameCoreSDK` created in thread ``thread_id`` (the runner calls it
    when an in-process node's analysis thread ends); ``exc`` is how it ended."""
    with _instances_lock:
        owned = _instances.pop(thread_id, [])
    for flame in owned:
        flame.close(exc)


class _Reply:
    """The outcome of one call, handed from the node's loop to the calling thread: the
    thread blocks on ``done`` (acquired), the loop releases it once ``value`` or ``error`` is
    set (only ever on the loop's thread, once)."""

    __slots__ = ("done", "error", "given", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.given = False
        self.value: Any = None
        self.error: BaseException | None = None

    def give(self) -> None:
        """Wake the calling thread (the first time only)."""
        if not self.given:
            self.given = True
            self.done.release()

    def ended(self, task: asyncio.Task[None]) -> None:
        """The call's task is done: a task cancelled before it ran never gave an outcome."""
        if not self.given:
            self.error = asyncio.CancelledError()
            self.give()


class _Cancelled:
    """What a portal call returns when the node ended while it waited."""


_CANCELLED: Final = _Cancelled()


class FlameCoreSDK:
    """flamesdk 0.6's ``FlameCoreSDK``, on flame-async underneath.

    The constructor joins the analysis (as flamesdk's does) and returns when the node is
    ready; :meth:`close` (also: the end of a ``with`` block, or interpreter exit) leaves it.
    Every method blocks its caller, as flamesdk's do, and may be called from any thread but
    not from a running event loop's thread.

    When the analysis finishes on this node (it calls :meth:`analysis_finished`, or receives
    the aggregator's ``analysis_finished``), the node leaves the analysis with run status
    ``executed`` and the thread that created this object is ended with
    :class:`~flame_async.compat.flamesdk.AnalysisEnded` (a ``SystemExit(0)``) at once if it is
    running the analysis's own code, or when its current call returns: what deleting the pod
    does on FLAME, and what ends ``StarModel``'s final ``while True: pass``.

    Args:
        aggregator_requires_data: Load data sources on the aggregator too.
        stream_log_level: Lowest level of :meth:`flame_log` records shipped to the PO.
        silent: Accepted for compatibility; logs are never printed by this layer and are
            always shipped to the PO (flamesdk's ``silent`` also stopped the shipping).
        status_sync: Partner statuses this node adopts.
        allow_pickle: Pickle intermediate values that have no typed format when sending to
            flame-async peers (they must allow it too). Values for flamesdk peers are always
            pickled: that is the only format flamesdk reads.
        end_thread_when_finished: End the creating thread when the analysis finished (see
            above); off for callers that manage their own lifetime.

    Raises:
        FlameCoreSDKError: The node could not join the analysis (the cause is chained).
    """

    def __init__(
        self,
        aggregator_requires_data: bool = False,
        stream_log_level: int = 20,
        silent: bool = False,
        status_sync: tuple[str, ...] | None = ("executed", "stopped", "failed"),
        *,
        allow_pickle: bool = False,
        end_thread_when_finished: bool = True,
    ) -> None:
        self._allow_pickle = allow_pickle
        self._end_thread = end_thread_when_finished
        self._owner = threading.get_ident()
        self._lock = threading.Lock()
        self._in_call = 0
        self._ending = False
        """Set once the node has left the analysis: the owner thread is to end."""
        self._closing = False
        self._failure: BaseException | None = None
        self._inbox: list[Message] = []
        self._calls: set[asyncio.Task[Any]] = set()
        """The analysis's calls running on the node's loop."""
        self._stop: anyio.Event | None = None
        self._finished_by_analysis = False
        config = FlameConfig.from_env(node_environ())  # the caller's node (runner threads)
        factory = node_transport()
        transport = factory(config) if factory is not None else None
        sdk = FlameSDK(
            config,
            transport=transport,
            status_sync=tuple(status_sync or ()),
            log_level=stream_log_level,
            aggregator_requires_data=aggregator_requires_data,
        )
        self._stack = contextlib.ExitStack()
        host = _HOST_PORTAL.get()
        self._portal: BlockingPortal = host or self._stack.enter_context(
            start_blocking_portal(name=f"flamesdk-compat-{config.analysis_id[:8]}")
        )
        try:
            self._served, started = self._portal.start_task(self._serve, sdk)
        except BaseException as exc:
            self._stack.close()
            raise FlameCoreSDKError(f"the node could not join the analysis: {exc}") from exc
        self._sdk: FlameSDK = started
        self._loop: asyncio.AbstractEventLoop = self._portal.call(asyncio.get_running_loop)
        self._colocation = colocation_for(self._loop, self._portal.call(threading.get_native_id))
        self.config = NodeConfig(config, sdk.node_id, sdk.role.value)
        self.flame_api = None
        """flamesdk's REST API object; the node API here belongs to the ``FlameSDK``."""
        self._peer_kind: dict[str, bool] = {}
        with _instances_lock:
            _instances.setdefault(self._owner, []).append(self)
        atexit.register(self.close)
        if self._owner == threading.main_thread().ident:
            self._chain_excepthook()
        self.flame_log("FlameCoreSDK ready (flame-async compatibility layer)", log_type="debug")

    def __enter__(self) -> FlameCoreSDK:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close(None if isinstance(exc, AnalysisEnded) else exc)

    def __repr__(self) -> str:
        return f"<FlameCoreSDK (flame-async) node={self.config.node_id!r}>"

    # ------------------------------------------------------------ lifecycle

    async def _serve(
        self, sdk: FlameSDK, *, task_status: TaskStatus[FlameSDK] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The node's whole life, in one task of the portal's loop."""
        self._stop = anyio.Event()
        try:
            async with sdk:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_finish, sdk)
                    task_status.started(sdk)
                    await self._stop.wait()
                    tg.cancel_scope.cancel()
                if self._failure is not None:
                    failure = self._failure
                    raise _AnalysisFailed(f"{type(failure).__name__}: {failure}") from failure
        finally:
            for task in list(self._calls):  # waits of the analysis end with the node
                task.cancel()
            if self._finished_by_analysis:
                self._end_owner()

    async def _watch_finish(self, sdk: FlameSDK) -> None:
        """End the node when a peer announces ``analysis_finished`` (the PO would)."""
        try:
            await sdk.wait_until_finished(timeout=FOREVER)
        except FlameError:  # a failed peer or the platform gone: the analysis's calls say so
            return
        self._finish()

    def _finish(self) -> None:
        """The analysis finished: leave it (``executed``), then end the owner thread."""
        self.config.finished = True
        self._finished_by_analysis = True
        if self._stop is not None:
            self._stop.set()

    def _end_owner(self) -> None:
        with self._lock:
            if self._closing or self._ending:
                return
            self._ending = True
            if self._end_thread and self._in_call == 0:
                raise_in_thread(self._owner, AnalysisEnded)

    def _chain_excepthook(self) -> None:
        """Note an uncaught exception of the main thread, so that leaving at interpreter exit
        reports ``failed`` with it (``python SCRIPT`` mode)."""
        previous = sys.excepthook

        def hook(
            exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None
        ) -> None:
            if not isinstance(exc, SystemExit):
                self._failure = exc
                self.close(exc)
            previous(exc_type, exc, tb)

        sys.excepthook = hook

    def close(self, exc: BaseException | None = None) -> None:
        """Leave the analysis: status ``executed``, or ``failed`` with ``exc`` (the peers are
        told at once); idempotent. Called at interpreter exit if not before."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        atexit.unregister(self.close)
        if exc is not None and not isinstance(exc, SystemExit) and self._failure is None:
            self._failure = exc
        stop = self._stop
        try:
            if stop is not None:
                self._portal.call(stop.set)
            with contextlib.suppress(BaseException):  # how it ended is the status, not ours
                self._served.result(timeout=_CLOSE_TIMEOUT)
        except RuntimeError:  # the portal is already gone (interpreter shutdown)
            pass
        finally:
            with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
                self._stack.close()

    def _call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the node's loop; block until done.

        Raises:
            AnalysisEnded: The node has left the analysis (before or during the call).
        """
        with self._lock:
            if self._ending or self._closing or self._finished_by_analysis:
                raise AnalysisEnded()
            self._in_call += 1
        pinned = self._colocation.enter()  # both threads on one CPU: cheap hand-offs
        try:
            # straight onto the node's loop: a fraction of the cost of a portal call (which
            # also builds a cancel scope and a task group per call) or of a concurrent future
            # (a condition and its lock per call); the loop is the portal's
            reply = _Reply()
            try:
                self._loop.call_soon_threadsafe(self._start, reply, func, args)
            except RuntimeError:  # the loop is closed: the node is gone
                raise AnalysisEnded() from None
            reply.done.acquire()
            if (error := reply.error) is not None:
                if isinstance(error, asyncio.CancelledError):  # the node ended meanwhile
                    raise AnalysisEnded() from None
                raise error
            result: T | _Cancelled = reply.value
        finally:
            self._colocation.leave(pinned)
            with self._lock:
                self._in_call -= 1
                ending = self._ending
        if ending or isinstance(result, _Cancelled):
            raise AnalysisEnded()
        return result

    def _start(
        self, reply: _Reply, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        """Start one call as a task of the node's loop (on the loop's thread)."""
        task = self._loop.create_task(self._answer(reply, func, args))
        task.add_done_callback(reply.ended)  # also wakes the caller if it never ran

    async def _answer(
        self, reply: _Reply, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        """Run one call on the node's loop and hand its outcome to the waiting thread."""
        try:
            reply.value = await self._guarded(func, *args)
        except BaseException as exc:
            reply.error = exc
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise  # KeyboardInterrupt, SystemExit: the loop's too
        finally:
            reply.give()  # now, not a loop iteration later from the done callback

    async def _guarded(self, func: Callable[..., Awaitable[T]], *args: Any) -> T | _Cancelled:
        task = asyncio.current_task()
        assert task is not None  # _answer runs as a task of its own
        self._calls.add(task)
        try:
            return await func(*args)
        except PeerFailed as exc:
            if exc.status != "executed":
                raise
            # the peer finished the analysis (flamesdk: this node is finished too, and the
            # PO ends it); a wait on it ends the node, not the analysis with an error
            self._finish()
        finally:
            self._calls.discard(task)
        return _CANCELLED

    # ------------------------------------------------------------ general

    def get_aggregator_id(self) -> str | None:
        """The aggregator's id; None on the aggregator itself (flamesdk: participants exclude
        this node)."""
        for participant in self.get_participants():
            if participant["nodeType"] == "aggregator":
                return participant["nodeId"]
        return None

    def get_participants(self) -> list[dict[str, str]]:
        """The other nodes: ``[{"nodeId": ..., "nodeType": ...}]``."""
        return [
            {"nodeId": p.node_id, "nodeType": p.role.value} for p in self._sdk.get_participants()
        ]

    def get_participant_ids(self) -> list[str]:
        """Ids of the other nodes."""
        return [p["nodeId"] for p in self.get_participants()]

    def get_analysis_id(self) -> str:
        """The analysis id."""
        return self.config.analysis_id

    def get_project_id(self) -> str:
        """The project id."""
        return self.config.project_id

    def get_id(self) -> str:
        """This node's id."""
        return self.config.node_id

    def get_role(self) -> str:
        """``default`` or ``aggregator``."""
        return self.config.node_role

    def analysis_finished(self) -> bool:
        """Tell every peer the analysis finished, then leave it as ``executed`` (the creating
        thread is ended right after, see the class docs).

        Returns:
            True (the node is finished), as flamesdk.
        """

        async def finish() -> bool:
            await self._sdk.analysis_finished(timeout=FOREVER)
            self._finish()
            return True

        return self._call(finish)

    def ready_check(
        self,
        nodes: list[str] | str = "all",
        attempt_interval: int = 30,
        timeout: int | None = None,
    ) -> dict[str, bool]:
        """Wait until ``nodes`` (all peers for ``"all"``) answer: ``{node_id: answered}``.

        Unlike flamesdk, a node that is not subscribed yet is asked again within a second
        (flame-async's resend backoff), not after ``attempt_interval`` seconds; the caller's
        list is not modified.
        """
        del attempt_interval  # resends follow flame-async's backoff
        targets = self.get_participant_ids() if nodes == "all" else list(nodes)
        if not targets:
            return {}

        async def check() -> dict[str, bool]:
            answered = await self._sdk.ready_check(targets, timeout=_seconds(timeout))
            for node in targets:
                if answered.get(node):
                    self._learn_kind(node)
            return answered

        return self._call(check)

    def flame_log(
        self,
        msg: str | bytes | Iterable[str],
        sep: str = "",
        end: str = "",
        log_type: str = "info",
        append: bool = False,
        halt_submission: bool = False,
    ) -> None:
        """Log ``msg`` and ship it to the PO (never blocks).

        ``log_type="error"`` logs the message and raises :class:`FlameCoreSDKError` (flamesdk
        marks the run failed and sleeps 1000 s); ``append``/``halt_submission`` only shaped
        flamesdk's console output and are ignored.

        Raises:
            FlameCoreSDKError: ``log_type`` is ``"error"`` or unknown, or ``msg`` is not text.
        """
        del append, halt_submission
        if isinstance(msg, bytes):
            text = msg.decode("utf-8", errors="replace") + end
        elif isinstance(msg, str):
            text = msg + end
        elif isinstance(msg, Iterable):
            text = sep.join(msg) + end
        else:
            raise FlameCoreSDKError(f"flame_log needs str, bytes or strings, got {type(msg)}")
        level = _LOG_LEVELS.get(log_type)
        if level is None:
            raise FlameCoreSDKError(
                f"unknown log_type {log_type!r}; known: {', '.join(sorted(_LOG_LEVELS))}"
            )
        sdk = getattr(self, "_sdk", None)
        logger = sdk.logger if sdk is not None else log
        logger.log(level, "%s", text.rstrip("\n"))
        if log_type == "error":
            raise FlameCoreSDKError(text)

    def get_progress(self) -> int:
        """Progress in whole percent."""
        return int(self._sdk.get_progress())

    def set_progress(self, progress: float) -> None:
        """Set the progress in percent (0-100; floats are truncated; lower values than the
        current one are ignored with a warning, as flamesdk)."""
        value = int(progress) if isinstance(progress, float) else progress
        if not isinstance(value, int) or not 0 <= value <= 100:
            self.flame_log(f"Invalid progress: {progress} (should be 0 to 100).", log_type="warn")
            return
        if value < self.get_progress():
            self.flame_log("Progress may not go backwards; ignored.", log_type="warn")
            return
        self._call(_sync_in_loop(self._sdk.set_progress, value))

    def fhir_to_csv(
        self,
        fhir_data: dict[str, Any],
        col_key_seq: str,
        value_key_seq: str,
        input_resource: str,
        row_key_seq: str | None = None,
        row_id_filters: list[str] | None = None,
        col_id_filters: list[str] | None = None,
        row_col_name: str = "",
        separator: str = ",",
        output_type: Literal["file", "dict"] = "file",
    ) -> io.StringIO | dict[Any, dict[Any, Any]]:
        """Pivot a FHIR search result (this page and the ``next`` pages, read from this node's
        FHIR source) into CSV (``StringIO``) or ``{column: {row: value}}``, as flamesdk does.

        Key sequences are dotted paths into each Bundle entry (``resource.code.coding.code``;
        lists are searched, and the last key also matches a field that contains it, e.g.
        ``value`` finds ``valueQuantity``). ``Observation`` needs ``row_key_seq``; for
        ``QuestionnaireResponse`` the columns come from each entry's items (the paths' first
        two keys name ``resource.item``) and the rows are the entries. Unlike flamesdk, row
        and column filters both apply when both are given.

        Raises:
            FlameCoreSDKError: An unknown ``input_resource``, or ``Observation`` without
                ``row_key_seq``.
        """
        if input_resource not in ("Observation", "QuestionnaireResponse"):
            raise FlameCoreSDKError(f"fhir_to_csv cannot pivot {input_resource!r} resources")
        if input_resource == "Observation" and not row_key_seq:
            raise FlameCoreSDKError("fhir_to_csv needs row_key_seq for Observation resources")
        pages = self._call(self._pages, fhir_data)
        table = pivot_fhir(
            pages,
            col_key_seq=col_key_seq,
            value_key_seq=value_key_seq,
            input_resource=input_resource,
            row_key_seq=row_key_seq,
            row_id_filters=row_id_filters,
            col_id_filters=col_id_filters,
        )
        if output_type == "dict":
            return table
        return table_to_csv(table, row_col_name=row_col_name, separator=separator)

    async def _pages(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """``bundle`` and the pages its ``next`` links lead to (from the first FHIR source)."""
        pages = [bundle]
        clients = [c for c in self._clients() if isinstance(c, FhirClient)]
        while clients and (link := _next_link(pages[-1])) is not None:
            pages.append(await clients[0].get(link))
        return pages

    # ------------------------------------------------------------ messaging

    def send_message(
        self,
        receivers: list[str],
        message_category: str,
        message: dict[str, Any],
        max_attempts: int = 1,
        timeout: int | None = None,
        attempt_timeout: int = 10,
    ) -> tuple[list[str], list[str]]:
        """Send ``message`` and wait for acknowledgements: ``(acknowledged, not_acknowledged)``.

        flame-async resends until acknowledged or ``timeout`` (flamesdk: ``max_attempts``
        posts of the same message); with ``timeout=None`` the wait ends when every receiver
        acknowledged, or failed.

        Raises:
            FlameCoreSDKError: ``message`` uses the reserved key ``meta``.
            PeerFailed: A receiver ended before acknowledging.
        """
        del max_attempts, attempt_timeout  # one deadline; resends follow the backoff
        if "meta" in message:
            raise FlameCoreSDKError("the key 'meta' is reserved for the message's metadata")

        async def send() -> tuple[list[str], list[str]]:
            report = await self._sdk.send_message(
                list(receivers), message, category=message_category, timeout=_seconds(timeout)
            )
            for node in report.acked:
                self._learn_kind(node)
            return list(report.acked), list(report.missing)

        return self._call(send)

    def await_messages(
        self,
        senders: list[str],
        message_category: str,
        message_id: str | None = None,
        timeout: int | None = None,
    ) -> dict[str, list[Message] | None]:
        """Unread messages of ``message_category`` from each sender, or the next one to
        arrive: ``{sender: [Message, ...] | None}`` (None when none came in time). Returned
        messages are marked read.

        Raises:
            PeerFailed: A sender ended before sending (flamesdk waited forever).
        """
        return self._call(
            self._await_messages, list(senders), message_category, message_id, timeout
        )

    async def _await_messages(
        self,
        senders: list[str],
        category: str,
        message_id: str | None,
        timeout: float | None,
    ) -> dict[str, list[Message] | None]:
        answers: dict[str, list[Message] | None] = dict.fromkeys(senders)

        def matches(m: Message) -> bool:
            meta = m.body["meta"]
            return meta["category"] == category and (message_id is None or meta["id"] == message_id)

        async def one(sender: str) -> None:
            mine = [
                m
                for m in self._inbox
                if m.body["meta"]["sender"] == sender
                and m.body["meta"]["status"] == "unread"
                and matches(m)
            ]
            with anyio.move_on_after(_seconds(timeout)):
                while not mine:
                    taken = await self._take(sender, category, FOREVER)
                    if matches(taken):
                        mine.append(taken)
                mine.extend(m for m in await self._take_queued(sender, category) if matches(m))
            if mine:
                for m in mine:
                    m.set_read()
                answers[sender] = mine

        errors: list[FlameError] = []

        async def guarded(sender: str) -> None:
            try:
                await one(sender)
            except FlameError as exc:  # raised as itself below, not in an exception group
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for sender in senders:
                tg.start_soon(guarded, sender)
        if errors:
            raise errors[0]
        return answers

    async def _take(self, sender: str, category: str | None, timeout: float) -> Message:
        message = Message(
            await self._sdk.await_message(sender, category=category, timeout=timeout),
            self.config.node_id,
        )
        self._learn_kind(sender)
        self._inbox.append(message)
        return message

    async def _take_queued(self, sender: str | None, category: str | None) -> list[Message]:
        """Move the messages already received (not yet taken) into the inbox."""
        queued = self._sdk.get_list_of_messages(
            [sender] if sender is not None else None, category=category
        )
        return [await self._take(m.sender, m.category, 1.0) for m in queued]

    def get_messages(self, status: Literal["unread", "read"] = "unread") -> list[Message]:
        """Received messages with ``status`` (in the order they were taken)."""

        async def listing() -> list[Message]:
            await self._take_queued(None, None)
            return [m for m in self._inbox if m.body["meta"]["status"] == status]

        return self._call(listing)

    def delete_messages(self, message_ids: list[str]) -> int:
        """Delete received messages by id; the number deleted."""
        wanted = set(message_ids)
        before = len(self._inbox)
        self._inbox[:] = [m for m in self._inbox if m.body["meta"]["id"] not in wanted]
        return before - len(self._inbox)

    def clear_messages(
        self, status: Literal["read", "unread", "all"] = "read", min_age: int | None = None
    ) -> int:
        """Delete received messages with ``status`` (``"all"``: every one; flamesdk deleted
        none), older than ``min_age`` seconds if given; the number deleted."""
        now = _dt.datetime.now(_dt.UTC)

        def doomed(m: Message) -> bool:
            meta = m.body["meta"]
            if status != "all" and meta["status"] != status:
                return False
            age = (now - m.message.arrived_at).total_seconds()
            return min_age is None or age > min_age

        before = len(self._inbox)
        self._inbox[:] = [m for m in self._inbox if not doomed(m)]
        return before - len(self._inbox)

    def send_message_and_wait_for_responses(
        self,
        receivers: list[str],
        message_category: str,
        message: dict[str, Any],
        max_attempts: int = 1,
        timeout: int | None = None,
        attempt_timeout: int = 10,
    ) -> dict[str, list[Message] | None]:
        """Send, then wait for messages of the same category from each receiver, all within
        ``timeout`` (None: until each answered; flamesdk crashed on None)."""
        started = _dt.datetime.now(_dt.UTC)
        self.send_message(
            receivers, message_category, message, max_attempts, timeout, attempt_timeout
        )
        left = None
        if timeout is not None:
            spent = (_dt.datetime.now(_dt.UTC) - started).total_seconds()
            left = max(1.0, timeout - spent)
        return self.await_messages(receivers, message_category, timeout=left)  # type: ignore[arg-type]

    # ------------------------------------------------------------ storage

    def submit_final_result(
        self,
        result: Any,
        output_type: Literal["str", "bytes", "pickle"] | list[str] = "str",
        multiple_results: bool = False,
        filename: str | list[str] | None = None,
        local_dp: Mapping[str, float] | None = None,
    ) -> dict[str, str] | list[dict[str, str]]:
        """Submit the final result (aggregator only) as flamesdk formats it: ``str`` →
        ``str(result)`` as UTF-8 ``.txt``, ``bytes`` → ``.bin``, ``pickle`` → ``.pkl``; with
        ``multiple_results`` one file per element. Returns ``{"status": "success"}`` (a list
        of them with ``multiple_results``).

        Raises:
            NotAggregatorError: This node is not the aggregator.
            InvalidArgument: ``local_dp`` with a result that is not one finite number.
        """
        if multiple_results and isinstance(result, list | tuple):
            items = list(result)
            types_ = output_type if isinstance(output_type, list) else [output_type] * len(items)
            if isinstance(filename, list):
                names: list[str | None] = list(filename)
            elif isinstance(filename, str):
                stem, dot, ext = filename.rpartition(".")
                names = [
                    f"{stem}_{i}.{ext}" if dot else f"{filename}_{i}"
                    for i in range(1, len(items) + 1)
                ]
            else:
                names = [None] * len(items)
            return [
                self._submit_one(item, kind, name, local_dp)
                for item, kind, name in zip(items, types_, names, strict=True)
            ]
        kind = output_type if isinstance(output_type, str) else output_type[0]
        name = filename if isinstance(filename, str) else None
        return self._submit_one(result, kind, name, local_dp)

    def _submit_one(
        self, result: Any, kind: str, filename: str | None, local_dp: Mapping[str, float] | None
    ) -> dict[str, str]:
        value: Any
        if local_dp is not None:
            value, ext = result, ".txt"
        elif kind == "bytes":
            value, ext = _as_bytes(result), ".bin"
        elif kind == "pickle":
            value, ext = pickle.dumps(result), ".pkl"
        elif kind == "str":
            value, ext = str(result), ".txt"
        else:
            raise FlameCoreSDKError(f"output_type must be 'str', 'bytes' or 'pickle', got {kind!r}")
        stamp = _dt.datetime.now(_dt.UTC).strftime("%y%m%d%H%M%S")
        name = filename or f"result_{secrets.token_hex(2)}_{stamp}{ext}"

        async def submit() -> dict[str, str]:
            await self._sdk.send_result(value, filename=name, local_dp=local_dp)
            return {"status": "success"}

        return self._call(submit)

    def save_intermediate_data(
        self,
        data: Any,
        location: Literal["local", "global"],
        remote_node_ids: list[str] | None = None,
        tag: str | None = None,
    ) -> dict[str, dict[str, str]] | dict[str, str]:
        """Store ``data``: ``global`` once per receiver in ``remote_node_ids`` (returns
        ``{node: {"status", "url", "id"}}``), ``local`` on this node, optionally tagged
        (returns ``{"status", "url", "id"}``).

        Global copies for flamesdk receivers are pickles (all flamesdk reads); for
        flame-async receivers typed, safe formats (see :mod:`flame_async.codecs`).

        Raises:
            FlameCoreSDKError: ``global`` without ``remote_node_ids``, ``tag`` with
                ``global``, or a malformed tag.
        """
        if location == "global":
            if remote_node_ids is None:
                raise FlameCoreSDKError("remote_node_ids must be given for global data")
            if tag is not None:
                raise FlameCoreSDKError("tags are for local data only")
            return self._call(self._save_global, data, list(remote_node_ids))
        if location != "local":
            raise FlameCoreSDKError(f"location must be 'local' or 'global', got {location!r}")
        if tag is not None and not _TAG.fullmatch(tag):
            raise FlameCoreSDKError(f"invalid tag {tag!r}: lowercase letters, digits, hyphens")

        async def save_local() -> dict[str, str]:
            info = await self._sdk.save_intermediate_result_local(data, tag=tag, allow_pickle=True)
            return {
                "status": "success",
                "url": str(info.other.get("url", "")),
                "id": info.result_id,
            }

        return self._call(save_local)

    async def _save_global(self, data: Any, receivers: list[str]) -> dict[str, dict[str, str]]:
        unknown = [r for r in receivers if self._sdk.runs_flamesdk(r) is None]
        if unknown:  # one acknowledged ping says which runtime each receiver runs
            await self._sdk.ready_check(unknown, timeout=FOREVER)
        legacy = [r for r in receivers if self._sdk.runs_flamesdk(r)]
        typed = [r for r in receivers if r not in legacy]
        infos = {}
        if legacy:
            infos.update(
                await self._sdk.save_intermediate_result(data, receivers=legacy, for_flamesdk=True)
            )
        if typed:
            infos.update(
                await self._sdk.save_intermediate_result(
                    data, receivers=typed, allow_pickle=self._allow_pickle
                )
            )
        return {
            node: {"status": "success", "url": str(info.other.get("url", "")), "id": info.result_id}
            for node, info in infos.items()
        }

    def get_intermediate_data(
        self,
        location: Literal["local", "global"],
        query: str | None = None,
        tag: str | None = None,
        tag_option: Literal["all", "last", "first"] | None = "all",
    ) -> Any:
        """Read intermediate data: ``global`` by the id a sender announced (one read per
        copy), ``local`` by id, or by ``tag`` (a list; ``tag_option`` picks all, the first or
        the last).

        Pickles are read only from senders that run flamesdk (and from this node's local
        storage, which flamesdk analyses of the project may have written).
        """
        if location == "global":
            if query is None:
                raise FlameCoreSDKError("global data is read by its id (query=...)")
            _object_id, _, sender = query.partition("?remote_node_id=")

            async def read_global() -> Any:
                legacy = bool(sender) and self._sdk.runs_flamesdk(sender) is True
                return await self._sdk.get_intermediate_result(
                    query, allow_pickle=legacy or self._allow_pickle
                )

            return self._call(read_global)
        if tag is not None:
            which = tag_option or "all"

            async def read_tagged() -> Any:
                found = await self._sdk.get_intermediate_result_local(
                    tag=tag, which=which, allow_pickle=True
                )
                return found if isinstance(found, list) else [found]

            return self._call(read_tagged)
        if query is None:
            raise FlameCoreSDKError("local data is read by its id (query=...) or by tag")

        async def read_local() -> Any:
            return await self._sdk.get_intermediate_result_local(query, allow_pickle=True)

        return self._call(read_local)

    def send_intermediate_data(
        self,
        receivers: list[str],
        data: Any,
        message_category: str = "intermediate_data",
        max_attempts: int = 1,
        timeout: int | None = None,
        attempt_timeout: int = 10,
    ) -> tuple[list[str], list[str]]:
        """Store ``data`` for each receiver and announce it in one message:
        ``(acknowledged, not_acknowledged)``."""
        saved = self.save_intermediate_data(data, "global", remote_node_ids=receivers)
        ids = {node: info["id"] for node, info in saved.items()}  # type: ignore[index]
        return self.send_message(
            receivers, message_category, {"result_id": ids}, max_attempts, timeout, attempt_timeout
        )

    def await_intermediate_data(
        self,
        senders: list[str],
        message_category: str = "intermediate_data",
        timeout: int | None = None,
    ) -> dict[str, Any]:
        """Wait for each sender's announcement and read its data: ``{sender: data | None}``
        (the last announcement per sender counts, as in flamesdk)."""
        data: dict[str, Any] = dict.fromkeys(senders)
        for sender, messages in self.await_messages(
            senders, message_category, timeout=timeout
        ).items():
            if messages:
                ids = messages[-1].body.get("result_id") or {}
                query = ids.get(self.config.node_id)
                if query is None:
                    raise FlameCoreSDKError(
                        f"the {message_category!r} message from {sender} names no data for "
                        f"this node ({self.config.node_id})"
                    )
                data[sender] = self.get_intermediate_data("global", query=query)
        return data

    def get_local_tags(self, filter: str | None = None) -> list[str]:
        """Tags of this project's local data (containing ``filter`` if given)."""
        tags = self._call(self._sdk.get_local_tags)
        return [t for t in tags if filter is None or filter in t]

    # ------------------------------------------------------------ data

    def _data_loaded(self) -> bool:
        if self.config.node_role == NodeRole.DEFAULT.value or self._sdk.get_data_sources():
            return True
        self.flame_log("Data API is not available on this node", log_type="warn")
        return False

    def get_data_sources(self) -> list[dict[str, Any]] | None:
        """The project's data stores on this node (the hub-adapter's objects); None on an
        aggregator without ``aggregator_requires_data``."""
        if not self._data_loaded():
            return None
        return [dict(s.raw) or {"id": s.id, "name": s.name} for s in self._sdk.get_data_sources()]

    def get_data_client(self, data_id: str) -> Any:
        """flame-async's client for data source ``data_id`` (a ``FhirClient`` or
        ``S3Client``; flamesdk returned an ``httpx.AsyncClient`` at a path the pod cannot
        reach). Its methods are coroutines of the node's loop: call them through
        :meth:`run`."""
        if not self._data_loaded():
            return None
        return self._sdk.get_data_client(data_id)

    def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the node's event loop (e.g. a data client's method)
        and return its result: the bridge from this synchronous API to flame-async's."""
        return self._call(func, *args)

    def get_fhir_data(self, fhir_queries: list[str] | None = None) -> list[dict[str, Any]] | None:
        """Per FHIR source, ``{query: the answer's JSON}`` (the first page, as flamesdk)."""
        if not self._data_loaded():
            return None
        queries = list(fhir_queries or [])
        if not queries:
            return None

        async def fetch() -> list[dict[str, Any]]:
            return [
                {q: await client.get(q) for q in queries}
                for client in self._clients()
                if isinstance(client, FhirClient)
            ]

        return self._call(fetch)

    def get_s3_data(self, s3_keys: list[str] | None = None) -> list[dict[str, bytes]] | None:
        """Per S3 source, ``{key: bytes}`` for ``s3_keys`` (every object when empty)."""
        if not self._data_loaded():
            return None
        keys = set(s3_keys or [])

        async def fetch() -> list[dict[str, bytes]]:
            out = []
            for client in self._clients():
                if isinstance(client, S3Client):
                    names = [n for n in await client.list() if not keys or n in keys]
                    out.append({n: await client.get(n) for n in names})
            return out

        return self._call(fetch)

    def _clients(self) -> list[FhirClient | S3Client]:
        """A client per data source, in the hub-adapter's order (flamesdk's ``data[i]``)."""
        return [self._sdk.get_data_client(s) for s in self._sdk.get_data_sources()]

    # ------------------------------------------------------------ peers

    def _learn_kind(self, node: str) -> None:
        kind = self._sdk.runs_flamesdk(node)
        if kind is not None:
            self._peer_kind[node] = kind


class _AnalysisFailed(Exception):
    """The analysis raised: the node leaves as ``failed`` with this (the cause chained)."""


def _seconds(timeout: float | None) -> float:
    if timeout is None:
        return FOREVER
    if not timeout > 0 or math.isnan(timeout):
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _sync_in_loop(func: Callable[..., Any], *args: Any) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        func(*args)

    return run


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _search(node: Any, keys: Sequence[str]) -> Any:
    """The value at ``keys`` under ``node``: lists are searched for the first item that has
    it, and the last key also matches the first field whose name contains it."""
    if isinstance(node, list):
        return next((v for item in node if (v := _search(item, keys)) is not None), None)
    if not isinstance(node, dict) or not keys:
        return None
    key, rest = keys[0], keys[1:]
    if rest:
        return _search(node[key], rest) if key in node else None
    if key in node:
        return node[key]
    return next((v for k, v in node.items() if key in k), None)


def _kept(value: Any, filters: Sequence[str] | None) -> bool:
    return filters is None or (value is not None and any(f in str(value) for f in filters))


def pivot_fhir(
    pages: Iterable[Mapping[str, Any]],
    *,
    col_key_seq: str,
    value_key_seq: str,
    input_resource: str,
    row_key_seq: str | None = None,
    row_id_filters: Sequence[str] | None = None,
    col_id_filters: Sequence[str] | None = None,
) -> dict[Any, dict[Any, Any]]:
    """flamesdk's ``fhir_to_csv`` pivot over Bundle pages: ``{column: {row: value}}``."""
    cols, values = col_key_seq.split("."), value_key_seq.split(".")
    rows = row_key_seq.split(".") if row_key_seq else []
    table: dict[Any, dict[Any, Any]] = {}
    number = 0
    for page in pages:
        for entry in page.get("entry") or []:
            number += 1
            if input_resource == "Observation":
                column, row = _search(entry, cols), _search(entry, rows)
                if _kept(row, row_id_filters) and _kept(column, col_id_filters):
                    table.setdefault(column, {})[row] = _search(entry, values)
                continue
            for item in (entry.get("resource") or {}).get("item") or []:
                column = _search(item, cols[2:])
                if _kept(column, col_id_filters):
                    table.setdefault(column, {})[str(number - 1)] = _search(item, values[2:])
    return table


def table_to_csv(
    table: Mapping[Any, Mapping[Any, Any]], *, row_col_name: str = "", separator: str = ","
) -> io.StringIO:
    """flamesdk's CSV of a pivot: a header of the columns, one line per row id (in order of
    appearance), values as ``str`` and missing ones empty, no quoting."""
    columns = list(table)
    row_ids = dict.fromkeys(row for column in table.values() for row in column)
    lines = [separator.join([row_col_name, *(str(c) for c in columns)])]
    for row in row_ids:
        cells = [str(table[c].get(row, "")) for c in columns]
        lines.append(separator.join([str(row), *cells]))
    out = io.StringIO("\n".join(lines))
    out.seek(0)
    return out


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link", []) or []:
        if link.get("relation") == "next" and "/fhir/" in str(link.get("url", "")):
            return str(link["url"]).rsplit("/fhir/", 1)[1]
    return None
