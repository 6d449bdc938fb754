"""Receiving and storing a request's body: its Content-Range, the request's turn on the upload,
hashing and writing its chunks overlapped with receiving them, stopping when the upload is
cancelled meanwhile, and moving the upload's offset on (compare and set)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import select, update

from berth.domain.errors import BlobUploadInvalid, BlobUploadUnknown, RangeNotSatisfiable
from berth.metadata.tables import upload_pieces, uploads
from berth.services.uploads.faults import StorageFaults
from berth.services.uploads.hashes import UploadHashes, saved_state
from berth.services.uploads.upload import Upload
from berth.storage.base import UploadWriter

logger = logging.getLogger("berth.uploads")
T = TypeVar("T")

BUFFER_BYTES = 4 * 1024 * 1024
# How often a request still receiving an upload's bytes checks that the upload was not
# cancelled meanwhile (in any process or node): a cancel does not wait for it.
CANCEL_CHECK_SECONDS = 2.0
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")


def parse_content_range(value: str) -> tuple[int, int]:
    match = _CONTENT_RANGE_RE.fullmatch(value.strip())
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise BlobUploadInvalid(f"invalid Content-Range {value!r}: expected <start>-<end>")
    return int(match.group(1)), int(match.group(2))


def _hash_parts(hasher: Any, parts: list[bytes]) -> None:
    for part in parts:
        hasher.update(part)


async def pipe(writer: UploadWriter, hasher: Any, body: AsyncIterator[bytes]) -> int:
    """Write and hash the body; returns bytes written. Hash and write overlap with receiving.
    The body's chunks go to both as received, a batch of them at a time (one thread hand-off
    each for hashing and writing): never copied into one buffer."""
    pending: asyncio.Future[Any] | None = None
    parts: list[bytes] = []
    buffered = written = 0

    async def consume(batch: list[bytes]) -> None:
        await asyncio.gather(asyncio.to_thread(_hash_parts, hasher, batch), writer.write(batch))

    try:
        async for chunk in body:
            if not chunk:
                continue
            parts.append(chunk)
            buffered += len(chunk)
            if buffered >= BUFFER_BYTES:
                if pending is not None:
                    await pending
                # A list of its own: the one being filled must not change under the threads.
                pending = asyncio.ensure_future(consume(parts))
                parts = []
                written += buffered
                buffered = 0
        if pending is not None:
            await pending
            pending = None
        if parts:
            await consume(parts)
            written += buffered
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
    return written


def _length_mismatch(upload_id: str, received: int, declared: int) -> BlobUploadInvalid:
    # The HTTP server frames bodies by their Content-Length, so this is never expected: said
    # in the log too, since a body cut short or run long would otherwise surface as a wrong
    # digest, or as a chunk of the wrong size acknowledged.
    logger.error(
        "upload %s: the request body held %d bytes, its Content-Length %d; nothing of it stored",
        upload_id,
        received,
        declared,
    )
    return BlobUploadInvalid(
        f"the request body held {received} bytes but its Content-Length said {declared}; "
        "nothing of it was stored, send the chunk again"
    )


class UploadBodies(StorageFaults, UploadHashes):
    @contextlib.asynccontextmanager
    async def _lock(self, upload_id: str) -> AsyncIterator[None]:
        """This process's turn on the upload, then the store's (other processes and nodes)."""
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        async with lock, contextlib.AsyncExitStack() as held:
            try:
                await held.enter_async_context(self.store.upload_exclusive(upload_id))
            except FileNotFoundError:
                # Its directory gone: the upload's data is gone for all, so it ends.
                raise await self._scratch_gone(upload_id) from None
            except OSError as exc:
                # Its lock file not made (the disk read-only or full): not this request's
                # turn, so the upload is not its to end. On a blob directory several nodes
                # share, another node's request may hold the turn and be writing the upload;
                # else its client goes on once the disk takes writes, or the abandoned-uploads
                # job removes it after `upload_expiry`.
                refusal = self._refusal_of(exc, upload_kept=True)
                if refusal is None:
                    raise
                raise refusal from None
            try:
                yield
            except BlobUploadUnknown:
                # It ended while this request waited or wrote (a cancel waits for no request):
                # what this one stored goes too, whoever finishes last removing the rest.
                await self._remove_scratch(upload_id)
                raise

    async def _unless_cancelled(self, upload_id: str, work: Awaitable[T]) -> T:
        """`work` (receiving and storing a request's body), stopped with BLOB_UPLOAD_UNKNOWN
        once the upload is cancelled (checked every CANCEL_CHECK_SECONDS): a client may send
        a body as slowly as it likes, and a cancel must not wait for it."""
        working = asyncio.ensure_future(work)
        watching = asyncio.ensure_future(self._until_ended(upload_id))
        try:
            await asyncio.wait({working, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not working.done():
                working.cancel()
            # The work's own cleanup (closing its writer) runs to its end either way.
            await asyncio.gather(working, watching, return_exceptions=True)
        if working.cancelled():
            raise BlobUploadUnknown(
                f"upload {upload_id!r} was cancelled while this request sent it"
            )
        return working.result()

    async def _until_ended(self, upload_id: str) -> None:
        """Returns once the upload has ended (its row gone); never while the database cannot
        say (the request goes on, as it would have)."""
        while True:
            await asyncio.sleep(CANCEL_CHECK_SECONDS)
            with contextlib.suppress(Exception):
                async with self.db.read() as conn:
                    found = await conn.execute(
                        select(uploads.c.id).where(uploads.c.id == upload_id)
                    )
                    if found.first() is None:
                        return

    async def append(
        self,
        upload: Upload,
        body: AsyncIterator[bytes],
        content_range: str | None,
        declared_length: int | None = None,
    ) -> Upload:
        """Append a chunk. A Content-Range that does not start at the current end is a 416.
        `upload` is as the request found it: a chunk without a Content-Range starts at its
        offset, so when another request moved the upload on while this one waited for its
        turn (a client's retry of the chunk), this one is a 416 too, not appended after it. A
        chunk of another length than its Content-Range says is a 416 and not stored either
        (the client would go on from an offset the upload does not have).
        `declared_length`: the request's Content-Length, if it had one; a body of another
        length is refused and nothing of it stored."""
        arrived_at = upload.offset
        declared: int | None = None  # the chunk's length, as its Content-Range says
        async with self._lock(upload.id):
            upload = await self._refresh(upload)
            if content_range:
                start, end = parse_content_range(content_range)
                declared = end - start + 1
                if start != upload.offset:
                    raise RangeNotSatisfiable(
                        f"chunk starts at {start} but the upload has {upload.offset} bytes; "
                        "send chunks in order",
                        upload.offset,
                    )
            elif arrived_at != upload.offset:
                raise RangeNotSatisfiable(
                    f"another request moved the upload from {arrived_at} to {upload.offset} "
                    "bytes while this one waited; go on from there",
                    upload.offset,
                )
            async with self._storage_faults(upload.id):
                hasher = await self._hasher_at(upload)
                writer = await self.store.open_upload(upload.id, upload.offset)
                try:
                    written = await self._unless_cancelled(upload.id, pipe(writer, hasher, body))
                    if declared_length is not None and written != declared_length:
                        raise _length_mismatch(upload.id, written, declared_length)
                    if declared is not None and written not in (0, declared):
                        raise RangeNotSatisfiable(
                            f"the chunk has {written} bytes but its Content-Range "
                            f"{content_range!r} says {declared}; nothing of it was stored",
                            upload.offset,
                        )
                    await writer.close()
                except BaseException:
                    # The chunk failed (its body broke off, the store failed): the writer
                    # stores nothing more and the client hears the first error, not the
                    # store's answer to storing the rest. Bytes past `offset` are never read.
                    self._hashes.drop(upload.id)
                    await writer.abort()
                    raise
            started_at = upload.offset
            upload = replace(
                upload,
                offset=upload.offset + written,
                digest_at_offset="sha256:" + hasher.copy().hexdigest(),
                hash_state=saved_state(hasher),
            )
            async with self.db.write() as conn:
                moved = await conn.execute(
                    update(uploads)
                    .where(uploads.c.id == upload.id, uploads.c.offset == started_at)
                    .values(
                        offset=upload.offset,
                        digest_at_offset=upload.digest_at_offset,
                        hash_state=upload.hash_state,
                        updated_at=self.db.clock(),
                    )
                )
                if moved.rowcount == 1 and writer.pieces:
                    await conn.execute(
                        upload_pieces.insert(),
                        [{"upload_id": upload.id, "name": name} for name in writer.pieces],
                    )
            if moved.rowcount != 1:
                await writer.abort()  # what it stored is not part of the upload
                await self._lost_race(upload.id)
            self._hashes.put(upload.id, upload.offset, hasher)
            return upload

    async def _lost_race(self, upload_id: str) -> None:
        """Another request moved the upload on (or ended it) while this one was writing:
        this one's bytes are not part of it."""
        self._hashes.drop(upload_id)
        current = await self._refresh_id(upload_id)
        raise RangeNotSatisfiable(
            f"another request moved the upload to {current.offset} bytes meanwhile; "
            "go on from there",
            current.offset,
        )
