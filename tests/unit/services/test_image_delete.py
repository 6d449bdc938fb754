"""The management API's image delete (`Registry.delete_image`) against a real SQLite database:
what goes with an index and what stays, across IN-list chunks, in as many statements whatever
the index's size."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

import berth.metadata.queries as queries_module
import berth.services.manifest_deletes as manifest_deletes_module
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.queries import chunks
from berth.metadata.tables import image_events, tags
from berth.services.image_records import KeptManifest
from berth.services.platform_manifests import DeletedImage, DeletedReferrer
from berth.services.registry import Registry
from tests.retention_seed import on_registry, repository_ref, seed, seed_one, stored_digests

Scenario = Callable[[Database, Registry, RepositoryRef], Awaitable[Any]]


def run(url: str, tmp_path: Path, scenario: Scenario) -> Any:
    async def with_repository(db: Database, registry: Registry) -> Any:
        return await scenario(db, registry, await repository_ref(db, "p", "app"))

    return on_registry(url, tmp_path / "blobs", with_repository)


def test_an_index_goes_with_what_nothing_else_holds_across_chunks(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IN lists of two values: an index of five platform manifests takes several of each
    statement, and deletes as one."""
    in_twos = functools.partial(chunks, size=2)
    monkeypatch.setattr(manifest_deletes_module, "chunks", in_twos)  # the deletes
    monkeypatch.setattr(queries_module, "chunks", in_twos)  # the reads (`rows_in_chunks`)

    async def scenario(db: Database, registry: Registry, repo: RepositoryRef) -> None:
        platforms = await seed(db, repo.id, [(n, [], 1) for n in range(5)])
        [tagged] = await seed(db, repo.id, [(5, ["v1-s390x"], 1)])
        signature = await seed_one(db, repo.id, 6, ["v1.sig"], subject=platforms[0])
        sbom = await seed_one(db, repo.id, 7, subject=platforms[1])
        held = await seed_one(db, repo.id, 8, subject=platforms[2])
        of_tagged = await seed_one(db, repo.id, 9, subject=tagged)
        holder = await seed_one(db, repo.id, 10, ["holder"], children=[held])
        index = await seed_one(db, repo.id, 11, ["v1"], children=[*platforms, tagged])

        planned = await registry.image_deletion(repo, "", index)
        gone = await registry.delete_image(repo, "", index, actor="alice", client=None)

        # What the confirmation is told is what went.
        assert (planned.platform_manifest_count, planned.referrer_count) == (
            len(gone.platform_manifests),
            len(gone.referrers),
        )
        assert planned.kept_count == 2 and sorted(planned.kept, key=lambda k: k.digest) == sorted(
            [
                KeptManifest(
                    digest=tagged, kind="platform_manifest", listed_by=[], tags=["v1-s390x"]
                ),
                KeptManifest(digest=held, kind="referrer", listed_by=[holder], tags=[]),
            ],
            key=lambda k: k.digest,
        )

        assert gone == DeletedImage(
            "",
            index,
            ["v1"],
            sorted(platforms),
            sorted(
                [DeletedReferrer(signature, ["v1.sig"]), DeletedReferrer(sbom, [])],
                key=lambda r: r.digest,
            ),
        )
        assert await stored_digests(db) == {tagged, of_tagged, held, holder}
        async with db.read() as conn:
            deletes = set(
                (
                    await conn.execute(
                        select(image_events.c.old_digest).where(image_events.c.action == "delete")
                    )
                ).scalars()
            )
            left = set((await conn.execute(select(tags.c.name))).scalars())
        assert deletes == {index, *platforms, signature, sbom}
        assert left == {"v1-s390x", "holder"}

    run(database_url, tmp_path, scenario)


def test_an_image_delete_takes_as_many_statements_whatever_the_index_holds(
    database_url: str, tmp_path: Path
) -> None:
    """A statement per table and per level, not one per manifest: an index of 40 signed
    platform manifests is deleted in as many as one of 4."""

    async def scenario(db: Database, registry: Registry, repo: RepositoryRef) -> list[int]:
        counted = 0

        def count(*_args: Any) -> None:
            nonlocal counted
            counted += 1

        event.listen(db.writer.sync_engine, "before_cursor_execute", count)
        statements = []
        for size, first in ((4, 100), (40, 200)):
            platforms = await seed(db, repo.id, [(first + n, [], 1) for n in range(size)])
            for n, platform in enumerate(platforms):
                await seed_one(db, repo.id, first + size + n, [f"s{first + n}"], subject=platform)
            index = await seed_one(db, repo.id, first - 1, [f"v{size}"], children=platforms)
            counted = 0
            gone = await registry.delete_image(repo, "", index, actor="alice", client=None)
            statements.append(counted)
            assert (len(gone.platform_manifests), len(gone.referrers)) == (size, size)
        return statements

    small, big = run(database_url, tmp_path, scenario)
    assert small == big
