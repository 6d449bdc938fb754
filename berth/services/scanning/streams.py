"""The streams a layer is read through: a layer's compressed bytes inflated as they are read
(gzip, bzip2 and xz, by their magic bytes), forward only, each step bounded; and a blocking
file over a blob store's async reader, for `tarfile` in a worker thread."""

from __future__ import annotations

import asyncio
import bz2
import io
import lzma
import zlib
from collections.abc import AsyncIterator, Callable
from typing import IO, Any, Protocol

# Compressed bytes read at a time, and the most bytes one decompression step makes (gzip
# inflates up to ~1000-fold): together they bound a layer's memory whatever it inflates to.
COMPRESSED_READ = 64 * 1024
INFLATED_STEP = 1024 * 1024
INFLATED_BUFFER = 64 * 1024  # tar headers are read from it, 512 bytes at a time


class _Decompressor(Protocol):
    """bz2's and lzma's decompressors, and `_GzipDecompressor`: input they cannot use yet is
    kept (`needs_input` is false until it is used), and a step makes at most `max_length`
    bytes."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


class _GzipDecompressor:
    """zlib's gzip decompressor in bz2's and lzma's way: the input a step leaves
    (`unconsumed_tail`) is kept for the next step instead of handed back."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a gzip header and trailer
        self._tail = b""

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    @property
    def needs_input(self) -> bool:
        return not self._tail

    @property
    def unused_data(self) -> bytes:
        return self._zlib.unused_data

    def decompress(self, data: bytes, max_length: int, /) -> bytes:
        pending = self._tail + data if self._tail and data else self._tail or data
        inflated = self._zlib.decompress(pending, max_length)
        self._tail = self._zlib.unconsumed_tail
        return inflated


def _decompressor_for(head: bytes) -> Callable[[], _Decompressor] | None:
    """The decompressor for a layer starting with `head` (its magic bytes), or None for a tar
    stored as it is."""
    if head.startswith(b"\x1f\x8b"):
        return _GzipDecompressor
    if head.startswith(b"BZh"):
        return bz2.BZ2Decompressor
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor
    return None


class Inflated(io.RawIOBase):
    """A layer's tar stream, decompressed as it is read, seekable forward only: tarfile's
    seekable mode skips an entry's data with one seek, which inflates it INFLATED_STEP bytes
    at a time and drops them. (tarfile's stream mode re-sliced all it had inflated for each
    4 KiB it skipped: zeros passed at ~40 MB/s, a tenth of zlib's speed.) Concatenated
    compressed streams (gzip members) are read on, as runtimes read them."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._input = source.read(6)  # as long as the longest magic (xz's)
        self._make = _decompressor_for(self._input)
        self._decompressor = self._make() if self._make is not None else None
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        data = self._next(len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self._position if whence == io.SEEK_CUR else 0)
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._position:
            raise io.UnsupportedOperation("a layer is read forward only")
        while self._position < target:
            skipped = len(self._next(min(INFLATED_STEP, target - self._position)))
            if not skipped:
                break  # past the end: the next read finds nothing, as with a file
            self._position += skipped
        return self._position

    def _take_input(self, most: int) -> bytes:
        data, self._input = self._input[:most], self._input[most:]
        return data or self._source.read(most)

    def _next(self, most: int) -> bytes:
        """Up to `most` more bytes of the tar stream; b"" at its end."""
        if self._decompressor is None:
            return self._take_input(most)
        while True:
            decompressor = self._decompressor
            if decompressor.eof:
                data = decompressor.unused_data or self._take_input(COMPRESSED_READ)
                if not data:
                    return b""
                assert self._make is not None
                decompressor = self._decompressor = self._make()
            else:
                data = self._take_input(COMPRESSED_READ) if decompressor.needs_input else b""
            inflated = decompressor.decompress(data, most)
            if inflated:
                return inflated
            if not data and not decompressor.eof:
                raise EOFError("the compressed layer ends before its compressed stream does")


class AsyncStream(io.RawIOBase):
    """A blocking file over a blob store's async reader, for `tarfile` in a worker thread:
    each read waits for the next chunk from the event loop; nothing is buffered past it."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._pending = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._done:
            future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            chunk = future.result()
            if chunk is None:
                self._done = True
            else:
                self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None
