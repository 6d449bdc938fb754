"""The S3 driver's writers: an object written as the parts of a multipart upload, one PATCH's
bytes as one piece of an upload (see `s3_pieces`), and a blob pushed in one PUT written
straight to its key."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from berth.storage.base import BlobWriter, UploadWriter
from berth.storage.s3_errors import ObjectStoreError
from berth.storage.s3_pieces import (
    PIECE_BYTES,
    PartBuffer,
    parted_piece_key,
    parted_piece_name,
    piece_name,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from berth.storage.s3_objects import S3Objects


class _MultipartObject:
    """An object written as the parts of a multipart upload of its key, one part at a time in
    order (PartBuffer's bodies); S3 shows it only once `complete` succeeds, so an object cut
    short is never visible. One never completed is aborted by `abort`, or else by the
    abandoned-uploads job (`abort_unfinished_commits`)."""

    def __init__(self, store: S3Objects, key: str) -> None:
        self._store = store
        self.key = key
        self._multipart_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self.completed = False
        self.store_failed = False  # a part or the completion spent its tries (see `abort`)

    @property
    def started(self) -> bool:
        return self._multipart_id is not None

    async def send_part(self, body: bytes) -> None:
        with self._noting_failure():
            s3 = await self._store.s3()
            bucket = self._store.location.bucket
            with self._store.errors(self.key):
                if self._multipart_id is None:
                    created = await s3.create_multipart_upload(Bucket=bucket, Key=self.key)
                    self._multipart_id = created["UploadId"]
                number = len(self._parts) + 1
                sent = await s3.upload_part(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self._multipart_id,
                    PartNumber=number,
                    Body=body,
                )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    @contextlib.contextmanager
    def _noting_failure(self) -> Iterator[None]:
        try:
            yield
        except ObjectStoreError:
            self.store_failed = True
            raise

    async def complete(self) -> None:
        if self.completed or self._multipart_id is None:
            raise RuntimeError("completing a multipart object with no part, or again")
        with self._noting_failure():
            s3 = await self._store.s3()
            with self._store.errors(self.key):
                await s3.complete_multipart_upload(
                    Bucket=self._store.location.bucket,
                    Key=self.key,
                    UploadId=self._multipart_id,
                    MultipartUpload={"Parts": self._parts},
                )
        self.completed = True

    async def abort(self) -> None:
        """Drop the parts unless completed (best effort, never raises). After the store
        failed a part or the completion, in the background: that failure spent a whole
        `s3_attempts` budget, and the caller's client is told 503 now, not after the abort
        has spent another (the abandoned-uploads job aborts what it leaves)."""
        if self._multipart_id is None or self.completed:
            return
        multipart_id, self._multipart_id = self._multipart_id, None
        aborting = self._abort(multipart_id)
        if self.store_failed:
            self._store.in_background(aborting)
        else:
            await aborting

    async def _abort(self, multipart_id: str) -> None:
        with contextlib.suppress(Exception):
            s3 = await self._store.s3()
            await s3.abort_multipart_upload(
                Bucket=self._store.location.bucket, Key=self.key, UploadId=multipart_id
            )


class PieceWriter(UploadWriter):
    """One PATCH's bytes as one piece of the upload (see `s3_pieces`): buffered up to
    PIECE_BYTES, then, if the PATCH ends there, one PUT; if it goes on, the parts of a
    multipart upload of the piece's own key, completed when the PATCH's last byte is in."""

    def __init__(self, store: S3Objects, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start
        self._token = secrets.token_hex(8)
        self._length = 0
        self._put_key: str | None = None  # a short PATCH's one PUT, once begun
        self._put_failed = False  # it spent its tries (see `abort`)
        self._object = _MultipartObject(store, prefix + parted_piece_key(start, self._token))
        self._recorded: str | None = None
        self._buffer = PartBuffer(self._send)

    @property
    def pieces(self) -> list[str]:
        return [self._recorded] if self._recorded else []

    async def write(self, parts: Sequence[bytes]) -> None:
        await self._buffer.write(parts)

    async def _send(self, body: bytes) -> None:
        # PartBuffer hands on less than PIECE_BYTES only as the write's last body: if it is
        # also the first, the whole PATCH is short and goes in one PUT.
        if not self._object.started and len(body) < PIECE_BYTES:
            name = piece_name(self._start, len(body), self._token)
            self._put_key = self._prefix + name
            try:
                await self._store.put(self._put_key, body)
            except ObjectStoreError:
                self._put_failed = True
                raise
            self._recorded = name
        else:
            await self._object.send_part(body)
        self._length += len(body)

    async def close(self) -> None:
        await self._buffer.close()
        if self._object.started:
            await self._object.complete()
            self._recorded = parted_piece_name(self._start, self._length, self._token)

    async def abort(self) -> None:
        self._recorded = None
        # A PUT or a completion cut short may still have landed, and one that did (or the
        # piece of a PATCH that lost the race for the offset) is no part of the upload.
        begun = [self._put_key] if self._put_key else []
        if self._object.started:
            begun.append(self._object.key)
        await self._buffer.abort()
        await self._object.abort()
        if not begun:
            return
        if self._put_failed or self._object.store_failed:
            # The store has just failed this PATCH after a whole `s3_attempts` budget: its
            # client is told 503 now, not once the removal has spent another (~15 s each).
            self._store.in_background(self._store.delete_unrecorded(begun))
        else:
            await self._store.remove_unrecorded(begun)


class MultipartBlobWriter(BlobWriter):
    """A blob written as the parts of a multipart upload of its own key (PartBuffer's bodies,
    16 MiB or more but the last), whose PUT goes on while the next fills. S3 shows the object
    only once `commit` completes the upload, so a wrong digest, a body cut short or a node
    that dies leaves nothing visible."""

    def __init__(self, store: S3Objects, key: str) -> None:
        self._object = _MultipartObject(store, key)
        self._buffer = PartBuffer(self._object.send_part)

    async def write(self, parts: Sequence[bytes]) -> None:
        await self._buffer.write(parts)

    async def close(self) -> None:
        await self._buffer.close()

    async def commit(self) -> None:
        await self._object.complete()

    async def abort(self) -> None:
        """Drop what was written unless committed (best effort, never raises)."""
        await self._buffer.abort()
        await self._object.abort()
