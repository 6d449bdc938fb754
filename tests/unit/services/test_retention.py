"""Retention runs against a real SQLite database: dry run and run compared item for item,
changes during a run, index children and referrers, protected tags, the 10,000-image limit."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

import berth.metadata.queries as queries_module
import berth.services.manifest_deletes as manifest_deletes_module
import berth.services.retention as retention_module
from berth.domain.references import RepositoryRef
from berth.domain.retention import Keep, Rule
from berth.metadata.database import Database
from berth.metadata.queries import chunks
from berth.metadata.tables import (
    audit_log,
    blobs,
    image_events,
    job_leases,
    manifests,
    projects,
    repositories,
    repository_blobs,
    retention_policies,
    retention_runs,
    tags,
    utcnow,
)
from berth.services.manifests import ImageLimitReached
from berth.services.registry import Registry
from berth.services.retention import SCHEDULE_ACTOR, Retention, lease_name
from berth.services.tag_rules import TagRules
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Blob, image_manifest
from tests.retention_seed import ensure_repository, on_registry, seed, seed_one, stored_digests

Scenario = Callable[[Database, Retention], Awaitable[Any]]


def run(url: str, tmp_path: Path, scenario: Scenario) -> Any:
    async def with_retention(db: Database, registry: Registry) -> Any:
        return await scenario(db, Retention(db, registry))

    return on_registry(url, tmp_path / "blobs", with_retention)


async def tag_names(db: Database) -> set[str]:
    async with db.read() as conn:
        return set((await conn.execute(select(tags.c.name))).scalars())


KEEP_TWO = [Rule(Keep.LAST, count=2)]


def test_dry_run_lists_exactly_what_the_real_run_deletes(database_url: str, tmp_path: Path) -> None:
    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        digests = await seed(db, repo, [(i, [f"ci-{i}", f"sha-{i}"], 10 - i) for i in range(6)])
        dry = await retention.run("p", dry_run=True, actor="alice", rules=KEEP_TWO)
        assert await stored_digests(db) == set(digests)  # a dry run deletes nothing
        real = await retention.run("p", dry_run=False, actor="alice", rules=KEEP_TWO)
        assert [(i.repository, i.digest, i.tags) for i in dry.deleted] == [
            (i.repository, i.digest, i.tags) for i in real.deleted
        ]
        assert [i.digest for i in real.deleted] == digests[:4]
        assert real.deleted[0].tags == ["ci-0", "sha-0"]
        assert await stored_digests(db) == set(digests[4:])
        assert await tag_names(db) == {"ci-4", "sha-4", "ci-5", "sha-5"}
        assert "next garbage collection" in real.note
        async with db.read() as conn:
            actions = list(
                (await conn.execute(select(audit_log.c.action).order_by(audit_log.c.id))).scalars()
            )
            events = list(
                (
                    await conn.execute(
                        select(image_events.c.action, image_events.c.actor).where(
                            image_events.c.action == "delete"
                        )
                    )
                ).all()
            )
        assert actions[0] == "retention.dry_run" and actions[-1] == "retention.run"
        assert actions.count("image.delete") == 4
        assert events == [("delete", "alice")] * 4
        history, total = await retention.history("p")
        assert total == 2 and [r.dry_run for r in history] == [False, True]
        assert history[0].images_deleted == 4 and history[0].actor == "alice"

    run(database_url, tmp_path, scenario)


def test_retag_during_a_run_keeps_the_image(database_url: str, tmp_path: Path) -> None:
    # Azure ACR #520: an image re-tagged after the run read its state must not be deleted.
    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        digests = await seed(db, repo, [(i, [f"ci-{i}"], 10 - i) for i in range(4)])
        prepared = await retention.prepare("p", KEEP_TWO)
        assert [d.image.digest for d in prepared.plan.deletions] == digests[:2]
        # `latest` moves onto the oldest image after the snapshot.
        async with db.write() as conn:
            await conn.execute(
                tags.insert().values(repository_id=repo, image="", name="latest", digest=digests[0])
            )
        result = await retention.carry_out(prepared, dry_run=False, actor="bob")
        assert [i.digest for i in result.deleted] == [digests[1]]
        assert result.images_skipped == 1
        assert digests[0] in await stored_digests(db)
        assert "changed since the run's snapshot" in result.note

    run(database_url, tmp_path, scenario)


def test_push_during_a_run_is_not_deleted(database_url: str, tmp_path: Path) -> None:
    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        digests = await seed(db, repo, [(i, [f"ci-{i}"], 10 - i) for i in range(3)])
        prepared = await retention.prepare("p", [Rule(Keep.LAST, count=0)])
        # A new image, and the oldest deleted and pushed again (a new row), after the snapshot.
        fresh = await seed(db, repo, [(100, ["new"], 0)])
        async with db.write() as conn:
            await conn.execute(manifests.delete().where(manifests.c.digest == digests[0]))
        await seed(db, repo, [(0, [], 0)])
        result = await retention.carry_out(prepared, dry_run=False, actor="bob")
        assert [i.digest for i in result.deleted] == digests[1:]
        assert await stored_digests(db) == {digests[0], fresh[0]}

    run(database_url, tmp_path, scenario)


def test_index_children_and_referrers_go_with_their_image(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        amd = await seed_one(db, repo, 1, age_days=30)
        arm = await seed_one(db, repo, 2, age_days=30)
        index = await seed_one(db, repo, 3, ["old"], age_days=30, children=[amd, arm])
        signature = await seed_one(db, repo, 4, age_days=0, subject=index)
        keep = await seed_one(db, repo, 5, ["new"], age_days=0)
        rules = [Rule(Keep.PUSHED_WITHIN, days=7)]
        dry = await retention.run("p", dry_run=True, actor="a", rules=rules)
        assert [(i.digest, i.platform_manifests, i.referrers) for i in dry.deleted] == [
            (index, 2, 1)
        ]
        await retention.run("p", dry_run=False, actor="a", rules=rules)
        assert await stored_digests(db) == {keep}
        assert signature not in await stored_digests(db)

    run(database_url, tmp_path, scenario)


def test_nested_indexes_and_shared_platform_manifests_leave_no_stray_image(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """index -> index -> image manifests goes all the way down; a platform manifest two doomed
    indexes list goes with the one deleted last, even when they are deleted in different
    batches (one image a batch here). Each image is one audit entry with counts."""
    monkeypatch.setattr(retention_module, "BATCH", 1)

    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        amd = await seed_one(db, repo, 1, age_days=30)
        arm = await seed_one(db, repo, 2, age_days=30)
        inner = await seed_one(db, repo, 3, age_days=30, children=[amd, arm])
        outer = await seed_one(db, repo, 4, ["old"], age_days=30, children=[inner])
        await seed_one(db, repo, 5, age_days=0, subject=arm)
        shared = await seed_one(db, repo, 6, age_days=30)
        first = await seed_one(db, repo, 7, ["a"], age_days=30, children=[shared])
        second = await seed_one(db, repo, 8, ["b"], age_days=20, children=[shared])
        keep = await seed_one(db, repo, 9, ["new"], age_days=0)
        rules = [Rule(Keep.PUSHED_WITHIN, days=7)]
        dry = await retention.run("p", dry_run=True, actor="a", rules=rules)
        went = {i.digest: (i.platform_manifests, i.referrers) for i in dry.deleted}
        assert went == {outer: (3, 1), first: (0, 0), second: (1, 0)}
        real = await retention.run("p", dry_run=False, actor="a", rules=rules)
        assert (real.images_deleted, real.images_skipped) == (3, 0)
        assert await stored_digests(db) == {keep}
        async with db.read() as conn:
            audited = {
                row.target: row.detail
                for row in await conn.execute(
                    select(audit_log.c.target, audit_log.c.detail).where(
                        audit_log.c.action == "image.delete"
                    )
                )
            }
        assert len(audited) == 3
        assert json.loads(audited[f"app@{outer}"]) == {
            "platform_manifest_count": 3,
            "referrer_count": 1,
        }

    run(database_url, tmp_path, scenario)


def test_tag_overwrite_off_protects_every_tagged_image(database_url: str, tmp_path: Path) -> None:
    async def scenario(db: Database, retention: Retention) -> None:
        locked = await ensure_repository(db, "p", "locked", tag_overwrite=False)
        open_repo = await ensure_repository(db, "p", "open")
        kept = await seed(db, locked, [(1, ["v1"], 90), (2, [], 90)])
        await seed(db, open_repo, [(3, ["v1"], 90)])
        result = await retention.run(
            "p", dry_run=False, actor="a", rules=[Rule(Keep.PUSHED_WITHIN, days=7)]
        )
        assert sorted(i.repository for i in result.deleted) == ["locked", "open"]
        assert await stored_digests(db) == {kept[0]}  # the tagged image of `locked`

    run(database_url, tmp_path, scenario)


def test_an_immutable_tag_rule_keeps_the_images_it_covers(
    database_url: str, tmp_path: Path
) -> None:
    """Retention never deletes an image with a tag an immutable tag rule covers; the same tag
    name in a repository the rule does not cover protects nothing."""

    async def scenario(db: Database, retention: Retention) -> None:
        app = await ensure_repository(db, "p", "app")
        other = await ensure_repository(db, "p", "other")
        app_images = await seed(db, app, [(1, ["v1"], 90), (2, ["latest"], 90)])
        other_images = await seed(db, other, [(3, ["v1"], 90)])
        await TagRules(db).create("p", "v*", "app", actor="a")
        result = await retention.run(
            "p", dry_run=False, actor="a", rules=[Rule(Keep.PUSHED_WITHIN, days=7)]
        )
        deleted = {(i.repository, i.digest) for i in result.deleted}
        assert deleted == {("app", app_images[1]), ("other", other_images[0])}
        assert await stored_digests(db) == {app_images[0]}

    run(database_url, tmp_path, scenario)


def test_a_full_repository_drains_to_the_rules_n(database_url: str, tmp_path: Path) -> None:
    """At the 10,000-image limit a push is refused; a run keeping 10 drains the repository,
    and the same push is taken."""

    async def scenario(db: Database, retention: Retention) -> None:
        registry = retention.registry
        repo_id = await ensure_repository(db, "p", "ci")
        await seed(
            db, repo_id, [(i, [f"c{i}", f"s{i}"], (10_000 - i) / 1000) for i in range(10_000)]
        )
        config = Blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG)
        layer = Blob(b"layer bytes", OCI_LAYER)
        async with db.write() as conn:
            for blob in (config, layer):
                await conn.execute(blobs.insert().values(digest=blob.digest, size=len(blob.data)))
                await conn.execute(
                    repository_blobs.insert().values(repository_id=repo_id, digest=blob.digest)
                )
        manifest = image_manifest(config.descriptor(), [layer.descriptor()])
        repo = RepositoryRef(repo_id, 1, "p", "ci", False, True)

        async def push() -> None:
            await registry.put_manifest(repo, "", "next", manifest.data, OCI_MANIFEST)

        with pytest.raises(ImageLimitReached):
            await push()
        started = time.perf_counter()
        result = await retention.run(
            "p", dry_run=False, actor="a", rules=[Rule(Keep.LAST, count=10)]
        )
        elapsed = time.perf_counter() - started
        assert result.images_deleted == 9_990 and result.error is None
        async with db.read() as conn:
            left = (await conn.execute(select(func.count()).select_from(manifests))).scalar()
            left_tags = set((await conn.execute(select(tags.c.name))).scalars())
        assert left == 10
        assert left_tags == {f"{p}{i}" for i in range(9_990, 10_000) for p in "cs"}
        await push()
        print(f"retention run over 10,000 images and 20,000 tags: {elapsed:.1f} s")

    run(database_url, tmp_path, scenario)  # Registry's limit is the default 10,000


def test_a_due_schedule_runs_once_as_schedule(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        await seed(db, repo, [(i, [f"ci-{i}"], 10 - i) for i in range(4)])
        policy = await retention.set_policy(
            "p", KEEP_TWO, "daily 03:00", actor="alice", client=None
        )
        assert policy.schedule == "daily 03:00" and policy.next_run_at is not None
        assert not await retention.has_due()
        async with db.write() as conn:
            await conn.execute(
                update(retention_policies).values(next_run_at=utcnow() - dt.timedelta(minutes=1))
            )
        assert await retention.has_due()
        assert await retention.run_due() == 1
        assert await retention.run_due() == 0  # its next time moved to tomorrow
        history, _ = await retention.history("p")
        assert [(r.actor, r.images_deleted, r.dry_run) for r in history] == [
            (SCHEDULE_ACTOR, 2, False)
        ]
        async with db.read() as conn:
            runs = (await conn.execute(select(func.count()).select_from(retention_runs))).scalar()
        assert runs == 1
        # The server's log says what the scheduled run did, as it does of GC runs.
        logged = [r for r in caplog.records if r.name == "berth.retention"]
        assert [(r.levelname, r.getMessage()) for r in logged] == [
            (
                "INFO",
                f"retention run {history[0].id} of project p by {SCHEDULE_ACTOR}: deleted 2 "
                "images, 0 skipped, 2 kept, 0 outside the rules",
            )
        ]

    with caplog.at_level(logging.INFO, logger="berth.retention"):
        run(database_url, tmp_path, scenario)


def test_tag_overwrite_switched_off_during_a_run_protects_the_images(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        digests = await seed(db, repo, [(i, [f"v{i}"], 10 - i) for i in range(3)])
        prepared = await retention.prepare("p", [Rule(Keep.LAST, count=1)])
        assert len(prepared.plan.deletions) == 2
        async with db.write() as conn:
            await conn.execute(update(repositories).values(tag_overwrite=False))
        result = await retention.carry_out(prepared, dry_run=False, actor="a")
        assert result.images_deleted == 0 and result.images_skipped == 2
        assert await stored_digests(db) == set(digests)

    run(database_url, tmp_path, scenario)


def test_an_index_pushed_during_a_run_keeps_the_platform_manifest_it_lists(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        amd = await seed_one(db, repo, 1, age_days=30)
        arm = await seed_one(db, repo, 2, age_days=30)
        old = await seed_one(db, repo, 3, ["old"], age_days=30, children=[amd, arm])
        other = await seed_one(db, repo, 4, ["other"], age_days=30, children=[amd])
        prepared = await retention.prepare("p", [Rule(Keep.PUSHED_WITHIN, days=7)])
        assert {d.image.digest for d in prepared.plan.deletions} == {old, other}
        # The shared amd64 manifest goes with one of them, once.
        children = [c.digest for d in prepared.plan.deletions for c in d.children]
        assert sorted(children) == sorted([amd, arm])
        # A new index listing the arm64 manifest arrives after the snapshot.
        fresh = await seed_one(db, repo, 5, ["new"], age_days=0, children=[arm])
        await retention.carry_out(prepared, dry_run=False, actor="a")
        assert await stored_digests(db) == {arm, fresh}

    run(database_url, tmp_path, scenario)


def test_a_batch_of_big_indexes_is_read_and_deleted_in_bounded_statements(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With IN lists of two values, no statement of a run takes more than a handful of
    parameters, however many platform manifests its batch holds: a batch of real indexes of
    thousands of platform manifests each stays under the databases' parameter limits
    (SQLite's 32,766, asyncpg's 32,767), and every image still goes."""
    in_twos = functools.partial(chunks, size=2)
    monkeypatch.setattr(manifest_deletes_module, "chunks", in_twos)  # the deletes
    monkeypatch.setattr(queries_module, "chunks", in_twos)  # the reads (`rows_in_chunks`)

    async def scenario(db: Database, retention: Retention) -> int:
        repo = await ensure_repository(db, "p", "app")
        for first in (10, 20, 30):
            platforms = [await seed_one(db, repo, first + n, age_days=30) for n in range(6)]
            await seed_one(db, repo, first + 9, [f"v{first}"], age_days=30, children=platforms)
        keep = await seed_one(db, repo, 99, ["new"], age_days=0)
        most = 0

        def parameters(
            _conn: Any, _cursor: Any, _sql: str, params: Any, _context: Any, many: bool
        ) -> None:
            nonlocal most
            if not many:  # executemany: one row's parameters at a time
                most = max(most, len(params))

        event.listen(db.writer.sync_engine, "before_cursor_execute", parameters)
        real = await retention.run(
            "p", dry_run=False, actor="a", rules=[Rule(Keep.PUSHED_WITHIN, days=7)]
        )
        assert (real.images_deleted, real.images_skipped) == (3, 0)
        assert await stored_digests(db) == {keep}
        return most

    assert run(database_url, tmp_path, scenario) <= 12


