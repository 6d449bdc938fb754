"""Seeding a repository's images straight into the metadata database (no HTTP), for retention
and image delete tests and their benchmarks: thousands of images in a second; and running a
scenario on such a database with a registry over it."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select

from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.migrate import upgrade
from berth.metadata.tables import (
    manifest_references,
    manifests,
    projects,
    repositories,
    tags,
    utcnow,
)
from berth.services.registry import Registry
from berth.storage.filesystem import FilesystemBlobStore

T = TypeVar("T")


def on_registry(url: str, blobs: Path, scenario: Callable[[Database, Registry], Awaitable[T]]) -> T:
    """Play `scenario` on the migrated database at `url`, with a registry storing blobs under
    `blobs`; its connections and store are closed after."""

    async def main() -> T:
        db = Database(url)
        store = FilesystemBlobStore(blobs)
        try:
            return await scenario(db, Registry(db, store))
        finally:
            await store.close()
            await db.dispose()

    return asyncio.run(main())


def on_fresh_registry(
    postgres: str | None, scenario: Callable[[Database, Registry], Awaitable[T]]
) -> T:
    """`on_registry` on a new database, migrated: the empty PostgreSQL one at `postgres`, or
    SQLite in a temporary directory (a benchmark's)."""
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        url = postgres or f"sqlite+aiosqlite:///{tmp}/berth.db"
        upgrade(url)
        return on_registry(url, Path(tmp) / "blobs", scenario)


async def repository_ref(db: Database, project: str, repository: str) -> RepositoryRef:
    """The repository (created if need be), as the services take it."""
    repo_id = await ensure_repository(db, project, repository)
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(repositories.c.project_id, repositories.c.tag_overwrite).where(
                    repositories.c.id == repo_id
                )
            )
        ).one()
    return RepositoryRef(repo_id, row.project_id, project, repository, False, row.tag_overwrite)


async def stored_digests(db: Database) -> set[str]:
    """The digests of every manifest stored."""
    async with db.read() as conn:
        return set((await conn.execute(select(manifests.c.digest))).scalars())


MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def body_of(n: int, *, children: Sequence[str] = (), subject: str | None = None) -> bytes:
    document: dict[str, object] = {"schemaVersion": 2, "n": n}
    if children:
        document["manifests"] = [{"digest": c} for c in children]
    if subject:
        document["subject"] = {"digest": subject}
    return json.dumps(document).encode()


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


async def ensure_repository(
    db: Database, project: str, repository: str, *, tag_overwrite: bool = True
) -> int:
    async with db.write() as conn:
        project_id = (
            await conn.execute(select(projects.c.id).where(projects.c.name == project))
        ).scalar()
        if project_id is None:
            project_id = (
                await conn.execute(projects.insert().values(name=project))
            ).inserted_primary_key[0]  # type: ignore[index]
        repo_id = (
            await conn.execute(
                select(repositories.c.id).where(
                    repositories.c.project_id == project_id, repositories.c.name == repository
                )
            )
        ).scalar()
        if repo_id is None:
            repo_id = (
                await conn.execute(
                    repositories.insert().values(
                        project_id=project_id, name=repository, tag_overwrite=tag_overwrite
                    )
                )
            ).inserted_primary_key[0]  # type: ignore[index]
    return int(repo_id)


async def seed(
    db: Database,
    repository_id: int,
    images: Sequence[tuple[int, Sequence[str], float]],
    *,
    image: str = "",
    now: dt.datetime | None = None,
) -> list[str]:
    """Insert images (n, tags, age in days) into a repository; returns their digests."""
    now = now or utcnow()
    rows, tag_rows, digests = [], [], []
    for n, names, age_days in images:
        body = body_of(n)
        digest = digest_of(body)
        digests.append(digest)
        rows.append(
            {
                "repository_id": repository_id,
                "image": image,
                "digest": digest,
                "media_type": MANIFEST,
                "size": len(body),
                "content": body,
                "pushed_at": now - dt.timedelta(days=age_days),
            }
        )
        tag_rows += [
            {
                "repository_id": repository_id,
                "image": image,
                "name": name,
                "digest": digest,
                "updated_at": now - dt.timedelta(days=age_days),
            }
            for name in names
        ]
    async with db.write() as conn:
        if rows:
            await conn.execute(manifests.insert(), rows)
        if tag_rows:
            await conn.execute(tags.insert(), tag_rows)
    return digests


async def seed_one(
    db: Database,
    repository_id: int,
    n: int,
    names: Sequence[str] = (),
    *,
    age_days: float = 0,
    children: Sequence[str] = (),
    subject: str | None = None,
    image: str = "",
) -> str:
    """One manifest: an index when `children` are given, a referrer when `subject` is."""
    body = body_of(n, children=children, subject=subject)
    digest = digest_of(body)
    at = utcnow() - dt.timedelta(days=age_days)
    async with db.write() as conn:
        manifest_id = (
            await conn.execute(
                manifests.insert().values(
                    repository_id=repository_id,
                    image=image,
                    digest=digest,
                    media_type=INDEX if children else MANIFEST,
                    subject_digest=subject,
                    size=len(body),
                    content=body,
                    pushed_at=at,
                )
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        if children:
            await conn.execute(
                manifest_references.insert(),
                [{"manifest_id": manifest_id, "digest": c, "is_manifest": True} for c in children],
            )
        for name in names:
            await conn.execute(
                tags.insert().values(
                    repository_id=repository_id,
                    image=image,
                    name=name,
                    digest=digest,
                    updated_at=at,
                )
            )
    return digest
