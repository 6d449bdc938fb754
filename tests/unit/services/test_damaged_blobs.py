"""A damaged blob set aside while the blob is pushed again: the pull's check of a file and the
scrub set aside the copy they read, never a good one committed in its place meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import insert

from berth.domain.errors import BlobUnknown
from berth.metadata.database import Database
from berth.metadata.tables import blobs, utcnow
from berth.services.registry import Registry
from berth.services.storage_check import StorageCheck
from berth.storage.filesystem import FilesystemBlobStore

GOOD = b"a config blob, pushed again while its damaged copy was read" * 100
DIGEST = "sha256:" + hashlib.sha256(GOOD).hexdigest()
DAMAGED = bytes(len(GOOD))  # the right size, other bytes: only a hash tells


async def _commit(store: FilesystemBlobStore, data: bytes) -> None:
    """Commit `data` under DIGEST the way a push's final PUT does."""
    upload_id = uuid.uuid4().hex
    writer = await store.open_upload(upload_id, 0)
    await writer.write([data])
    await writer.close()
    await store.commit_upload(upload_id, DIGEST)
    await store.delete_upload(upload_id)


class PushedAgainWhileRead(FilesystemBlobStore):
    """The moment the race needs, made certain: the good copy is committed in the damaged
    one's place after it was read and before it is set aside."""

    async def quarantine(self, digest: str, version: str | None = None) -> None:
        await _commit(self, GOOD)
        await super().quarantine(digest, version)


@pytest.fixture
def store(tmp_path: Path) -> PushedAgainWhileRead:
    return PushedAgainWhileRead(tmp_path / "blobs")


def run(
    database_url: str,
    store: FilesystemBlobStore,
    scenario: Callable[[Database], Awaitable[None]],
) -> None:
    async def with_database() -> None:
        db = Database(database_url)
        try:
            await scenario(db)
        finally:
            await db.dispose()
            await store.close()

    asyncio.run(with_database())


def test_a_pull_that_finds_the_file_damaged_leaves_the_good_copy_pushed_meanwhile(
    store: PushedAgainWhileRead, database_url: str
) -> None:
    async def scenario(db: Database) -> None:
        registry = Registry(db, store)
        await _commit(store, DAMAGED)
        path = store.local_path(DIGEST)
        assert path is not None
        with pytest.raises(BlobUnknown, match="damaged in storage"):
            await registry.verified_blob(DIGEST, len(GOOD), path)
        assert path.read_bytes() == GOOD  # the copy pushed meanwhile is still served
        assert await registry.verified_blob(DIGEST, len(GOOD), path) == GOOD
        assert [found.read_bytes() for found in store.damaged.iterdir()] == []

    run(database_url, store, scenario)


def test_the_scrub_sets_aside_the_copy_it_read_not_the_one_pushed_meanwhile(
    store: PushedAgainWhileRead, database_url: str
) -> None:
    async def scenario(db: Database) -> None:
        async with db.write() as conn:
            await conn.execute(
                insert(blobs).values(digest=DIGEST, size=len(GOOD), created_at=utcnow(), token="t")
            )
        await _commit(store, DAMAGED)
        report = await StorageCheck(db, store).check_blobs()
        assert report.damaged == [DIGEST]  # what it read was damaged: reported
        path = store.local_path(DIGEST)
        assert path is not None and path.read_bytes() == GOOD  # and the good copy stays
        again = await StorageCheck(db, store).check_blobs()
        assert again.healthy and again.blobs_checked == 1

    run(database_url, store, scenario)
