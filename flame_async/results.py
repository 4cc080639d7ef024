"""Result-service client: final results, intermediate results between nodes, local results.

Values are encoded by :mod:`flame_async.codecs` (typed, self-describing, pickle only on opt-in).
Uploads stream the encoded parts (views of the value's own memory for arrays) and downloads
stream into one buffer, so a large result is not held twice beyond what decoding needs.
Wire-compatible with flamesdk's use of the storage service and its ``intermediate_data``
message.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs

import anyio

from . import codecs
from ._objects import download_object, result_id_of, upload_object
from ._transport import GatewayClient
from ._wire import TaggedAnswer, TagsAnswer
from .broker import BrokerService, Receivers
from .errors import (
    InvalidArgument,
    NotAggregatorError,
    NotFoundError,
)
from .models import Category, LocalDP, Message, ResultInfo, SendReport

__all__ = ["TAG_RULE", "ResultsService"]

log = logging.getLogger("flame_async.results")

TAG_RULE = re.compile(r"[a-z0-9]{1,2}|[a-z0-9][a-z0-9-]{0,30}[a-z0-9]")
"""The storage service's tag rule: 1-32 lowercase letters, digits and hyphens, no hyphen at
either end."""

_THREAD_THRESHOLD = 256 * 1024
"""Values (or payloads) larger than this are encoded/decoded in a worker thread."""


def _now() -> datetime:
    return datetime.now(UTC)


def _large(value: object) -> bool:
    size = getattr(value, "nbytes", None)
    if isinstance(size, int):
        return size > _THREAD_THRESHOLD
    if isinstance(value, bytes | bytearray | str):
        return len(value) > _THREAD_THRESHOLD
    return type(value).__module__.split(".")[0] in ("pandas", "torch", "numpy")


def split_result_id(result_id: str) -> tuple[str, str | None]:
    """Split ``"{object_id}?remote_node_id={uploader}"`` into the object id and the uploader.

    Raises:
        InvalidArgument: The id is empty or not of that shape.
    """
    object_part, _, query = result_id.partition("?")
    object_id = object_part.rsplit("/", 1)[-1]
    if not object_id:
        raise InvalidArgument(f"not a result id: {result_id!r}")
    params = parse_qs(query)
    uploaders = params.get("remote_node_id") or params.get("node_id") or []
    return object_id, uploaders[0] if uploaders else None


class ResultsService:
    """The node's results: final (to the Hub), intermediate (to peers) and local (kept).

    Args:
        gateway: Calls to the node's services (the borrowed transport underneath).
        broker: Messaging, for participants and ``intermediate_data`` announcements.
        analysis_id: Recorded in result infos.
    """

    def __init__(self, gateway: GatewayClient, broker: BrokerService, *, analysis_id: str) -> None:
        self._gateway = gateway
        self._broker = broker
        self._analysis_id = analysis_id
        self._saved: list[ResultInfo] = []

    # ------------------------------------------------------------- encoding

    @staticmethod
    async def _encode(
        value: object, *, final: bool, allow_pickle: bool, table_format: str = "parquet"
    ) -> codecs.Encoded:
        if final:
            fmt: Any = table_format

            def run() -> codecs.Encoded:
                return codecs.encode_final(value, allow_pickle=allow_pickle, table_format=fmt)
        else:

            def run() -> codecs.Encoded:
                return codecs.encode(value, allow_pickle=allow_pickle)

        if _large(value):
            return await anyio.to_thread.run_sync(run)
        return run()

    @staticmethod
    async def _decode(buffer: bytearray, *, allow_pickle: bool) -> Any:
        if len(buffer) > _THREAD_THRESHOLD:
            return await anyio.to_thread.run_sync(
                lambda: codecs.decode(buffer, allow_pickle=allow_pickle)
            )
        return codecs.decode(buffer, allow_pickle=allow_pickle)

    async def _upload(
        self,
        path: str,
        encoded: codecs.Encoded,
        filename: str,
        fields: Mapping[str, str],
        *,
        expect: tuple[int, ...],
    ) -> bytes:
        return await upload_object(
            self._gateway,
            path,
            encoded.parts,
            filename=filename,
            media_type=encoded.media_type,
            fields=fields,
            expect=expect,
        )

    async def _download(self, path: str, params: Mapping[str, str] | None = None) -> bytearray:
        """The whole object (see :func:`~flame_async._objects.download_object`).

        Raises:
            TransportError: The service refused, or the body was cut off
                (:class:`~flame_async.errors.IncompleteResponse`).
        """
        return await download_object(self._gateway, path, params)

    # ---------------------------------------------------------------- final

    async def send_result(
        self,
        result: Any,
        *,
        filename: str | None = None,
        local_dp: LocalDP | Mapping[str, float] | None = None,
        table_format: Literal["parquet", "csv"] = "parquet",
        allow_pickle: bool = False,
    ) -> ResultInfo:
        """Submit the final result to the Hub (aggregator only).

        The file is plain and directly usable (``.json``, ``.txt``, ``.parquet``/``.csv``,
        ``.npy``, ``.safetensors``, ``.bin``); its name carries the format.

        Args:
            result: The value to submit.
            filename: File name (the extension is added when missing); default
                ``result_{timestamp}_{random}{ext}``.
            local_dp: Add Laplace noise on the service (``epsilon``, ``sensitivity``); the
                result must then be one finite number.
            table_format: File format for DataFrames and Series.
            allow_pickle: Allow pickling values that have no safe format.

        Raises:
            NotAggregatorError: This node is not the aggregator (before any I/O).
            InvalidArgument: ``local_dp`` with a non-numeric result.
            CodecError: The result cannot be encoded safely.
            ServiceError: The storage service refused it.
        """
        if self._broker.role != "aggregator":
            raise NotAggregatorError(
                f"only the aggregator submits the final result; node {self._broker.node_id} is "
                f"{self._broker.role.value} (send intermediate results to the aggregator instead)"
            )
        fields: dict[str, str] = {}
        path = "/storage/final"
        if local_dp is not None:
            dp = local_dp if isinstance(local_dp, LocalDP) else LocalDP.model_validate(local_dp)
            if (
                isinstance(result, bool)
                or not isinstance(result, int | float)
                or not math.isfinite(result)
            ):
                raise InvalidArgument(
                    f"local differential privacy needs one finite number, got {result!r}"
                )
            encoded = codecs.encode_final(str(result))
            fields = {
                "epsilon": repr(float(dp.epsilon)),
                "sensitivity": repr(float(dp.sensitivity)),
            }
            path = "/storage/final/localdp"
        else:
            encoded = await self._encode(
                result, final=True, allow_pickle=allow_pickle, table_format=table_format
            )
        name = filename or f"result_{_now():%y%m%d%H%M%S}_{secrets.token_hex(2)}"
        if "." not in name.rsplit("/", 1)[-1]:
            name += encoded.extension
        await self._upload(path, encoded, name, fields, expect=(200, 204))
        info = ResultInfo(
            result_id=name,
            result_name=name,
            node_id=self._broker.node_id,
            analysis_id=self._analysis_id,
            result_size=encoded.size,
            result_time=_now(),
            result_owner="self",
            other={"format": encoded.format, "kind": "final"},
        )
        log.info("submitted the final result %s (%d bytes)", name, encoded.size)
        return info

    # --------------------------------------------------------- intermediate

    async def save_intermediate_result(
        self,
        result: Any,
        *,
        receivers: Receivers | None,
        allow_pickle: bool = False,
        for_flamesdk: bool = False,
    ) -> dict[str, ResultInfo]:
        """Store ``result`` once per receiver (every other node if None) in the analysis'
        temporary storage.

        Each receiver can read its copy once (the service deletes it after the read). With
        ``for_flamesdk`` the copies are raw pickle streams, the only format flamesdk 0.6
        receivers read (for the compatibility layer, which knows its receivers run flamesdk).

        Raises:
            UnknownNodeError: A receiver is not a participant (before any I/O).
            CodecError: The result cannot be encoded safely.
            ServiceError: The storage service refused it.

        Cancellation:
            Uploads already finished stay stored.
        """
        targets = (
            [p.node_id for p in self._broker.participants]
            if receivers is None
            else self._broker.resolve(receivers)
        )
        if for_flamesdk:
            encoded = codecs.encode_flamesdk_pickle(result)
        else:
            encoded = await self._encode(result, final=False, allow_pickle=allow_pickle)
        infos: dict[str, ResultInfo] = {}
        for receiver in targets:
            body = await self._upload(
                "/storage/intermediate",
                encoded,
                f"intermediate{encoded.extension}",
                {"remote_node_id": receiver},
                expect=(200, 201),
            )
            infos[receiver] = self._info_from_upload(body, encoded, receiver=receiver)
        self._saved.extend(infos.values())
        return infos

    def _info_from_upload(
        self,
        body: bytes,
        encoded: codecs.Encoded,
        *,
        receiver: str | None = None,
        tag: str | None = None,
    ) -> ResultInfo:
        result_id, url = result_id_of(body)
        other: dict[str, Any] = {"format": encoded.format, "url": url}
        if receiver is not None:
            other.update(receiver=receiver, direction="sent")
        if tag is not None:
            other["tag"] = tag
        return ResultInfo(
            result_id=result_id,
            result_name=f"{encoded.format}{encoded.extension}",
            node_id=self._broker.node_id,
            analysis_id=self._analysis_id,
            result_size=encoded.size,
            result_time=_now(),
            result_owner="self",
            other=other,
        )

    async def get_intermediate_result(
        self, result_id: str | ResultInfo, *, sender: str | None = None, allow_pickle: bool = False
    ) -> Any:
        """Download and decode a global intermediate result stored for this node.

        Args:
            result_id: The id from the sender's announcement (``{object_id}?remote_node_id=...``)
                or a :class:`ResultInfo`.
            sender: The uploader, when ``result_id`` does not name it.
            allow_pickle: Accept a pickled payload (only from peers you trust).

        Raises:
            NotFoundError: No such object, or it was already read (one read per object).
            PickleNotAllowed: The payload is a pickle and ``allow_pickle`` is false.
            InvalidArgument: The uploader is unknown.
        """
        rid = result_id.result_id if isinstance(result_id, ResultInfo) else result_id
        object_id, uploader = split_result_id(rid)
        uploader = uploader or sender
        if uploader is None:
            raise InvalidArgument(f"result id {rid!r} does not name its sender; pass sender=")
        try:
            buffer = await self._download(
                f"/storage/intermediate/{object_id}", {"remote_node_id": uploader}
            )
        except NotFoundError as exc:
            raise NotFoundError(
                service="storage",
                method="GET",
                url=exc.url,
                status=404,
                detail=f"intermediate result {object_id} from {uploader} does not exist: it was "
                "never stored for this node or has already been read (each copy is readable once)",
            ) from exc
        return await self._decode(buffer, allow_pickle=allow_pickle)

    async def send_intermediate_result(
        self,
        receivers: Receivers | None,
        result: Any,
        *,
        category: str = Category.INTERMEDIATE_DATA,
        timeout: float = 60.0,
        allow_pickle: bool = False,
    ) -> SendReport:
        """Store ``result`` for each receiver (every other node if None) and announce it with
        one broker message.

        The message is flamesdk's ``intermediate_data`` shape: ``{"result_id": {receiver: id}}``.

        Raises:
            UnknownNodeError: A receiver is not a participant (before any I/O).
            CodecError: The result cannot be encoded safely.
            ServiceError: The storage service or broker refused.
        """
        infos = await self.save_intermediate_result(
            result, receivers=receivers, allow_pickle=allow_pickle
        )
        ids = {node: info.result_id for node, info in infos.items()}
        return await self._broker.send_message(
            list(ids), {"result_id": ids}, category=category, timeout=timeout
        )

    def _result_id_for_me(self, message: Message) -> str:
        ids = message.data.get("result_id")
        mine = ids.get(self._broker.node_id) if isinstance(ids, dict) else None
        if not isinstance(mine, str):
            raise InvalidArgument(
                f"the {message.category!r} message from {message.sender} names no result for "
                f"this node ({self._broker.node_id}): {message.data!r}"
            )
        return mine

    async def await_intermediate_result(
        self,
        sender: str,
        *,
        category: str = Category.INTERMEDIATE_DATA,
        timeout: float = 60.0,
        allow_pickle: bool = False,
    ) -> Any:
        """Wait for ``sender``'s announcement, then download and decode its result.

        Raises:
            MessageTimeout: No announcement within ``timeout``.
            PeerFailed: The sender ended without sending.
            NotFoundError: The announced object is gone.

        Cancellation:
            If cancelled while waiting, the announcement stays queued; once downloading
            started, the object is consumed.
        """
        message = await self._broker.await_message(sender, category=category, timeout=timeout)
        return await self.get_intermediate_result(
            self._result_id_for_me(message), sender=message.sender, allow_pickle=allow_pickle
        )

    async def await_intermediate_results(
        self,
        senders: Receivers | None = None,
        *,
        category: str = Category.INTERMEDIATE_DATA,
        timeout: float = 60.0,
        allow_pickle: bool = False,
    ) -> dict[str, Any]:
        """One intermediate result from each sender (all peers if None); None where none came.

        Raises:
            PeerFailed: A sender failed before sending.
            NotFoundError: An announced object is gone.
        """
        messages = await self._broker.await_messages(senders, category=category, timeout=timeout)
        results: dict[str, Any] = dict.fromkeys(messages)
        async with anyio.create_task_group() as tg:

            async def fetch(node: str, message: Message) -> None:
                results[node] = await self.get_intermediate_result(
                    self._result_id_for_me(message), sender=node, allow_pickle=allow_pickle
                )

            for node, message in messages.items():
                if message is not None:
                    tg.start_soon(fetch, node, message)
        return results

    def list_intermediate_results(self) -> list[ResultInfo]:
        """Global intermediate results of this run: the ones this node stored for peers
        (``other["direction"] == "sent"``) and the ones announced to it and not yet taken
        (``"received"``)."""
        announced = [
            ResultInfo(
                result_id=self._result_id_for_me(m),
                result_name=m.category,
                node_id=m.sender,
                analysis_id=self._analysis_id,
                result_time=m.time,
                result_owner=m.sender,
                other={"direction": "received", "message_id": m.id},
            )
            for m in self._broker.queued(category=Category.INTERMEDIATE_DATA)
            if isinstance(m.data.get("result_id"), dict)
            and self._broker.node_id in m.data["result_id"]
        ]
        return [*self._saved, *announced]

    # ---------------------------------------------------------------- local

    @staticmethod
    def check_tag(tag: str) -> str:
        """Return ``tag`` if the storage service accepts it.

        Raises:
            InvalidArgument: It breaks the rule (1-32 of ``a-z``, ``0-9``, ``-``; no hyphen at
                either end).
        """
        if not isinstance(tag, str) or not TAG_RULE.fullmatch(tag):
            raise InvalidArgument(
                f"invalid tag {tag!r}: use 1-32 lowercase letters, digits and hyphens, not "
                "starting or ending with a hyphen (e.g. 'round-3')"
            )
        return tag

    async def save_intermediate_result_local(
        self,
        result: Any,
        *,
        tag: str | None = None,
        filename: str | None = None,
        allow_pickle: bool = False,
    ) -> ResultInfo:
        """Keep ``result`` in this node's local storage (it survives this run).

        Args:
            result: The value.
            tag: Optional project-wide tag to find it again later.
            filename: Name recorded with the tag (default ``{format}.flame``).
            allow_pickle: Allow pickling values that have no safe format.

        Raises:
            InvalidArgument: Invalid tag (before any I/O).
            CodecError: The result cannot be encoded safely.
            ServiceError: The storage service refused it.
        """
        if tag is not None:
            self.check_tag(tag)
        encoded = await self._encode(result, final=False, allow_pickle=allow_pickle)
        name = filename or f"{encoded.format}{encoded.extension}"
        body = await self._upload(
            "/storage/local", encoded, name, {"tag": tag} if tag else {}, expect=(200, 201)
        )
        return self._info_from_upload(body, encoded, tag=tag).model_copy(
            update={"result_name": name}
        )

    async def get_intermediate_result_local(
        self,
        result_id: str | ResultInfo | None = None,
        *,
        tag: str | None = None,
        which: Literal["all", "first", "last"] = "all",
        allow_pickle: bool = False,
    ) -> Any:
        """Read local results by id, or by tag (``which`` picks all, the first or the last).

        Returns:
            The value for an id or ``which="first"|"last"``; a list for ``which="all"``.

        Raises:
            InvalidArgument: Neither or both of id and tag, or an invalid tag.
            NotFoundError: No such object, or the tag has no results.
        """
        if (result_id is None) == (tag is None):
            raise InvalidArgument("pass either a result id or tag=")
        if result_id is not None:
            rid = result_id.result_id if isinstance(result_id, ResultInfo) else result_id
            object_id, _ = split_result_id(rid)
            return await self._decode(
                await self._download(f"/storage/local/{object_id}"), allow_pickle=allow_pickle
            )
        entries = await self._tag_entries(self.check_tag(tag or ""))
        if not entries:
            raise NotFoundError(
                service="storage",
                method="GET",
                url=f"/storage/local/tags/{tag}",
                status=404,
                detail=f"tag {tag!r} has no results in this project",
            )
        chosen = entries if which == "all" else [entries[0] if which == "first" else entries[-1]]
        values = [
            await self._decode(
                await self._download(f"/storage/local/{oid}"), allow_pickle=allow_pickle
            )
            for oid, _ in chosen
        ]
        return values if which == "all" else values[0]

    async def _tag_entries(self, tag: str) -> list[tuple[str, str]]:
        answer = await self._gateway.request_model(
            TaggedAnswer, "GET", f"/storage/local/tags/{tag}", service="storage"
        )
        return [(r.url.rsplit("/local/", 1)[-1], r.filename) for r in answer.results]

    async def get_local_tags(self) -> list[str]:
        """Tags of this project's local results.

        Raises:
            TransportError: The storage service failed or answered something unexpected.
        """
        answer = await self._gateway.request_model(
            TagsAnswer, "GET", "/storage/local/tags", service="storage"
        )
        return [t.name for t in answer.tags]

    async def list_intermediate_local_results(self) -> list[ResultInfo]:
        """Every tagged local result of this project (``other["tag"]`` names its tag)."""
        infos: list[ResultInfo] = []
        for tag in await self.get_local_tags():
            for object_id, filename in await self._tag_entries(tag):
                infos.append(
                    ResultInfo(
                        result_id=object_id,
                        result_name=filename or object_id,
                        node_id=self._broker.node_id,
                        analysis_id=self._analysis_id,
                        result_time=_now(),
                        result_owner="self",
                        other={"tag": tag},
                    )
                )
        return infos
