"""Blobs of a repository: their size, checking a blob's file before it is served, unlinking
and cross-repository mounts."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from cachetools import LRUCache
from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from berth.domain.digests import digest_bytes, parse_digest
from berth.domain.errors import BlobUnknown, DigestInvalid
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
)
from berth.services.content_audit import audit_content_change
from berth.services.content_in_use import in_use_refusal, manifests_using
from berth.services.gc.restrictions import ensure_writable
from berth.services.manifest_cache import BlobSizes
from berth.storage.base import BlobDamaged, BlobStore, file_version

logger = logging.getLogger("berth.registry")

# Blobs up to this size are hashed before each download (configs, small layers); larger ones
# are checked by size here and fully by the storage check (`berth storage check`, the scrub).
VERIFY_ON_READ_BYTES = 1024 * 1024
# Verified on the event loop itself up to this size (about 20 µs), in a thread above it.
INLINE_VERIFY_BYTES = 64 * 1024
VERIFIED_FILES_KEPT = 100_000  # about 15 MB of (digest, inode, mtime)
# Blobs of a store without local files (S3) up to this size are kept in memory once found
# whole, within SMALL_BLOBS_KEPT_BYTES per worker: every pull of an image fetches its config
# (a few kB), otherwise a round trip to the store each time.
SMALL_BLOB_BYTES = 256 * 1024
SMALL_BLOBS_KEPT_BYTES = 16 * 1024 * 1024
SMALL_BLOB_OVERHEAD = 150  # bytes of Python objects around each kept blob, roughly


def small_blob_size(content: bytes) -> int:
    """What a blob kept in memory counts against SMALL_BLOBS_KEPT_BYTES."""
    return len(content) + SMALL_BLOB_OVERHEAD


def _is_whole(content: bytes, digest: str) -> bool:
    return digest_bytes(content, parse_digest(digest).algorithm) == digest


async def _hashes_to(content: bytes, digest: str) -> bool:
    """`_is_whole`, on the event loop up to INLINE_VERIFY_BYTES and in a thread above (a
    1 MiB blob takes about 0.7 ms to hash: every other request of the worker would wait)."""
    if len(content) <= INLINE_VERIFY_BYTES:
        return _is_whole(content, digest)
    return await asyncio.to_thread(_is_whole, content, digest)


def _read_if_whole(path: Path, digest: str) -> bytes | None:
    """The file's bytes if they hash to `digest`, else None (FileNotFoundError if it is gone:
    removed, not damaged)."""
    content = path.read_bytes()
    return content if _is_whole(content, digest) else None


# The pull path's statements, built once (bindparams); Database.first runs them fastest.
_BLOB_SIZE = (
    select(blobs.c.size)
    .join(repository_blobs, repository_blobs.c.digest == blobs.c.digest)
    .where(
        repository_blobs.c.repository_id == bindparam("repository_id"),
        blobs.c.digest == bindparam("digest"),
    )
)


class BlobContent:
    """Blobs: a part of `Registry`."""

    db: Database
    store: BlobStore
    # digest -> (inode, mtime) of the blob file last found whole (see verified_blob).
    _verified: LRUCache[str, tuple[int, int]]
    # digest -> the bytes of a small blob of a remote store, found whole (see blob_stream).
    _small_blobs: LRUCache[str, bytes]
    blob_sizes: BlobSizes

    async def blob_size(self, repo: RepositoryRef, digest: str) -> int:
        size = self.blob_sizes.get(repo.id, digest)  # only a digest found before is kept
        if size is not None:
            return size
        parse_digest(digest)
        stamp = self.blob_sizes.stamp.read()  # before the read: a change since voids it
        row = await self.db.first(_BLOB_SIZE, repository_id=repo.id, digest=digest)
        if row is None:
            raise BlobUnknown(f"blob {digest} is not in this repository", {"digest": digest})
        size = int(row[0])
        self.blob_sizes.put(repo.id, digest, size, stamp)
        return size

    def blob_path(self, digest: str) -> Path | None:
        return self.store.local_path(digest)

    async def cached_blob(self, digest: str, size: int) -> Path | None:
        """This node's copy of a blob of a remote store (`s3_cache_dir`), to send as a file;
        it was hashed when it was written, and the caller checked the blob is the
        repository's. Sent only while the store still holds the blob (confirmed at most
        every 30 s): one set aside by another node is BLOB_UNKNOWN here too, as for a HEAD."""
        await self._confirm_cached_copy(digest, size)
        return self.store.cached_path(digest, size)

    async def _confirm_cached_copy(self, digest: str, size: int) -> bool:
        try:
            return await self.store.confirm_cached_copy(digest, size)
        except FileNotFoundError:
            raise missing_blob(digest) from None

    async def blob_stream(
        self, digest: str, size: int, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a blob from a store without local files (S3). Its first
        chunk is read here, so a blob missing from storage is BLOB_UNKNOWN before any byte is
        sent; a small blob sent whole is hashed first, and set aside if damaged, as
        `verified_blob` does for files. A whole blob is read as a download (which a node's
        cache keeps a copy of), a range as just its bytes. A larger blob sent whole that a
        cache's copy found damaged on the way (its bytes went out already: the client sees
        the digest mismatch) is set aside after the last chunk, so no later pull sends it.

        A small blob found whole is kept in this worker's memory and sent from there after
        (or any range of it): content-addressed, its bytes never change, and whether the
        caller may read it was decided by the metadata before (a blob unlinked or collected
        is unknown there first). A copy the store lost or set aside since is still sent
        whole from memory; the storage check reports the store's copy. One this node's
        cache now holds is not kept again: the caller sends that copy first."""
        whole = start == 0 and end == size
        kept = self._kept_small_blob(digest, size)
        if kept is not None:
            return _chunks_of(kept if whole else kept[start:end])
        if whole and size <= VERIFY_ON_READ_BYTES:
            read: list[str] = []  # the version of the copy read: only it is set aside
            try:
                content = b"".join(
                    [chunk async for chunk in self.store.download(digest, size, read.append)]
                )
            except FileNotFoundError:
                raise missing_blob(digest) from None
            except BlobDamaged as damaged:
                raise await self._set_aside(digest, damaged.version) from None
            if len(content) == size and await _hashes_to(content, digest):
                if size <= SMALL_BLOB_BYTES and not self.store.holds_cached_copy(digest, size):
                    self._small_blobs[digest] = content
                return _chunks_of(content)
            raise await self._set_aside(digest, read[0] if read else None)
        chunks = aiter(
            self.store.download(digest, size) if whole else self.store.read(digest, start, end)
        )
        try:
            first = await anext(chunks)
        except FileNotFoundError:
            raise missing_blob(digest) from None
        except StopAsyncIteration:
            return _chunks_of(b"")
        return _following(first, chunks, lambda version: self._set_aside(digest, version))

    def _kept_small_blob(self, digest: str, size: int) -> bytes | None:
        kept = self._small_blobs.get(digest)
        return kept if kept is not None and len(kept) == size else None

    async def ensure_stored(self, digest: str, size: int) -> None:
        """BLOB_UNKNOWN unless the store holds the blob at its recorded size: a HEAD must
        not tell a client to skip pushing a blob that storage has lost."""
        if not await self.store.confirm_stored(digest, size):
            raise missing_blob(digest)

    async def ensure_held(self, digest: str, size: int) -> None:
        """BLOB_UNKNOWN unless this node can send the blob, for a client that holds it (a
        conditional request, answered 304): a verified copy in this worker's memory or this
        node's cache answers as a GET would be sent from that copy (the cache's once the
        store was found holding the blob in the last 30 s, see `cached_blob`); else the
        store is asked, as for a HEAD (`ensure_stored`)."""
        held = self._kept_small_blob(digest, size) is not None
        if not held and not await self._confirm_cached_copy(digest, size):
            await self.ensure_stored(digest, size)

    async def download_url(
        self, digest: str, size: int, ttl: int, byte_range: str | None = None
    ) -> str:
        """A URL the client fetches the blob from itself, valid `ttl` seconds
        (`blob_redirect = "presigned"`), only for the Range `byte_range` when one is given;
        BLOB_UNKNOWN, as for a download through Berth, when the store has lost it."""
        await self.ensure_stored(digest, size)
        url = await self.store.download_url(digest, ttl, byte_range)
        if url is None:  # the settings refuse presigned redirects on such a store
            raise RuntimeError("this blob store gives no download URLs")
        return url

    async def accel_path(self, digest: str, size: int) -> str:
        """The blob's file relative to the blob directory, for nginx to send
        (`blob_redirect = "accel"`), once checked as for a download through Berth: a missing
        or damaged file is BLOB_UNKNOWN (and set aside)."""
        path, relative = self.store.local_path(digest), self.store.relative_path(digest)
        if path is None or relative is None:  # the settings refuse accel on such a store
            raise RuntimeError("this blob store has no local files")
        await self.verified_blob(digest, size, path)
        return relative

    async def verified_blob(self, digest: str, size: int, path: Path) -> bytes | None:
        """Check a blob's file before serving it: there, of its recorded size and, when small,
        with bytes that hash to its digest. Freshly hashed bytes are returned, to be served
        from memory; None means "serve the file". A file that fails is set aside (missing:
        pushing it again repairs it) and BLOB_UNKNOWN raised, so damaged bytes are never
        served under the digest.

        A file hashed once is not hashed again while it stays the same file (inode and
        modification time): a rewrite or a replaced file is checked anew, bit rot in place is
        the scrub's to find (`berth storage check`)."""
        try:
            stored = os.stat(path)
        except FileNotFoundError:
            raise missing_blob(digest) from None
        if stored.st_size == size:
            if size > VERIFY_ON_READ_BYTES:
                return None
            identity = (stored.st_ino, stored.st_mtime_ns)
            if self._verified.get(digest) == identity:
                return None
            try:
                if size <= INLINE_VERIFY_BYTES:
                    # Once per file and process (then remembered): a page-cache read and a
                    # hash of a few kB cost less than a thread hop.
                    content = _read_if_whole(path, digest)
                else:
                    content = await asyncio.to_thread(_read_if_whole, path, digest)
            except FileNotFoundError:  # removed meanwhile (garbage collection): not damaged
                raise missing_blob(digest) from None
            if content is not None:
                self._verified[digest] = identity
                return content
        self._verified.pop(digest, None)
        raise await self._set_aside(digest, file_version(stored))

    async def _set_aside(self, digest: str, version: str | None = None) -> BlobUnknown:
        """Quarantine a blob found damaged (pushing it again repairs it) and return the error
        to raise: its damaged bytes are never served under the digest. With `version`, the
        copy that was read: one pushed in its place meanwhile stays."""
        await self.store.quarantine(digest, version)
        logger.error("blob %s is damaged in storage: set aside until pushed again", digest)
        return BlobUnknown(
            f"blob {digest} is damaged in storage and was set aside; push it again",
            {"digest": digest},
        )

    async def delete_blob(
        self, repo: RepositoryRef, image: str, digest: str, *, actor: str, client: str | None
    ) -> None:
        """Unlink a blob from a repository (asked for under an image name of it) and audit it;
        its bytes go at the next garbage collection. Refused while a manifest of the
        repository uses it: that image would no longer pull."""
        parse_digest(digest)
        async with self.db.write() as conn:
            users, total = await manifests_using(
                conn,
                select(manifests.c.image, manifests.c.digest)
                .join(manifest_references, manifest_references.c.manifest_id == manifests.c.id)
                .where(
                    manifests.c.repository_id == repo.id,
                    manifest_references.c.digest == digest,
                    ~manifest_references.c.is_manifest,
                )
                .order_by(manifests.c.id),
            )
            if users:
                raise await in_use_refusal(conn, repo, f"blob {digest}", users, total)
            result = await conn.execute(
                delete(repository_blobs).where(
                    repository_blobs.c.repository_id == repo.id, repository_blobs.c.digest == digest
                )
            )
            if result.rowcount == 0:
                raise BlobUnknown(f"blob {digest} is not in this repository", {"digest": digest})
            await audit_content_change(
                conn, "blob.delete", repo, image, digest, actor=actor, client=client
            )

    async def mount(self, repo: RepositoryRef, digest: str, source: RepositoryRef | None) -> bool:
        """Link a blob held by `source` (or, without one, anywhere in the project) to `repo`.
        False when it cannot, a `digest` that is no digest among the reasons: the client then
        uploads the blob (the distribution spec's fallback, and Distribution's)."""
        try:
            parse_digest(digest)
        except DigestInvalid:
            return False
        holder = select(repository_blobs.c.repository_id).where(repository_blobs.c.digest == digest)
        if source is not None:
            holder = holder.where(repository_blobs.c.repository_id == source.id)
        else:
            holder = holder.join(
                repositories, repositories.c.id == repository_blobs.c.repository_id
            ).where(repositories.c.project_id == repo.project_id)
        if await self.store.stat(digest) is None:
            return False  # recorded, but its bytes are missing (set aside): upload them
        now = self.db.clock()  # as the grace cutoff: `Decider.cutoff`
        try:
            async with self.db.write() as conn:
                if (await conn.execute(holder.limit(1))).first() is None:
                    return False  # a miss writes nothing: no restriction to check
                await ensure_writable(conn, repo.project_id, repo.project)
                # A fresh link time, as for an upload: the grace period covers this push.
                await conn.execute(
                    self.db.upsert(
                        repository_blobs, ["repository_id", "digest"], {"linked_at": now}
                    ).values(repository_id=repo.id, digest=digest, linked_at=now)
                )
        except IntegrityError:
            # Garbage collection of another project removed the blob's last link and row
            # between the check and the link (PostgreSQL): the client uploads it instead.
            return False
        return True


def missing_blob(digest: str) -> BlobUnknown:
    """The error for a blob recorded in a repository whose bytes storage does not hold."""
    return BlobUnknown(f"blob {digest} is missing from storage; push it again", {"digest": digest})


async def _chunks_of(content: bytes) -> AsyncIterator[bytes]:
    if content:
        yield content


async def _following(
    first: bytes,
    rest: AsyncIterator[bytes],
    set_aside: Callable[[str | None], Awaitable[BlobUnknown]] | None = None,
) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    except BlobDamaged as damaged:
        if set_aside is None:
            raise
        await set_aside(damaged.version)  # its error is for the next pull: this one's are sent
    finally:
        # Closed with this stream (a client gone mid-download): the store's response goes
        # back to its connection pool now, not when the garbage collector finds it.
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()
