"""Responses the registry sends often enough to deserve their own fast shape."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
from starlette.types import Receive, Scope, Send

from berth.domain.ranges import ByteRange
from berth.services.blobs import missing_blob

# Called with the number of body bytes sent once they have been handed to the server (outbound
# traffic metering); a HEAD sends none.
OnSent = Callable[[int], None]

PATHSEND = "http.response.pathsend"
# Pieces a blob file is read and handed to the server in. 512 KiB was the fastest measured
# (256 KiB and 1 MiB close; 128 KiB, granian's own piece, no faster than pathsend); the server
# holds several pieces per slow client, hence the bound on such sends below.
PIECE = 512 * 1024
# Used when every fast send is taken and pathsend cannot serve (a range): memory over speed.
SMALL_PIECE = 128 * 1024


def _blob_headers(digest: str, length: int) -> list[tuple[bytes, bytes]]:
    """A blob's headers, known up front: content-addressed, so the digest is the ETag."""
    return [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(length).encode()),
        (b"docker-content-digest", digest.encode()),
        (b"etag", f'"{digest}"'.encode()),
        (b"accept-ranges", b"bytes"),
    ]


class BlobFileResponse:
    """A blob, or one range of it (`part`), from a local file, read by Berth in large pieces
    (`FilePieces`) while this worker has few such sends in flight, else whole by ASGI pathsend
    (the server reads the file itself, in small pieces: slower, but its memory per slow
    client is small). Measured: a 256 MiB pull in 512 KiB pieces from Python ran at 1.3-1.45x
    Distribution's rate with 0.7x pathsend's CPU (bench/findings.md)."""

    def __init__(
        self,
        path: str,
        size: int,
        digest: str,
        on_sent: OnSent | None = None,
        part: ByteRange | None = None,
    ) -> None:
        self.path = path
        self.digest = digest
        self.part = part
        self.start, self.length = (part.start, part.length) if part else (0, size)
        self.on_sent = on_sent
        self.status, self.headers = _blob_answer(digest, size, part)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            await send(
                {"type": "http.response.start", "status": self.status, "headers": self.headers}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        with _FAST_SENDS.slot() as fast:
            if not fast and self.part is None and PATHSEND in scope.get("extensions", {}):
                await send(
                    {"type": "http.response.start", "status": self.status, "headers": self.headers}
                )
                await send({"type": "http.response.pathsend", "path": self.path})
                if self.on_sent is not None:
                    self.on_sent(self.length)
                return
            try:
                pieces = FilePieces(self.path, PIECE if fast else SMALL_PIECE)
            except FileNotFoundError:  # collected since it was checked: answered as missing
                raise missing_blob(self.digest) from None
            with pieces:
                await send(
                    {"type": "http.response.start", "status": self.status, "headers": self.headers}
                )
                await self._send_pieces(pieces, receive, send)

    async def _send_pieces(self, pieces: FilePieces, receive: Receive, send: Send) -> None:
        # granian drops what is sent after the client went away, without a word; `receive`
        # says so instead: watched, so that a gone client's file is not read to its end and
        # bytes never sent are not counted.
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
        offset, end = self.start, self.start + self.length
        try:
            while offset < end and not gone.is_set():
                piece = await pieces.read(offset, end - offset)
                if not piece:
                    break  # the file is shorter than recorded (damage the scrub reports)
                offset += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": offset < end})
        finally:
            watcher.cancel()
            if self.on_sent is not None:
                self.on_sent(offset - self.start)
        if (offset < end or not self.length) and not gone.is_set():
            await send({"type": "http.response.body", "body": b""})  # the body's end


class _SendSlots:
    """How many blob sends of large pieces this worker has in flight, at most `limit`: a slow
    client's send keeps several pieces queued in the server, so the count bounds the memory
    they take (limit x several x PIECE) whatever the number of slow clients."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """True, holding a slot until the block ends, if one was free; else False."""
        if self.taken >= self.limit:
            yield False
            return
        self.taken += 1
        try:
            yield True
        finally:
            self.taken -= 1


_FAST_SENDS = _SendSlots(4)

# Linux's preadv2 flag: fail with EAGAIN instead of waiting for the disk.
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
_PROBE = bytearray(1)


class FilePieces:
    """An open file read in pieces for the event loop: a piece the page cache holds is read
    on the loop (a copy in memory, cheaper than a thread hop), one it does not is read in a
    thread, so a cold disk never stalls the worker's other requests. The file stays readable
    to the end once open, even if it is removed meanwhile (garbage collection, cache
    eviction)."""

    def __init__(self, path: str, piece: int) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.piece = piece

    def __enter__(self) -> FilePieces:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)

    async def read(self, offset: int, most: int) -> bytes:
        """Up to one piece from `offset`, at most `most` bytes; b"" at the file's end."""
        length = min(self.piece, most)
        if _in_page_cache(self.fd, offset + length - 1):
            return os.pread(self.fd, length, offset)
        return await anyio.to_thread.run_sync(os.pread, self.fd, length, offset)


def _in_page_cache(fd: int, offset: int) -> bool:
    """Whether the byte at `offset` can be read without waiting for the disk (past the end
    counts as readable). The last byte of a piece stands for the piece: the kernel reads a
    file ahead in order, so a piece whose end is cached is cached throughout in practice,
    and a miss between costs one short wait."""
    global _NOWAIT
    if _NOWAIT is None:
        return False
    try:
        os.preadv(fd, [_PROBE], offset, _NOWAIT)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        _NOWAIT = None  # a filesystem (or kernel) without it: reads go to threads
        return False
    return True


class BlobBytesResponse(BlobFileResponse):
    """A small blob, or one range of it, whose bytes were read (and verified) already: sent
    from memory."""

    def __init__(
        self,
        content: bytes,
        digest: str,
        on_sent: OnSent | None = None,
        part: ByteRange | None = None,
    ) -> None:
        super().__init__("", len(content), digest, on_sent, part)
        self.content = content[self.start : self.start + self.length]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        body = b"" if scope["method"] == "HEAD" else self.content
        await send({"type": "http.response.body", "body": body})
        if self.on_sent is not None and body:
            self.on_sent(len(body))


def _blob_answer(
    digest: str, size: int, part: ByteRange | None
) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The status and headers of a blob's answer: 206 with its Content-Range for one range
    (`part`), else 200 for the whole blob of `size` bytes."""
    if part is None:
        return 200, _blob_headers(digest, size)
    headers = _blob_headers(digest, part.length)
    headers.append((b"content-range", part.content_range.encode()))
    return 206, headers


class BlobHeadResponse:
    """A HEAD of a blob, or of one range of it, from a store without local files (S3): the
    headers the GET would send (206 and Content-Range for a range), no body."""

    def __init__(self, digest: str, size: int, part: ByteRange | None = None) -> None:
        self.status, self.headers = _blob_answer(digest, size, part)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b""})


class BlobStreamResponse:
    """A blob, or one range of it, streamed from a store without local files (S3)."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        digest: str,
        size: int,
        part: ByteRange | None = None,
        on_sent: OnSent | None = None,
    ) -> None:
        self.chunks = chunks
        self.on_sent = on_sent
        self.status, self.headers = _blob_answer(digest, size, part)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        # granian (ASGI 2.3) drops what is sent after the client went away without a word;
        # its `receive` says so instead. Watched, so that the store's read stops (and a copy
        # being kept for the node's cache is dropped) and bytes never sent are not counted.
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
        sent = 0
        try:
            async for chunk in self.chunks:
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        finally:
            watcher.cancel()
            if self.on_sent is not None:
                self.on_sent(sent)
            close = getattr(self.chunks, "aclose", None)  # a client gone: release the read
            if close is not None:
                await close()
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b""})


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # the request's (empty) body
    gone.set()


