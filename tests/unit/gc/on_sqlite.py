"""Registry content written to a fresh SQLite database and blob directory, for in-process runs,
and what a registry holds afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from berth.metadata.database import Database
from berth.metadata.tables import (
    blobs,
    manifest_references,
    manifests,
    metadata,
    projects,
    repositories,
    repository_blobs,
    tags,
    uploads,
)
from berth.storage.filesystem import FilesystemBlobStore
from tests.unit.gc.scenarios import Content


@dataclass(frozen=True)
class Left:
    """What a registry holds."""

    manifests: frozenset[int]
    links: frozenset[tuple[int, str]]
    blobs: frozenset[str]  # rows
    files: frozenset[str]  # blob files in storage
    uploads: frozenset[str]  # rows
    scratch: frozenset[str]  # upload scratch files


async def write_content(db: Database, store: FilesystemBlobStore, content: Content) -> None:
    async with db.write() as conn:
        await conn.run_sync(metadata.create_all)
        names = sorted(set(content.repositories.values()))
        await conn.execute(
            projects.insert(), [{"id": i, "name": n} for i, n in enumerate(names, 1)]
        )
        project_ids = {n: i for i, n in enumerate(names, 1)}
        await conn.execute(
            repositories.insert(),
            [
                {"id": r, "project_id": project_ids[p], "name": f"repo{r}"}
                for r, p in content.repositories.items()
            ],
        )
        if content.blobs:
            await conn.execute(
                blobs.insert(),
                [
                    {"digest": b.digest, "size": 1, "created_at": b.created_at}
                    for b in content.blobs.values()
                ],
            )
        if content.links:
            await conn.execute(
                repository_blobs.insert(),
                [
                    {
                        "repository_id": ln.repository_id,
                        "digest": ln.digest,
                        "linked_at": ln.linked_at,
                    }
                    for ln in content.links.values()
                ],
            )
        for m in content.manifests:
            await conn.execute(
                manifests.insert().values(
                    id=m.id,
                    repository_id=m.repository_id,
                    image=m.image,
                    digest=m.digest,
                    media_type="application/vnd.oci.image.manifest.v1+json",
                    subject_digest=m.subject_digest,
                    size=0,
                    content=b"{}",
                    pushed_at=m.pushed_at,
                )
            )
            if m.tagged:
                await conn.execute(
                    tags.insert().values(
                        repository_id=m.repository_id,
                        image=m.image,
                        name=f"t{m.id}",
                        digest=m.digest,
                    )
                )
        if content.references:
            await conn.execute(
                manifest_references.insert(),
                [
                    {"manifest_id": r.manifest_id, "digest": r.digest, "is_manifest": r.is_manifest}
                    for r in content.references
                ],
            )
        for u in content.uploads:
            await conn.execute(
                uploads.insert().values(
                    id=u.id,
                    repository_id=u.repository_id,
                    image="app",
                    started_at=u.updated_at,
                    updated_at=u.updated_at,
                )
            )
    for index, digest in enumerate(content.blobs):
        scratch = f"blob{index}"
        writer = await store.open_upload(scratch, 0)
        await writer.write([b"x"])
        await writer.close()
        await store.commit_upload(scratch, digest)
        await store.delete_upload(scratch)
    for u in content.uploads:
        writer = await store.open_upload(u.id, 0)
        await writer.close()


async def what_is_left(db: Database, store: FilesystemBlobStore) -> Left:
    async with db.read() as conn:
        left_manifests = frozenset((await conn.execute(select(manifests.c.id))).scalars())
        links = frozenset(
            (r.repository_id, r.digest)
            for r in await conn.execute(
                select(repository_blobs.c.repository_id, repository_blobs.c.digest)
            )
        )
        left_blobs = frozenset((await conn.execute(select(blobs.c.digest))).scalars())
        left_uploads = frozenset((await conn.execute(select(uploads.c.id))).scalars())
    files = frozenset([d async for d in store.iter_digests()])
    scratch = frozenset(name for name, _ in await store.list_uploads())
    return Left(left_manifests, links, left_blobs, files, left_uploads, scratch)


async def open_registry(directory: Path, content: Content) -> tuple[Database, FilesystemBlobStore]:
    """A database and blob directory under `directory` holding `content` (dispose the
    database when done)."""
    db = Database(f"sqlite+aiosqlite:///{directory / 'berth.db'}")
    store = FilesystemBlobStore(directory / "blobs")
    await write_content(db, store, content)
    return db, store
