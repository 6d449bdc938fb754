"""Storage integrity: find blobs whose stored bytes no longer match their digest or are gone,
stored blobs no metadata names (orphans), and scratch files no upload names.

A damaged blob is set aside (the store's quarantine), which makes it missing: HEAD answers 404,
so the next push of the right bytes uploads and stores them again. Its metadata stays, so the
images that use it come back whole once it is pushed again. Run by the `storage-scrub` job and
by `berth storage check`, which also lists the store (a bucket listing on S3) for orphans and,
asked to repair, removes those older than the grace period.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, select

from berth.domain.digests import parse_digest
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import blobs, repositories, repository_blobs, uploads
from berth.storage.base import BlobStore

logger = logging.getLogger("berth.storage")

# A scratch file with no upload row is left alone this long at least: an upload's file is
# created just before its row.
MIN_ORPHAN_AGE_SECONDS = 60.0
BATCH = 500


@dataclass
class CheckReport:
    project: str | None = None  # None: every blob of the install
    blobs_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)  # recorded, but no file
    damaged: list[str] = field(default_factory=list)  # bytes differ from the digest: set aside
    orphan_uploads_removed: int = 0
    # Stored, but no metadata names them (whole-install checks only: a blob belongs to no one
    # project). Kept unless repairing; younger ones always (a push may be recording them).
    orphans: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    expired_uploads_removed: int = 0  # untouched for upload_expiry: rows and scratch
    unfinished_commits_aborted: int = 0  # S3 multipart uploads no node completed

    @property
    def healthy(self) -> bool:
        return not self.missing and not self.damaged

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


async def hashes_to_digest(store: BlobStore, digest: str) -> bool:
    """Whether the stored bytes of `digest` hash to it (read whole)."""
    parsed = parse_digest(digest)
    hasher = hashlib.new(parsed.algorithm)
    async for chunk in store.read(digest):
        await asyncio.to_thread(hasher.update, chunk)
    return hasher.hexdigest() == parsed.hex


class StorageCheck:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        orphan_age: float = 3600.0,
        upload_expiry: float = 86_400.0,
    ) -> None:
        self.db = db
        self.store = store
        self.orphan_age = max(orphan_age, MIN_ORPHAN_AGE_SECONDS)
        self.upload_expiry = max(upload_expiry, MIN_ORPHAN_AGE_SECONDS)
        # No floor for blobs: their removal is a compare-and-set against a push recording
        # them (_remove_orphan); the age only leaves a push in flight its blob untouched.
        self.orphan_blob_age = orphan_age

    async def run(self, project: str | None = None, *, repair: bool = False) -> CheckReport:
        """`berth storage check`: check every blob the project's repositories link (or, with
        no project, every recorded blob) and set damaged ones aside. Of the whole install,
        also list the stored blobs no metadata names, removing those older than the grace
        period when repairing, and remove abandoned uploads and orphaned scratch files."""
        report = await self.check_blobs(project)
        if project is None:
            await self._find_orphans(report, repair)
            await self._remove_abandoned(report)
        return report

    async def remove_abandoned_uploads(self) -> None:
        """The `abandoned-uploads` job: uploads nobody touched for `upload_expiry`, scratch
        files no upload names, and commits into the store that no node finished."""
        await self._remove_abandoned(CheckReport())

    async def _remove_abandoned(self, report: CheckReport) -> None:
        report.expired_uploads_removed = await self.remove_expired_uploads()
        report.orphan_uploads_removed = await self.remove_orphan_uploads()
        report.unfinished_commits_aborted = await self.store.abort_unfinished_commits(
            time.time() - self.upload_expiry
        )
        removed = (
            report.expired_uploads_removed
            + report.orphan_uploads_removed
            + report.unfinished_commits_aborted
        )
        if removed:
            logger.info(
                "abandoned uploads: %d expired removed, %d orphaned scratch removed, "
                "%d unfinished commits aborted",
                report.expired_uploads_removed,
                report.orphan_uploads_removed,
                report.unfinished_commits_aborted,
            )

    async def remove_expired_uploads(self) -> int:
        """Uploads of any project nobody has touched for `upload_expiry`: the row first (so
        no node takes the upload on), then its scratch."""
        # By the database's clock, as uploads write `updated_at`: a node whose own clock ran
        # ahead would otherwise end uploads another node is still receiving.
        cutoff = self.db.clock(-self.upload_expiry)
        async with self.db.write() as conn:
            expired = list(
                (
                    await conn.execute(
                        delete(uploads).where(uploads.c.updated_at < cutoff).returning(uploads.c.id)
                    )
                ).scalars()
            )
        for upload_id in expired:
            await self.store.delete_upload(upload_id)
        return len(expired)

    async def check_blobs(self, project: str | None = None) -> CheckReport:
        """Check every recorded blob (of `project`'s repositories) and set damaged ones aside
        (the `storage-scrub` job; abandoned uploads are the `abandoned-uploads` job's)."""
        report = CheckReport(project=project)
        recorded = select(blobs.c.digest, blobs.c.size)
        if project is not None:
            async with self.db.read() as conn:
                project_id = await require_project(conn, project)
            linked = (
                select(repository_blobs.c.digest)
                .join(repositories, repositories.c.id == repository_blobs.c.repository_id)
                .where(repositories.c.project_id == project_id)
            )
            recorded = recorded.where(blobs.c.digest.in_(linked))
        after = ""
        while True:
            async with self.db.read() as conn:
                rows = (
                    await conn.execute(
                        recorded.where(blobs.c.digest > after).order_by(blobs.c.digest).limit(BATCH)
                    )
                ).all()
            if not rows:
                break
            for digest, size in rows:
                await self._check(report, digest, int(size))
            after = rows[-1][0]
        if report.damaged or report.missing:
            logger.warning(
                "storage check: %d blobs damaged (set aside; pushing them again repairs them), "
                "%d missing",
                len(report.damaged),
                len(report.missing),
            )
        return report

    async def _check(self, report: CheckReport, digest: str, size: int) -> None:
        stored = await self.store.stored_copy(digest)  # the copy about to be read
        if stored is None:
            if await self._needed(digest):
                report.missing.append(digest)
            return
        report.blobs_checked += 1
        report.bytes_checked += stored.size
        if stored.size != size or not await hashes_to_digest(self.store, digest):
            # Only the copy read: a push of the blob during a long read put a good one there.
            await self.store.quarantine(digest, stored.version)
            report.damaged.append(digest)

    async def _needed(self, digest: str) -> bool:
        """Whether a blob found missing is missed: a repository links it (so a pull may need
        it), and the store still lacks it once that is known. A row no repository links names
        no object anyone needs: a push holds its row before it stores the object and links it
        (one killed in between leaves the row, which garbage collection deletes), and a
        removal holds one while its object goes; neither is a blob lost."""
        async with self.db.read() as conn:
            linked = (
                await conn.execute(
                    select(repository_blobs.c.digest)
                    .where(repository_blobs.c.digest == digest)
                    .limit(1)
                )
            ).first()
        # Asked again after the link was read: a push may have stored and linked it since.
        return linked is not None and await self.store.stored_copy(digest) is None

    async def _find_orphans(self, report: CheckReport, repair: bool) -> None:
        """Stored blobs with no row in `blobs`, listed from the store in batches."""
        cutoff = time.time() - self.orphan_blob_age
        batch: list[tuple[str, float]] = []

        async def settle() -> None:
            async with self.db.read() as conn:
                known = set(
                    (
                        await conn.execute(
                            select(blobs.c.digest).where(
                                blobs.c.digest.in_([digest for digest, _ in batch])
                            )
                        )
                    ).scalars()
                )
            for digest, modified in batch:
                if digest in known:
                    continue
                report.orphans.append(digest)
                if repair and modified < cutoff and await self._remove_orphan(digest):
                    report.orphans_removed.append(digest)
            batch.clear()

        async for entry in self.store.list_blobs():
            batch.append(entry)
            if len(batch) >= BATCH:
                await settle()
        if batch:
            await settle()
        if report.orphans:
            logger.warning(
                "storage check: %d stored blobs no metadata names (%d removed)",
                len(report.orphans),
                len(report.orphans_removed),
            )

    async def _remove_orphan(self, digest: str) -> bool:
        """Remove a blob no row names, unless a push records it meanwhile. The compare-and-set
        of garbage collection's sweep: a placeholder row, inserted only if there is none,
        holds the digest while the object goes; a push upserting the row waits for it, then
        finds the object gone and commits its upload again (`services/uploads/commits.py`)."""
        async with self.db.write() as conn:
            held = await conn.execute(
                self.db.insert_ignore(blobs)
                .values(digest=digest, size=0, created_at=self.db.clock())
                .returning(blobs.c.digest)
            )
            if held.first() is None:
                return False  # recorded since it was listed: no orphan
            await self.store.delete(digest)
            await conn.execute(delete(blobs).where(blobs.c.digest == digest))
        return True

    async def remove_orphan_uploads(self) -> int:
        """Remove scratch files that no upload names (left by a crash or a full disk)."""
        files = await self.store.list_uploads()
        if not files:
            return 0
        async with self.db.read() as conn:
            known = set((await conn.execute(select(uploads.c.id))).scalars())
        cutoff = time.time() - self.orphan_age
        removed = 0
        for upload_id, modified in files:
            if upload_id not in known and modified < cutoff:
                await self.store.delete_upload(upload_id)
                removed += 1
        return removed
