"""How a streamed body is cut into chunks (``stream()`` exact, ``download()`` coalesced)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from flame_async._transport import Response
from flame_async.hub._storage import _stream_chunks


def answer(pieces: list[bytes]) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return Response(200, body())


PIECES = [b"a" * 3, b"b" * 7, b"c" * 1, b"d" * 12, b"e" * 2]  # 25 bytes in uneven pieces


@pytest.mark.parametrize("size", [1, 4, 5, 25, 100])
async def test_exact_chunks_are_chunk_size_but_the_last(size: int) -> None:
    chunks = [c async for c in _stream_chunks(answer(PIECES), size)]
    assert b"".join(chunks) == b"".join(PIECES)
    assert all(len(c) == size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= size


async def test_coalesced_chunks_are_at_least_chunk_size_but_the_last() -> None:
    chunks = [c async for c in _stream_chunks(answer(PIECES), 8, exact=False)]
    assert b"".join(chunks) == b"".join(PIECES)
    assert [len(c) for c in chunks] == [10, 13, 2]


async def test_an_empty_body_gives_no_chunk() -> None:
    assert [c async for c in _stream_chunks(answer([]), 4)] == []
