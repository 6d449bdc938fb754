"""Completing an upload: its last chunk, the digest verified, the blob stored (straight from a
whole blob sent in one request, else from the scratch) while garbage collection may be
removing it, and recorded with the repository's link."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.digests import Digest, parse_digest
from berth.domain.errors import BlobUploadUnknown, DigestInvalid, RangeNotSatisfiable, Unavailable
from berth.domain.references import RepositoryRef
from berth.metadata.database import RETRY_AFTER_SECONDS
from berth.metadata.tables import (
    blob_removals,
    blobs,
    gc_runs,
    repository_blobs,
    upload_pieces,
    uploads,
)
from berth.services.gc.runs import RUNNING
from berth.services.uploads.bodies import UploadBodies, pipe
from berth.services.uploads.upload import Upload
from berth.storage.base import BlobWriter

logger = logging.getLogger("berth.uploads")

# How long a push of a blob that garbage collection is removing from the store waits for the
# removal (one request to the store) before it is answered 503 with Retry-After.
REMOVAL_WAIT_SECONDS = 60.0
REMOVAL_POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class _HeldRow:
    """A blob's row as a push holds it before storing the object."""

    token: str | None  # None: a row from before tokens
    made: bool  # by this push
    removal_voided: bool  # a failed GC run's note of removing its object was voided


class _BeingRemoved(Exception):
    """A running GC run is removing the blob's object from the store."""


