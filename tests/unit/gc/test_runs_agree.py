"""Every scenario of `test_reachability.py` again, through a real run: the content written to a
fresh SQLite database and blob directory, `GarbageCollector.run` carried out in-process, and what
is left compared with what the pure rules decided (rows and files). The SQL of the link and blob
rules, and the run's figures, are held to the rules this way; a dry run first must change
nothing and report the run's figures."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from berth.services.gc import GarbageCollector, Run
from berth.services.gc.reachability import Verdict, decide
from tests.unit.gc import test_reachability
from tests.unit.gc.on_sqlite import Left, open_registry, what_is_left
from tests.unit.gc.scenarios import CUTOFF, GRACE, NOW, OLD, PROJECT, Content


def expected(content: Content, verdict: Verdict) -> Left:
    every_blob = frozenset(content.blobs)
    every_upload = frozenset(u.id for u in content.uploads)
    return Left(
        manifests=frozenset(m.id for m in content.manifests) - verdict.manifests,
        links=frozenset(content.links) - verdict.links,
        blobs=every_blob - verdict.blobs,
        files=every_blob - verdict.blobs,
        uploads=every_upload - verdict.uploads,
        scratch=every_upload - verdict.uploads,
    )


async def collect_on_sqlite(
    directory: Path, content: Content, *, delete_untagged: bool
) -> tuple[Left, Run, Run]:
    """A dry run (which must change nothing), then the run; what is left after them."""
    db, store = await open_registry(directory, content)
    try:
        collector = GarbageCollector(db, store, grace_period=GRACE)
        before = await what_is_left(db, store)
        dry = await collector.run(
            PROJECT, dry_run=True, delete_untagged=delete_untagged, actor="test"
        )
        assert await what_is_left(db, store) == before
        run = await collector.run(PROJECT, delete_untagged=delete_untagged, actor="test")
        return await what_is_left(db, store), dry, run
    finally:
        await db.dispose()


# What a dry run reports as the run would. Not the storage figures: a dry run counts the blobs
# whose links it would remove, not those no repository links any more (a deleted repository's),
# which the run's sweep also removes.
FIGURES = [
    "images_deleted",
    "blobs_deleted",
    "bytes_freed",
    "uploads_deleted",
    "young_images_kept",
    "young_blobs_kept",
    "young_collectable_at",
]


SCENARIOS: list[Callable[[], None]] = [
    test
    for name, test in vars(test_reachability).items()
    if name.startswith("test_") and "collect" in test.__code__.co_names
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__.removeprefix("test_"))
def test_a_run_deletes_what_the_rules_decide(
    scenario: Callable[[], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = itertools.count()

    def collect(content: Content, *, delete_untagged: bool = True) -> Verdict:
        verdict = decide(content.graph(), CUTOFF, delete_untagged=delete_untagged)
        directory = tmp_path / str(next(runs))
        directory.mkdir()
        left, dry, run = asyncio.run(
            collect_on_sqlite(directory, content, delete_untagged=delete_untagged)
        )
        assert run.state == dry.state == "succeeded", (dry.error, run.error)
        assert [getattr(dry, f) for f in FIGURES] == [getattr(run, f) for f in FIGURES]
        assert dry.storage_blobs_deleted <= run.storage_blobs_deleted
        assert left == expected(content, verdict)
        assert run.images_deleted == verdict.images
        assert run.uploads_deleted == len(verdict.uploads)
        assert run.storage_blobs_deleted == len(verdict.blobs)
        assert run.young_images_kept == verdict.young.images
        assert run.young_blobs_kept == verdict.young.blobs
        return verdict

    monkeypatch.setattr(test_reachability, "collect", collect)
    scenario()


def test_a_run_removes_uploads_by_the_upload_expiry_not_the_grace_period(tmp_path: Path) -> None:
    """With an hour of grace and a day of upload expiry, a run keeps an upload last touched
    two hours ago (and its scratch file) and removes one untouched for two days."""
    content = Content()
    repository = content.repository()
    content.upload(repository, "paused", at=NOW - dt.timedelta(hours=2))
    content.upload(repository, "abandoned", at=OLD)

    async def collect() -> Left:
        db, store = await open_registry(tmp_path, content)
        try:
            collector = GarbageCollector(db, store, grace_period=3600, upload_expiry=GRACE)
            run = await collector.run(PROJECT, delete_untagged=True, actor="test")
            assert run.state == "succeeded", run.error
            assert run.uploads_deleted == 1
            return await what_is_left(db, store)
        finally:
            await db.dispose()

    left = asyncio.run(collect())
    assert left.uploads == left.scratch == {"paused"}
