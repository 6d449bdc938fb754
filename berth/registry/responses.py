"""Responses the registry sends often enough to deserve their own fast shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.types import Receive, Scope, Send

from berth.domain.ranges import ByteRange

CHUNK = 1024 * 1024

# Called with the number of body bytes sent once they have been handed to the server (outbound
# traffic metering); a HEAD sends none.
OnSent = Callable[[int], None]


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
    """A blob, or one range of it (`part`), from a local file; a whole blob with ASGI
    pathsend is sent by the server without Python."""

    def __init__(
        self,
        path: str,
        size: int,
        digest: str,
        on_sent: OnSent | None = None,
        part: ByteRange | None = None,
    ) -> None:
        self.path = path
        self.part = part
        self.start, self.length = (part.start, part.length) if part else (0, size)
        self.on_sent = on_sent
        self.status, self.headers = _blob_answer(digest, size, part)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
        elif self.part is None and "http.response.pathsend" in scope.get("extensions", {}):
            await send({"type": "http.response.pathsend", "path": self.path})
            if self.on_sent is not None:
                self.on_sent(self.length)
        else:
            async with await anyio.open_file(self.path, "rb") as handle:
                if self.start:
                    await handle.seek(self.start)
                remaining = self.length
                try:
                    while remaining > 0:
                        chunk = await handle.read(min(CHUNK, remaining))
                        if not chunk:
                            break
                        await send(
                            {
                                "type": "http.response.body",
                                "body": chunk,
                                "more_body": remaining > len(chunk),
                            }
                        )
                        remaining -= len(chunk)
                finally:
                    if self.on_sent is not None:
                        self.on_sent(self.length - remaining)
            if remaining or not self.length:  # the body's end is not sent yet
                await send({"type": "http.response.body", "body": b""})


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