class UploadCommits(UploadBodies):
    async def complete(
        self,
        repo: RepositoryRef,
        upload: Upload,
        digest: str,
        body: AsyncIterator[bytes] | None,
        content_range: str | None,
        declared_length: int | None = None,
    ) -> str:
        """Finish an upload: append the last chunk, verify the digest, commit, link to repo."""
        expected = parse_digest(digest)
        if body is not None and upload.offset == 0 and not content_range and declared_length:
            writer = self.store.blob_writer(str(expected), declared_length)
            if writer is not None:  # the whole blob in this request, and a store it helps
                return await self._complete_in_one(repo, upload, expected, writer, body)
        if body is not None:
            upload = await self.append(upload, body, content_range, declared_length)
        async with self._lock(upload.id):
            upload, pieces = await self._with_pieces(upload.id)
            async with self._storage_faults(upload.id):
                actual, rehashed = await self._final_digest(upload, expected.algorithm, pieces)
                if actual != str(expected) and not rehashed:
                    actual = await self._recheck_stored(upload, str(expected), actual, pieces)
                if actual != str(expected):
                    await self._discard(upload.id)
                    raise DigestInvalid(
                        f"uploaded content ({upload.offset} bytes) has digest {actual}, not "
                        f"{expected}; upload discarded",
                        {"expected": str(expected), "actual": actual, "size": upload.offset},
                    )
                try:
                    await self._store_blob(
                        repo,
                        upload,
                        actual,
                        lambda: self.store.commit_upload(upload.id, actual, pieces),
                    )
                finally:
                    # Gone whatever happened, as if it had been renamed into place: a client
                    # must not go on writing into the blob's file.
                    await self.store.delete_upload(upload.id)
            self._hashes.drop(upload.id)
            return actual

    async def _complete_in_one(
        self,
        repo: RepositoryRef,
        upload: Upload,
        expected: Digest,
        writer: BlobWriter,
        body: AsyncIterator[bytes],
    ) -> str:
        """A whole blob in one request (a push in one PUT, its length declared): written
        straight where the blob is kept while hashed, committed there once its digest is
        verified, with no scratch copy to commit from. Nothing of it is visible otherwise."""
        arrived_at = upload.offset
        async with self._lock(upload.id):
            upload = await self._refresh(upload)
            if upload.offset != arrived_at:
                raise RangeNotSatisfiable(
                    f"another request moved the upload from {arrived_at} to {upload.offset} "
                    "bytes while this one waited; go on from there",
                    upload.offset,
                )
            hasher = hashlib.new(expected.algorithm)
            try:
                async with self._storage_faults(upload.id):
                    length = await self._unless_cancelled(upload.id, pipe(writer, hasher, body))
                    await writer.close()
                    actual = f"{expected.algorithm}:{hasher.hexdigest()}"
                    if actual != str(expected):
                        await self._discard(upload.id)
                        raise DigestInvalid(
                            f"uploaded content ({length} bytes) has digest {actual}, not "
                            f"{expected}; upload discarded",
                            {"expected": str(expected), "actual": actual, "size": length},
                        )
                    await self._store_blob(
                        repo, replace(upload, offset=length), actual, writer.commit, once=True
                    )
            finally:
                await writer.abort()  # nothing to drop once committed
        self._hashes.drop(upload.id)
        return str(expected)

    async def _with_pieces(self, upload_id: str) -> tuple[Upload, list[str]]:
        """The upload and the pieces that hold its bytes, read in one statement (one snapshot):
        on a store of pieces nothing holds a PATCH back while the upload is committed, and
        pieces a PATCH recorded between two reads would be committed under the digest of the
        bytes before them."""
        query = (
            select(uploads, upload_pieces.c.name.label("piece"))
            .select_from(
                uploads.outerjoin(upload_pieces, upload_pieces.c.upload_id == uploads.c.id)
            )
            .where(uploads.c.id == upload_id)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise BlobUploadUnknown(f"upload {upload_id!r} is unknown, finished or cancelled")
        return Upload.of(rows[0]), [row.piece for row in rows if row.piece is not None]

    async def _store_blob(
        self,
        repo: RepositoryRef,
        upload: Upload,
        digest: str,
        store_object: Callable[[], Awaitable[None]],
        *,
        once: bool = False,
    ) -> None:
        """Store the upload as blob `digest` and record it, making no request to the store
        while a row is locked (with the store slow, every push of the blob and garbage
        collection would wait on that lock): hold the blob's row, store the object, then
        link it if the row is still the one held. Garbage collection deletes a row first and
        removes its object after, noted in `blob_removals` until done; a push waits for such
        a removal. A blob the registry has already is not stored again (`_stored_already`).
        A row deleted since it was held (its object maybe removed after this one stored it,
        or before this one found it stored) is not the same row: the push goes round again."""
        deadline = time.monotonic() + REMOVAL_WAIT_SECONDS
        stored = False
        while True:
            held = await self._hold_blob_row(digest, upload.offset, deadline)
            if not await self._stored_already(held, digest, upload.offset):
                if stored and once:  # its bytes went into the object, maybe removed since
                    raise Unavailable(
                        f"blob {digest} was removed by garbage collection while it was "
                        "stored; push it again",
                        RETRY_AFTER_SECONDS,
                    )
                try:
                    await store_object()
                    stored = True
                except BaseException:
                    if held.made:  # a row of a blob that is not stored: not for the check
                        await self._forget_row(digest, held.token)
                    raise
            if await self._record(repo, upload, digest, held.token):
                return
            logger.info("blob %s was collected while it was stored: storing it again", digest)

    async def _stored_already(self, held: _HeldRow, digest: str, size: int) -> bool:
        """Whether the blob is in the store already, so this push need not store it again
        (a layer pushed again, here or by another repository): its row was there before this
        push, no removal of its object was under way, and the store has the object at its
        size now. A row this push made may name an object left from before (an orphan, one a
        failed removal was deleting): never trusted. A lost or cut-short object is stored
        again, so a push repairs what the storage check reports missing; damaged bytes of the
        right size are the check's to set aside first."""
        if held.made or held.removal_voided:
            return False
        return await self.store.stat(digest) == size

    async def _hold_blob_row(self, digest: str, size: int, deadline: float) -> _HeldRow:
        """The blob's row, held once no removal of its object from the store is under way."""
        while True:
            try:
                async with self.db.write() as conn:
                    made = await conn.execute(
                        self.db.insert_ignore(blobs).values(
                            digest=digest,
                            size=size,
                            created_at=self.db.clock(),  # as the grace cutoff: `Decider.cutoff`
                            token=uuid.uuid4().hex,
                        )
                    )
                    # Read after the insert, which waited for a run deleting the row: its
                    # removal note, committed with that delete, is seen here.
                    held = (
                        await conn.execute(
                            select(
                                blobs.c.token,
                                blob_removals.c.digest.label("noted"),
                                blob_removals.c.run_id,
                                gc_runs.c.state,
                            )
                            .select_from(
                                blobs.outerjoin(
                                    blob_removals, blob_removals.c.digest == blobs.c.digest
                                ).outerjoin(gc_runs, gc_runs.c.id == blob_removals.c.run_id)
                            )
                            .where(blobs.c.digest == digest)
                        )
                    ).first()
                    if held is None:  # deleted by a run since the insert found it there
                        raise _BeingRemoved()
                    if held.noted is not None:
                        await self._void_removal(conn, digest, held.run_id, held.state)
                    return _HeldRow(held.token, made.rowcount == 1, held.noted is not None)
            except _BeingRemoved:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"blob {digest} is being removed by garbage collection, which is taking "
                        "long (the object store is slow); push it again shortly",
                        RETRY_AFTER_SECONDS,
                    ) from None
                await asyncio.sleep(REMOVAL_POLL_SECONDS)

    async def _forget_row(self, digest: str, token: str | None) -> None:
        """Delete the row this push made for a blob it could not store, unless linked by now
        (best effort: else garbage collection's, as an unlinked blob)."""
        with contextlib.suppress(Exception):
            async with self.db.write() as conn:
                await conn.execute(
                    delete(blobs).where(
                        blobs.c.digest == digest,
                        blobs.c.token == token,
                        ~select(repository_blobs.c.digest)
                        .where(repository_blobs.c.digest == digest)
                        .exists(),
                    )
                )

    async def _void_removal(
        self, conn: AsyncConnection, digest: str, run_id: int | None, state: str | None
    ) -> None:
        """Raise `_BeingRemoved` while a running GC run removes the blob's object; the note
        of a run that ended without removing it (it failed) is void, and goes."""
        if state == RUNNING:
            raise _BeingRemoved()
        # Only if still that run's: a new run of the project takes over a failed run's notes.
        voided = await conn.execute(
            delete(blob_removals).where(
                blob_removals.c.digest == digest, blob_removals.c.run_id == run_id
            )
        )
        if voided.rowcount != 1:
            raise _BeingRemoved()

    async def _record(
        self, repo: RepositoryRef, upload: Upload, digest: str, token: str | None
    ) -> bool:
        """The stored blob in the metadata, if its row is the one held before storing it:
        the repository's link, and no upload. False if garbage collection deleted the row."""
        now = self.db.clock()  # as the grace cutoff: `Decider.cutoff`
        async with self.db.write() as conn:
            # Key-share locked until the link commits (as the link's foreign key would):
            # garbage collection cannot delete the row in between.
            held = (
                await conn.execute(
                    select(blobs.c.token)
                    .where(blobs.c.digest == digest)
                    .with_for_update(key_share=True)
                )
            ).first()
            if held is None or held.token != token:
                return False
            # A fresh link time even when the link existed: the grace period protects
            # this push's blob from garbage collection until its manifest arrives.
            await conn.execute(
                self.db.upsert(
                    repository_blobs, ["repository_id", "digest"], {"linked_at": now}
                ).values(repository_id=repo.id, digest=digest, linked_at=now)
            )
            await conn.execute(delete(uploads).where(uploads.c.id == upload.id))
        return True
