"""The storage check and the `abandoned-uploads` job while the blob directory's `_uploads` is
gone (an operator cleaning up, a tmp cleaner): no directory holds no scratch file, so they
carry on as with an empty one."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from sqlalchemy import insert, select, update

from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import projects, repositories, uploads
from berth.services.storage_check import StorageCheck
from berth.services.uploads import Uploads
from berth.storage.filesystem import FilesystemBlobStore

REPO = RepositoryRef(1, 1, "proj", "app", False, True)
HOUR = 3600.0


def run(
    database_url: str,
    root: Path,
    scenario: Callable[[Database, FilesystemBlobStore], Awaitable[None]],
) -> None:
    async def main() -> None:
        db = Database(database_url)
        try:
            async with db.write() as conn:
                await conn.execute(insert(projects).values(id=1, name="proj"))
                await conn.execute(insert(repositories).values(id=1, project_id=1, name="app"))
            await scenario(db, FilesystemBlobStore(root))
        finally:
            await db.dispose()

    asyncio.run(main())


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def open_upload_ids(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(select(uploads.c.id))).scalars())


def test_storage_check_reports_as_usual_once_the_uploads_directory_is_gone(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        service = Uploads(db, store)
        data = b"a layer pushed before the upload area went"
        pushed = await service.start(REPO, "app")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        await service.complete(REPO, pushed, digest, body(data), None)
        in_flight = await service.start(REPO, "app")
        await service.append(in_flight, body(b"a first chunk"), None)
        shutil.rmtree(store.uploads)

        report = await StorageCheck(db, store).run()
        assert report.healthy and report.blobs_checked == 1, report
        assert report.orphan_uploads_removed == 0 and report.expired_uploads_removed == 0
        assert await open_upload_ids(db) == [in_flight.id]  # left to end at its next request

    run(database_url, tmp_path / "blobs", scenario)


def test_the_abandoned_uploads_job_ends_expired_uploads_once_the_uploads_directory_is_gone(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        service = Uploads(db, store)
        abandoned = await service.start(REPO, "app")
        await service.append(abandoned, body(b"a chunk, then nothing"), None)
        shutil.rmtree(store.uploads)
        async with db.write() as conn:
            await conn.execute(update(uploads).values(updated_at=db.clock(-2 * HOUR)))

        await StorageCheck(db, store, upload_expiry=HOUR).remove_abandoned_uploads()
        assert await open_upload_ids(db) == []

    run(database_url, tmp_path / "blobs", scenario)
