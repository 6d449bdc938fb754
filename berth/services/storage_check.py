"""Storage integrity: find blobs whose stored bytes no longer match their digest, and scratch
files no upload names.

A damaged blob is set aside (the store's quarantine), which makes it missing: HEAD answers 404,
so the next push of the right bytes uploads and stores them again. Its metadata stays, so the
images that use it come back whole once it is pushed again. Run by the `storage-scrub` job and
by `berth storage check`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from berth.domain.digests import parse_digest
from berth.metadata.database import Database
from berth.metadata.tables import blobs, uploads
from berth.storage.base import BlobStore

logger = logging.getLogger("berth.storage")

# A scratch file with no upload row is left alone this long at least: an upload's file is
# created just before its row.
MIN_ORPHAN_AGE_SECONDS = 60.0
BATCH = 500


@dataclass
class CheckReport:
    blobs_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)  # recorded, but no file
    damaged: list[str] = field(default_factory=list)  # bytes differ from the digest: set aside
    orphan_uploads_removed: int = 0

    @property
    def healthy(self) -> bool:
        return not self.missing and not self.damaged

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


async def blob_is_whole(store: BlobStore, digest: str, size: int) -> bool:
    """Whether the stored bytes of `digest` are `size` long and hash to it."""
    if await store.stat(digest) != size:
        return False
    parsed = parse_digest(digest)
    hasher = hashlib.new(parsed.algorithm)
    async for chunk in store.read(digest):
        await asyncio.to_thread(hasher.update, chunk)
    return hasher.hexdigest() == parsed.hex


class StorageCheck:
    def __init__(self, db: Database, store: BlobStore, orphan_age: float = 3600.0) -> None:
        self.db = db
        self.store = store
        self.orphan_age = max(orphan_age, MIN_ORPHAN_AGE_SECONDS)

    async def run(self) -> CheckReport:
        """Check every recorded blob, set damaged ones aside, remove orphaned scratch files
        (`berth storage check`)."""
        report = await self.check_blobs()
        report.orphan_uploads_removed = await self.remove_orphan_uploads()
        return report

    async def check_blobs(self) -> CheckReport:
        """Check every recorded blob and set damaged ones aside (the `storage-scrub` job;
        orphaned scratch files are the `orphan-uploads` job's)."""
        report = CheckReport()
        after = ""
        while True:
            async with self.db.read() as conn:
                rows = (
                    await conn.execute(
                        select(blobs.c.digest, blobs.c.size)
                        .where(blobs.c.digest > after)
                        .order_by(blobs.c.digest)
                        .limit(BATCH)
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
        stored = await self.store.stat(digest)
        if stored is None:
            report.missing.append(digest)
            return
        report.blobs_checked += 1
        report.bytes_checked += stored
        if not await blob_is_whole(self.store, digest, size):
            await self.store.quarantine(digest)
            report.damaged.append(digest)

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
