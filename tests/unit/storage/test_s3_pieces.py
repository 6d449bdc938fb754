"""The S3 upload's pieces: the part buffer keeps one send in flight while the next part fills,
in order, and stops on abort; recorded names say where each piece's bytes are; a commit's
parts copy large pieces whole (or in slices no larger than one copy takes) and gather small
ones. The S3 store's use of them runs against SeaweedFS and RGW in tests/storage."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from berth.storage.s3_pieces import (
    MIN_PART_BYTES,
    PIECE_BYTES,
    MiB,
    PartBuffer,
    Piece,
    parted_piece_key,
    parted_piece_name,
    parts,
    piece_name,
    recorded_pieces,
)

pytestmark = pytest.mark.anyio


class Store:
    """Bodies sent into a list; each send waits for `release` when it is gated."""

    def __init__(self, gated: bool = False) -> None:
        self.sent: list[bytes] = []
        self.release = asyncio.Event()
        if not gated:
            self.release.set()
        self.started = 0
        self.fail_next = False

    async def send(self, body: bytes) -> None:
        self.started += 1
        await self.release.wait()
        if self.fail_next:
            raise OSError("the store refused the part")
        self.sent.append(body)


async def test_the_body_keeps_arriving_while_a_part_is_sent() -> None:
    store = Store(gated=True)
    buffer = PartBuffer(store.send)
    first = b"a" * PIECE_BYTES
    await asyncio.wait_for(buffer.write([first]), 1)  # returns with its send still waiting
    assert store.started == 1 and not store.sent
    await buffer.write([b"b" * 10])  # buffered meanwhile
    closing = asyncio.ensure_future(buffer.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # close waits for the send in flight
    store.release.set()
    await closing
    assert store.sent == [first, b"b" * 10]


async def test_a_short_write_is_one_body_sent_on_close() -> None:
    store = Store()
    buffer = PartBuffer(store.send)
    for _ in range(3):
        await buffer.write([b"x" * MiB])
    assert store.sent == []
    await buffer.close()
    assert store.sent == [b"x" * 3 * MiB]


async def test_a_failed_send_in_flight_fails_the_next_write() -> None:
    store = Store()
    store.fail_next = True
    buffer = PartBuffer(store.send)
    await buffer.write([b"a" * PIECE_BYTES])
    with pytest.raises(OSError, match="refused"):
        await buffer.write([b"b" * PIECE_BYTES])
    await buffer.abort()
    await buffer.close()  # nothing more is sent once aborted
    assert store.sent == []


async def test_abort_stops_the_send_in_flight_and_drops_what_is_buffered() -> None:
    store = Store(gated=True)
    buffer = PartBuffer(store.send)
    await asyncio.wait_for(buffer.write([b"a" * PIECE_BYTES]), 1)
    await buffer.write([b"b" * MiB])
    await buffer.abort()
    store.release.set()
    await buffer.close()
    assert store.sent == [] and store.started == 1


def test_names_say_where_each_piece_is_kept() -> None:
    put_whole = piece_name(0, 10, "0" * 16)
    in_parts = parted_piece_name(10, 40 * MiB, "f" * 16)
    pieces = recorded_pieces([in_parts, put_whole])
    assert pieces == [
        Piece(0, 10, put_whole),
        Piece(10, 40 * MiB, parted_piece_key(10, "f" * 16)),
    ]
    assert pieces[1].key != in_parts  # chosen before the piece's length was known


@pytest.mark.parametrize(
    "names",
    [
        [piece_name(1, 10, "0" * 16)],  # does not start at 0
        [piece_name(0, 10, "0" * 16), piece_name(5, 10, "1" * 16)],  # overlap
        ["../../blobs/sha256/aa/" + "a" * 64],  # not a piece's name
        [piece_name(0, 10, "0" * 16) + "/x"],
    ],
)
def test_recorded_names_that_do_not_follow_on_are_refused(names: list[str]) -> None:
    with pytest.raises(ValueError):
        recorded_pieces(names)


def test_parts_copy_large_pieces_whole_and_gather_small_ones() -> None:
    large = Piece(0, PIECE_BYTES, "a")
    small = [Piece(PIECE_BYTES + n * MiB, MiB, f"s{n}") for n in range(6)]
    grouped = list(parts([large, *small]))
    assert grouped == [[large], small[:5], small[5:]]


def test_a_piece_larger_than_one_copy_is_copied_in_even_slices() -> None:
    limit = 8 * MiB
    piece = Piece(MiB, 20 * MiB + 1, "big")
    (first,), (second,), (third,) = parts([piece], copy_limit=limit)
    slices = [first, second, third]
    assert all(s.key == "big" and not s.whole and s.size <= limit for s in slices)
    assert all(s.size >= MIN_PART_BYTES for s in slices)
    assert [s.skip for s in slices] == [0, first.size, first.size + second.size]
    assert [s.start for s in slices] == [MiB + s.skip for s in slices]
    assert sum(s.size for s in slices) == piece.size


def test_a_large_piece_after_small_ones_tops_their_part_up_and_is_copied_for_the_rest() -> None:
    small = Piece(0, MiB, "s")
    large = Piece(MiB, 40 * MiB, "big")
    (first, second) = parts([small, large])
    assert first == [small, Piece(MiB, 4 * MiB, "big", skip=0, whole=False)]
    assert second == [Piece(5 * MiB, 36 * MiB, "big", skip=4 * MiB, whole=False)]


def test_no_part_read_to_be_sent_again_reaches_10_mib() -> None:
    sizes = [MiB, 3 * MiB, 40 * MiB, 2 * MiB, 4 * MiB + 1, 7 * MiB, 3]
    pieces, start = [], 0
    for n, size in enumerate(sizes):
        pieces.append(Piece(start, size, f"p{n}"))
        start += size
    grouped = list(parts(pieces, copy_limit=16 * MiB))
    for part in grouped:
        if len(part) > 1:
            assert sum(p.size for p in part) < 10 * MiB
    assert all(sum(p.size for p in part) >= MIN_PART_BYTES for part in grouped[:-1])
    slices = [p for part in grouped for p in part]
    assert [p.start for p in slices] == sorted(p.start for p in slices)
    assert sum(p.size for p in slices) == start
    assert all(a.end == b.start for a, b in itertools.pairwise(slices))
