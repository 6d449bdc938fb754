"""Last pull times: recorded in the background, at most once a minute per image."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import select, update

from berth.metadata.database import Database
from berth.metadata.tables import manifests, projects, repositories, utcnow
from berth.services.pulls import PullRecorder


async def _manifest(db: Database) -> int:
    async with db.write() as conn:
        project_key = (await conn.execute(projects.insert().values(name="p"))).inserted_primary_key
        assert project_key is not None
        project = project_key[0]
        repo_key = (
            await conn.execute(repositories.insert().values(project_id=project, name="r"))
        ).inserted_primary_key
        assert repo_key is not None
        repo = repo_key[0]
        await conn.execute(
            manifests.insert().values(
                repository_id=repo,
                image="",
                digest="sha256:" + "a" * 64,
                media_type="application/vnd.oci.image.manifest.v1+json",
                size=2,
                content=b"{}",
            )
        )
    return int(repo)


async def _pulled_at(db: Database) -> dt.datetime | None:
    async with db.read() as conn:
        value = (await conn.execute(select(manifests.c.last_pulled_at))).scalar()
    return value if isinstance(value, dt.datetime) else None


def test_a_pull_is_recorded_at_the_flush_not_before(database_url: str) -> None:
    asyncio.run(_test_a_pull_is_recorded_at_the_flush_not_before(database_url))


async def _test_a_pull_is_recorded_at_the_flush_not_before(database_url: str) -> None:
    db = Database(database_url)
    try:
        repo = await _manifest(db)
        recorder = PullRecorder(db)
        recorder.pulled(repo, "", "sha256:" + "a" * 64)
        assert await _pulled_at(db) is None  # the pull itself wrote nothing
        before = utcnow()
        assert await recorder.flush() == 1
        pulled = await _pulled_at(db)
        assert pulled is not None and pulled >= before - dt.timedelta(seconds=1)
    finally:
        await db.dispose()


def test_at_most_one_write_per_image_per_minute(database_url: str) -> None:
    asyncio.run(_test_at_most_one_write_per_image_per_minute(database_url))


async def _test_at_most_one_write_per_image_per_minute(database_url: str) -> None:
    db = Database(database_url)
    try:
        repo = await _manifest(db)
        first, second = PullRecorder(db), PullRecorder(db)  # two workers or nodes
        first.pulled(repo, "", "sha256:" + "a" * 64)
        await first.flush()
        recorded = await _pulled_at(db)
        # The same process does not even queue it again within the minute.
        first.pulled(repo, "", "sha256:" + "a" * 64)
        assert await first.flush() == 0
        # Another process queues it, but its UPDATE changes nothing within the minute.
        second.pulled(repo, "", "sha256:" + "a" * 64)
        assert await second.flush() == 1
        assert await _pulled_at(db) == recorded
        # Once the recorded time is more than a minute old, it is written again.
        long_ago = utcnow() - dt.timedelta(seconds=61)
        async with db.write() as conn:
            await conn.execute(update(manifests).values(last_pulled_at=long_ago))
        third = PullRecorder(db)
        third.pulled(repo, "", "sha256:" + "a" * 64)
        await third.flush()
        later = await _pulled_at(db)
        assert later is not None and later > long_ago + dt.timedelta(seconds=60)
    finally:
        await db.dispose()


def test_recording_a_pull_does_not_void_the_manifest_cache(database_url: str) -> None:
    asyncio.run(_test_recording_a_pull_does_not_void_the_manifest_cache(database_url))


async def _test_recording_a_pull_does_not_void_the_manifest_cache(database_url: str) -> None:
    db = Database(database_url)
    bumps: list[int] = []
    db.after_commit({"manifests"}, lambda: bumps.append(1))
    try:
        repo = await _manifest(db)
        bumps.clear()
        recorder = PullRecorder(db)
        recorder.pulled(repo, "", "sha256:" + "a" * 64)
        await recorder.flush()
        assert await _pulled_at(db) is not None
        assert bumps == []
    finally:
        await db.dispose()
