"""An S3 upload as pieces: one object per piece, named so that no two writes share a key.

A piece is `uploads/{id}/{start:020d}-{size}-{token}`: its first byte's offset, its length
and a token of the writer (one PATCH) that stored it. Keys are never reused, so a piece PUT
that reaches S3 after its PATCH was abandoned (the node killed mid-request) lands beside the
retry's piece instead of replacing it; the caller records the names a PATCH wrote together
with the offset it acknowledges (`upload_pieces`), and reads and commits only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

from berth.storage.base import UploadWriter

MiB = 1024 * 1024
# An upload's bytes are buffered to this size before they become a piece: pieces this large
# are copied server-side on commit, and a 100 GiB blob stays within S3's 10,000 parts.
PIECE_BYTES = 16 * MiB
MIN_PART_BYTES = 5 * MiB  # S3's minimum size of every part but the last
_NAME_RE = re.compile(r"(\d{20})-(\d{1,15})-([0-9a-f]{16})")


@dataclass(frozen=True)
class Piece:
    start: int
    size: int
    name: str

    @property
    def end(self) -> int:
        return self.start + self.size


def piece_name(start: int, size: int, token: str) -> str:
    return f"{start:020d}-{size}-{token}"


def recorded_pieces(names: Sequence[str]) -> list[Piece]:
    """The recorded pieces in order; ValueError unless they follow on from offset 0."""
    pieces = []
    for name in names:
        match = _NAME_RE.fullmatch(name)
        if match is None:
            raise ValueError(f"not the name of an upload piece: {name!r}")
        pieces.append(Piece(int(match.group(1)), int(match.group(2)), name))
    pieces.sort(key=lambda piece: piece.start)
    end = 0
    for piece in pieces:
        if piece.start != end:
            raise ValueError(f"the recorded pieces leave a gap or overlap at {end}")
        end = piece.end
    return pieces


class PieceWriter(UploadWriter):
    """Buffers a PATCH's bytes into pieces of PIECE_BYTES (the last one smaller), each PUT
    under a key of its own. A piece's PUT goes on while the next one fills (at most one in
    flight, so the body keeps arriving while the store takes the last piece); its error
    surfaces on the next write or on close. Aborted, it drops what it buffered, stops the PUT
    in flight and hands every piece it began to PUT to `remove` (a PUT cut short may still
    have landed)."""

    def __init__(
        self,
        put: Callable[[str, bytes], Awaitable[None]],
        position: int,
        remove: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._put = put
        self._remove = remove
        self._position = position
        self._token = secrets.token_hex(8)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._sending: asyncio.Future[None] | None = None
        self._written: list[str] = []
        self._begun: list[str] = []
        self._aborted = False

    @property
    def pieces(self) -> list[str]:
        return list(self._written)

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
        begun, self._begun = self._begun, []
        self._written.clear()
        if begun and self._remove is not None:
            with contextlib.suppress(Exception):
                await self._remove(begun)

    async def _flush(self, *, in_background: bool) -> None:
        await self._settle()  # one PUT at a time: pieces are recorded in order
        if not self._buffered or self._aborted:
            return
        body = b"".join(self._buffer)
        name = piece_name(self._position, len(body), self._token)
        self._begun.append(name)
        self._position += len(body)
        self._buffer.clear()
        self._buffered = 0
        sending = self._send(name, body)
        if in_background:
            self._sending = asyncio.ensure_future(sending)
        else:
            await sending

    async def _send(self, name: str, body: bytes) -> None:
        await self._put(name, body)
        self._written.append(name)

    async def _settle(self) -> None:
        """Wait for the PUT in flight, if any; its error is raised here. Cancelled meanwhile,
        the PUT is left to `abort` to wait for before removing what it began."""
        if self._sending is not None:
            try:
                await self._sending
            finally:
                if self._sending.done():
                    self._sending = None


def parts(pieces: list[Piece]) -> Iterator[list[Piece]]:
    """The pieces grouped into parts: a piece of 5 MiB or more alone (copied server-side),
    smaller ones together until the part reaches 5 MiB (only the last part may be smaller)."""
    gathered: list[Piece] = []
    gathered_bytes = 0
    for piece in pieces:
        if not gathered and piece.size >= MIN_PART_BYTES:
            yield [piece]
            continue
        gathered.append(piece)
        gathered_bytes += piece.size
        if gathered_bytes >= MIN_PART_BYTES:
            yield gathered
            gathered, gathered_bytes = [], 0
    if gathered:
        yield gathered
