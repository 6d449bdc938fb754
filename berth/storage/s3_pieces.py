"""An S3 upload as pieces: one object per PATCH, named so that no two writes share a key.

A piece is the bytes one PATCH stored, as one object under `uploads/{id}/`: a PATCH shorter
than PIECE_BYTES in one PUT, one of PIECE_BYTES or more as the parts of a multipart upload of
its own key (visible only once the PATCH's last byte is in, so a PATCH cut short leaves no
piece). Its recorded name says where it starts, its length, and a token of the writer that
stored it: `{start:020d}-{size}-{token}` for a piece PUT whole (its key is its name), and
`{start:020d}-{size}-m{token}` for one written in parts (its key, chosen before its length was
known, is `{start:020d}-m{token}`). Keys are never reused, so a piece that reaches S3 after
its PATCH was abandoned (the node killed mid-request) lands beside the retry's piece instead
of replacing it; the caller records the names a PATCH wrote together with the offset it
acknowledges (`upload_pieces`), and reads and commits only those.

One object per PATCH is what lets a commit be one server-side copy of one object (docker,
podman and skopeo send a layer in one PATCH), which a store such as Ceph RGW makes by
reference, without copying the bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB
# A long write is sent in parts of this size (the last one smaller): the memory a write holds,
# and a 100 GiB object stays within S3's 10,000 parts.
PIECE_BYTES = 16 * MiB
MIN_PART_BYTES = 5 * MiB  # S3's minimum size of every part but the last
MAX_COPY_BYTES = 5 * GiB  # the most one CopyObject or UploadPartCopy copies
_NAME_RE = re.compile(r"(\d{20})-(\d{1,15})-(m?)([0-9a-f]{16})")


@dataclass(frozen=True)
class Piece:
    """`size` bytes of the upload from offset `start`, held in object `key` from byte `skip`
    on (a slice of a piece too large to copy at once), or the whole object when `whole`."""

    start: int
    size: int
    key: str
    skip: int = 0
    whole: bool = True

    @property
    def end(self) -> int:
        return self.start + self.size


def piece_name(start: int, size: int, token: str) -> str:
    """The name of a piece PUT whole, which is also its key."""
    return f"{start:020d}-{size}-{token}"


def parted_piece_key(start: int, token: str) -> str:
    return f"{start:020d}-m{token}"


def parted_piece_name(start: int, size: int, token: str) -> str:
    """The name of a piece written in parts; its key is `parted_piece_key(start, token)`."""
    return f"{start:020d}-{size}-m{token}"


def recorded_pieces(names: Sequence[str]) -> list[Piece]:
    """The recorded pieces in order; ValueError unless they follow on from offset 0."""
    pieces = []
    for name in names:
        match = _NAME_RE.fullmatch(name)
        if match is None:
            raise ValueError(f"not the name of an upload piece: {name!r}")
        start, size = int(match.group(1)), int(match.group(2))
        key = parted_piece_key(start, match.group(4)) if match.group(3) else name
        pieces.append(Piece(start, size, key))
    pieces.sort(key=lambda piece: piece.start)
    end = 0
    for piece in pieces:
        if piece.start != end:
            raise ValueError(f"the recorded pieces leave a gap or overlap at {end}")
        end = piece.end
    return pieces


class PartBuffer:
    """Gathers a write's bytes into bodies of PIECE_BYTES or more (the last one smaller) and
    hands each to `send`, in order, one at a time: a body's send goes on while the next one
    fills, so the request's body keeps arriving while the store takes the last part; its
    error surfaces on the next write or on close. Aborted, it drops what it holds and stops
    the send in flight."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._send = send
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._sending: asyncio.Future[None] | None = None
        self._aborted = False

    async def write(self, parts: Sequence[bytes]) -> None:
        self._buffer.extend(parts)
        self._buffered += sum(len(part) for part in parts)
        if self._buffered >= PIECE_BYTES:
            await self._flush(in_background=True)

    async def close(self) -> None:
        await self._flush(in_background=False)
        await self._settle()

    async def abort(self) -> None:
        self._aborted = True
        self._buffer.clear()
        self._buffered = 0
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
            self._sending = None

    async def _flush(self, *, in_background: bool) -> None:
        await self._settle()  # one send at a time: the parts follow the bytes
        if not self._buffered or self._aborted:
            return
        body = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if in_background:
            self._sending = asyncio.ensure_future(self._send(body))
        else:
            await self._send(body)

    async def _settle(self) -> None:
        """Wait for the send in flight, if any; its error is raised here. Cancelled meanwhile,
        the send is left to `abort` to wait for."""
        if self._sending is not None:
            try:
                await self._sending
            finally:
                if self._sending.done():
                    self._sending = None


def _sliced(piece: Piece, limit: int) -> Iterator[Piece]:
    """The piece, or, when larger than one server-side copy takes, even slices of it."""
    if piece.size <= limit:
        yield piece
        return
    count = -(-piece.size // limit)
    step = -(-piece.size // count)
    for skip in range(0, piece.size, step):
        yield _slice(piece, skip, min(step, piece.size - skip))


def _slice(piece: Piece, skip: int, size: int) -> Piece:
    """`size` bytes of the piece from its byte `skip` on."""
    return Piece(piece.start + skip, size, piece.key, skip=piece.skip + skip, whole=False)


def parts(pieces: list[Piece], copy_limit: int = MAX_COPY_BYTES) -> Iterator[list[Piece]]:
    """The pieces grouped into parts: a piece of 5 MiB or more alone (copied server-side;
    sliced when larger than `copy_limit`), smaller ones together until the part reaches
    5 MiB (only the last part may be smaller). A large piece after small ones first tops
    their part up to 5 MiB, so a part read to be sent again stays under 10 MiB."""
    queue = deque(piece for whole in pieces for piece in _sliced(whole, copy_limit))
    gathered: list[Piece] = []
    gathered_bytes = 0
    while queue:
        piece = queue.popleft()
        if piece.size >= MIN_PART_BYTES:
            if not gathered:
                yield [piece]
                continue
            need = MIN_PART_BYTES - gathered_bytes
            queue.appendleft(_slice(piece, need, piece.size - need))
            piece = _slice(piece, 0, need)
        gathered.append(piece)
        gathered_bytes += piece.size
        if gathered_bytes >= MIN_PART_BYTES:
            yield gathered
            gathered, gathered_bytes = [], 0
    if gathered:
        yield gathered
