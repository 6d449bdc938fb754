"""The S3 upload writer's pieces: one PUT in flight while the next piece fills, in order, and
nothing of a failed or aborted write left recorded. The store is the writer's `put` and
`remove` seam (the S3 store passes its own; tests/storage runs them against SeaweedFS)."""

from __future__ import annotations

import asyncio

import pytest

from berth.storage.s3_pieces import PIECE_BYTES, PieceWriter, recorded_pieces

pytestmark = pytest.mark.anyio


class Bucket:
    """Pieces PUT into a dict; each PUT waits for `release` when it is gated."""

    def __init__(self, gated: bool = False) -> None:
        self.objects: dict[str, bytes] = {}
        self.release = asyncio.Event()
        if not gated:
            self.release.set()
        self.started: list[str] = []
        self.fail_next = False

    async def put(self, name: str, body: bytes) -> None:
        self.started.append(name)
        await self.release.wait()
        if self.fail_next:
            raise OSError("the store refused the piece")
        self.objects[name] = body

    async def remove(self, names: list[str]) -> None:
        for name in names:
            self.objects.pop(name, None)


async def test_the_body_keeps_arriving_while_a_piece_is_stored() -> None:
    bucket = Bucket(gated=True)
    writer = PieceWriter(bucket.put, 0, bucket.remove)
    first = b"a" * PIECE_BYTES
    await asyncio.wait_for(writer.write([first]), 1)  # returns with its PUT still waiting
    assert len(bucket.started) == 1 and not bucket.objects
    await writer.write([b"b" * 10])  # buffered meanwhile
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # close waits for the PUT in flight
    bucket.release.set()
    await closing
    pieces = recorded_pieces(writer.pieces)
    assert [(piece.start, piece.size) for piece in pieces] == [(0, PIECE_BYTES), (PIECE_BYTES, 10)]
    assert b"".join(bucket.objects[piece.name] for piece in pieces) == first + b"b" * 10


async def test_a_failed_put_in_flight_fails_the_next_write_and_abort_removes_it() -> None:
    bucket = Bucket()
    bucket.fail_next = True
    writer = PieceWriter(bucket.put, 0, bucket.remove)
    await writer.write([b"a" * PIECE_BYTES])
    with pytest.raises(OSError, match="refused"):
        await writer.write([b"b" * PIECE_BYTES])
    await writer.abort()
    assert writer.pieces == [] and bucket.objects == {}


async def test_abort_waits_for_the_put_in_flight_before_removing_what_it_began() -> None:
    bucket = Bucket(gated=True)
    writer = PieceWriter(bucket.put, 0, bucket.remove)
    await asyncio.wait_for(writer.write([b"a" * PIECE_BYTES]), 1)
    aborting = asyncio.ensure_future(writer.abort())
    await asyncio.sleep(0)
    bucket.release.set()  # a PUT that lands as it is cancelled is removed all the same
    await aborting
    assert writer.pieces == [] and bucket.objects == {}