def etag_matches(if_none_match: list[str], digest: str) -> bool:
    """Whether the If-None-Match header values name the entity tag `"<digest>"` (a manifest's
    or blob's ETag): "*", or any tag of the comma-separated lists, compared weakly as RFC 9110 says for
    If-None-Match (a W/ prefix is ignored). A bare digest without quotes matches too, as
    Distribution accepts it."""
    for value in if_none_match:
        for candidate in value.split(","):
            tag = candidate.strip().removeprefix("W/")
            if tag == "*" or tag.strip('"') == digest:
                return True
    return False


class NotModifiedResponse:
    """304 to a conditional GET or HEAD of a manifest or blob whose If-None-Match names its
    ETag: the ETag and digest, no body and no content headers. Nothing is sent, so nothing
    is counted as outbound traffic."""

    def __init__(self, digest: str) -> None:
        self.headers = [
            (b"docker-content-digest", digest.encode("latin-1")),
            (b"etag", f'"{digest}"'.encode("latin-1")),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 304, "headers": self.headers})
        await send({"type": "http.response.body", "body": b""})


class ManifestResponse:
    """A manifest (a HEAD: its headers and no body), with the headers Starlette's `Response`
    gives it, built straight from the manifest: a pull by tag or digest sends nothing else.
    With `on_sent`, the body is counted once it is sent."""

    def __init__(
        self,
        digest: str,
        media_type: str,
        content: bytes,
        *,
        head: bool = False,
        on_sent: OnSent | None = None,
    ) -> None:
        self.body = b"" if head else content
        self.on_sent = on_sent
        if media_type.startswith("text/") and "charset=" not in media_type.lower():
            media_type += "; charset=utf-8"  # as Starlette would (no manifest type is text/)
        self.headers = [
            (b"docker-content-digest", digest.encode("latin-1")),
            (b"etag", f'"{digest}"'.encode("latin-1")),
            (b"content-length", str(len(content)).encode()),
            (b"content-type", media_type.encode("latin-1")),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
        if self.on_sent is not None:
            self.on_sent(len(self.body))