def test_a_run_whose_node_is_gone_is_marked_interrupted_and_one_still_at_work_is_not(
    database_url: str, tmp_path: Path
) -> None:
    """Runs recorded running by processes of another machine: the one whose lease lapsed (its
    node died) is marked interrupted with what it had deleted; the one whose lease its node
    renews goes on running."""

    async def scenario(db: Database, retention: Retention) -> None:
        repo = await ensure_repository(db, "p", "app")
        await seed(db, repo, [(0, ["b0"], 1)])
        project_id = (await db_project_ids(db))["p"]
        ids = {}
        async with db.write() as conn:
            for holder, lease_left in (("elsewhere:11", 25.0), ("elsewhere:12", -1.0)):
                inserted = await conn.execute(
                    retention_runs.insert().values(
                        project_id=project_id,
                        actor="alice",
                        dry_run=False,
                        rules="[]",
                        deleted="[]",
                        images_deleted=7,
                        images_skipped=1,
                        state="running",
                        holder=holder,
                    )
                )
                run_id = inserted.inserted_primary_key[0]  # type: ignore[index]
                ids[holder] = run_id
                await conn.execute(
                    job_leases.insert().values(
                        name=lease_name(run_id), holder=holder, expires_at=db.clock(lease_left)
                    )
                )
        assert await retention.mark_interrupted() == 1
        alive = await retention.get_run("p", ids["elsewhere:11"])
        dead = await retention.get_run("p", ids["elsewhere:12"])
        assert (alive.state, alive.finished_at, alive.error) == ("running", None, None)
        assert (dead.state, dead.images_deleted, dead.images_skipped) == ("interrupted", 7, 1)
        assert dead.finished_at is not None
        assert (
            dead.error == "interrupted: its process (elsewhere:12) stopped after deleting 7 images"
        )
        assert "Interrupted (its process stopped) after deleting 7 images" in dead.note
        assert await retention.mark_interrupted() == 0  # once
        async with db.read() as conn:
            audited = (
                (
                    await conn.execute(
                        select(audit_log.c.detail).where(audit_log.c.action == "retention.run")
                    )
                )
                .scalars()
                .all()
            )
        assert len(audited) == 1 and "interrupted" in audited[0]

    run(database_url, tmp_path, scenario)


async def db_project_ids(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        return {row.name: row.id for row in await conn.execute(select(projects))}
