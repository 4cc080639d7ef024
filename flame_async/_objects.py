"""Objects in the node's storage service: streamed uploads and whole-object downloads.

Shared by the results client (:mod:`flame_async.results`) and large messages, which travel as
intermediate objects (:mod:`flame_async.broker`). Uploads stream their parts; downloads read
into one buffer, sized up front when the length is known, so an object is held once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from ._transport import GatewayClient, Multipart, is_retryable, parse_answer, retry_call
from ._transport._http import Buffer
from ._wire import UploadAnswer
from .errors import IncompleteResponse

__all__ = ["download_object", "result_id_of", "upload_object"]


async def upload_object(
    gateway: GatewayClient,
    path: str,
    parts: Sequence[Buffer],
    *,
    filename: str,
    media_type: str,
    fields: Mapping[str, str],
    expect: tuple[int, ...],
) -> bytes:
    """``PUT`` one multipart upload (the file part streamed from ``parts``); returns the
    answer's body. Transient failures (no connection, 502/503/504) are retried per the
    gateway's policy: the parts are sent again.

    Raises:
        TransportError: The storage service refused, or could not be reached.
    """
    form = Multipart.form(fields, file=parts, filename=filename, content_type=media_type)

    async def once() -> bytes:
        async with gateway.stream(
            "PUT", path, service="storage", body=form, expect=expect
        ) as answer:
            return await answer.read()

    return await retry_call(gateway.retry_policy, once, what=f"PUT {path}")


def result_id_of(answer: bytes) -> tuple[str, str]:
    """The stored object's result id (``{object_id}`` plus the query the service put in the
    URL, e.g. ``?remote_node_id=...``) and the URL, from an upload's answer.

    Raises:
        ServiceError: The answer is not an upload answer.
    """
    url = parse_answer(UploadAnswer, answer, service="storage", method="PUT", url="/storage").url
    split = urlsplit(url)
    return split.path.rsplit("/", 1)[-1] + (f"?{split.query}" if split.query else ""), url


async def download_object(
    gateway: GatewayClient, path: str, params: Mapping[str, str] | None = None
) -> bytearray:
    """The whole object, read into one buffer (sized up front when the size is known).

    Getting the answer is retried per the gateway's policy when it failed transiently (no
    connection, 502/503/504); a body cut off while it was read is not (an intermediate object
    is gone once it was served).

    Raises:
        TransportError: The service refused, or the body was cut off
            (:class:`~flame_async.errors.IncompleteResponse`).
    """
    return await retry_call(
        gateway.retry_policy,
        lambda: _download_once(gateway, path, params),
        retryable=lambda exc: is_retryable(exc) and not isinstance(exc, IncompleteResponse),
        what=f"GET {path}",
    )


async def _download_once(
    gateway: GatewayClient, path: str, params: Mapping[str, str] | None
) -> bytearray:
    async with gateway.stream(
        "GET", path, service="storage", params=params, headers={"Accept": "*/*"}
    ) as response:
        size = response.content_length
        if size is None:
            buffer = bytearray()
            async for chunk in response.iter_chunks():
                buffer += chunk
            return buffer
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        async for chunk in response.iter_chunks():
            if filled + len(chunk) > size:  # more than announced: grow instead
                view.release()
                del buffer[filled:]
                buffer += chunk
                filled = len(buffer)
                view = memoryview(buffer)
                size = filled
                continue
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        view.release()
        del buffer[filled:]
        return buffer
