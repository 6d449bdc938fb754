"""Step 2 of a run: decide and delete, in one transaction, under the project's restriction.

The rules are those of `reachability.py`. The manifest rule runs there, on the project's
manifests and index children read here; the link and blob rules run as the SQL below, written
from them, because they cover every link and blob of a project (too many rows to carry over).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Insert, Integer, String, delete, func, literal, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from berth.metadata.database import Database
from berth.metadata.queries import chunks, is_tagged
from berth.metadata.tables import (
    blobs,
    gc_sweep,
    image_events,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    uploads,
    utcnow,
)
from berth.services.gc.reachability import (
    Manifest,
    Reference,
    Young,
    grace_cutoff,
    judge_manifests,
)
from berth.services.gc.restrictions import lift_restriction
from berth.services.gc.runs import RunBook, RunRow, young_values

logger = logging.getLogger("berth.gc")

DECIDE_ATTEMPTS = 3  # the deciding transaction is retried after a deadlock or a lost race
ACTOR = "gc"  # the actor of the image events a run records

# ---------------------------------------------------------------- the link and blob rules in SQL


def in_project(project_id: int) -> Any:
    return select(repositories.c.id).where(repositories.c.project_id == project_id)


def link_referenced() -> Any:
    """For a row of `repository_blobs`: some manifest of its repository references the blob.
    Written so that both planners go from the link to the references of its digest (an
    index) and then to each referencing manifest (its key): joined the other way round,
    SQLite scanned the repository's manifests for every link."""
    manifest_repository = (
        select(manifests.c.repository_id)
        .where(manifests.c.id == manifest_references.c.manifest_id)
        .scalar_subquery()
    )
    return (
        select(literal(1))
        .where(
            manifest_references.c.digest == repository_blobs.c.digest,
            manifest_repository == repository_blobs.c.repository_id,
        )
        .exists()
    )


def linked_anywhere() -> Any:
    """For a row of `blobs`: some repository, of any project, links it."""
    return select(literal(1)).where(repository_blobs.c.digest == blobs.c.digest).exists()


def unreferenced_link(project_id: int) -> Any:
    """A link of the project that no manifest of its repository references (once the doomed
    manifests are deleted): collectable when made before the cutoff, young otherwise."""
    return repository_blobs.c.repository_id.in_(in_project(project_id)) & ~link_referenced()


def collectable_link(project_id: int, cutoff: dt.datetime) -> Any:
    """The link rule: an unreferenced link made before the cutoff (the cheap comparison
    written ahead of the EXISTS it saves evaluating)."""
    return (
        repository_blobs.c.repository_id.in_(in_project(project_id))
        & (repository_blobs.c.linked_at < cutoff)
        & ~link_referenced()
    )


def abandoned_upload(project_id: int, cutoff: dt.datetime) -> Any:
    """The upload rule: an upload of the project nobody has touched since before the cutoff."""
    return uploads.c.repository_id.in_(in_project(project_id)) & (uploads.c.updated_at < cutoff)


def stale_unlinked_blob(cutoff: dt.datetime | ColumnElement[dt.datetime]) -> Any:
    """Half of the blob rule: stored before the cutoff and linked nowhere (the other half is
    the blobs whose links the run removed; the sweep checks `~linked_anywhere()` again)."""
    return (blobs.c.created_at < cutoff) & ~linked_anywhere()


def sweep_listing(
    insert: Insert, run_id: int, kind: str, name: Any, size: Any, *where: Any
) -> Insert:
    """`insert` (into `gc_sweep`) of what the run will remove: the `kind` rows named `name`, of
    `size` bytes, that match `where`."""
    return insert.from_select(
        ["run_id", "kind", "name", "size"],
        select(literal(run_id, Integer), literal(kind, String), name, size).where(*where),
    )


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True, slots=True)
class Decision:
    """What step 2 deleted (or, in a dry run, would delete)."""

    images: int  # images deleted (`queries.is_image`: platform manifests, referrers not again)
    uploads: int  # abandoned uploads
    unlinked: frozenset[str]  # digests of the project's blob links it removed
    young: Young = field(default_factory=Young)
    # The database's now when it decided: links made later (a push once writes are allowed
    # again) were not there to be kept, and are not counted as kept.
    decided_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class BlobFigures:
    blobs: int = 0  # distinct blobs the project no longer holds
    bytes: int = 0  # their size: what the project's storage use drops by
    storage_blobs: int = 0  # blobs no project holds any more: their files leave storage
    storage_bytes: int = 0


class DryRunDone(Exception):
    """Raised at the end of a dry run's transaction to roll it back, carrying its figures."""

    def __init__(self, decision: Decision, figures: BlobFigures) -> None:
        super().__init__("dry run")
        self.decision = decision
        self.figures = figures


class RunLost(Exception):
    """The run was taken over (its lease lapsed and another process recovered it)."""


class Decider:
    def __init__(
        self, db: Database, runs: RunBook, grace_period: float, upload_expiry: float = 86_400
    ) -> None:
        self.db = db
        self.runs = runs
        self.grace_period = grace_period
        self.upload_expiry = upload_expiry

    def cutoff(self) -> ColumnElement[dt.datetime]:
        """The grace cutoff, for a statement to compare with: by the database's clock, as
        pushes write `pushed_at`, `linked_at` and `created_at`. A node whose own clock ran more
        than the grace period ahead would otherwise collect a blob pushed a moment ago on
        another node, before the manifest that references it arrives."""
        return self.db.clock(-self.grace_period)

    async def cutoffs(self, conn: AsyncConnection) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
        """The database's now, the grace cutoff and the upload cutoff, from now read once (the
        manifest rule compares in Python): uploads nobody has touched since before the
        second are abandoned. That is `upload_expiry`, as for the `abandoned-uploads` job, not
        the grace period (a client may pause between chunks far longer than content takes to
        be referenced)."""
        now = (await conn.execute(select(self.db.clock()))).scalar_one()
        return now, grace_cutoff(now, self.grace_period), grace_cutoff(now, self.upload_expiry)

    async def decide(self, run: RunRow, *, dry_run: bool) -> Decision:
        """Step 2 in one transaction, retried when PostgreSQL aborts it (a deadlock). A dry
        run ends in `DryRunDone`, its transaction rolled back. Otherwise the same transaction
        lifts the restriction and moves the run to sweeping (`RunLost` if it was recovered
        meanwhile)."""
        for attempt in range(1, DECIDE_ATTEMPTS + 1):
            try:
                async with self.db.write() as conn:
                    decision = await self._decide_in(conn, run)
                    if dry_run:
                        figures = await self.blob_figures(
                            conn, run.project_id, decision.unlinked, storage=True
                        )
                        links, linked_at = await self.young_links(conn, run.project_id)
                        times = [t for t in (decision.young.newest, linked_at) if t is not None]
                        young = Young(decision.young.images, links, max(times, default=None))
                        raise DryRunDone(replace(decision, young=young), figures)
                    await lift_restriction(conn, run.project_id, run.id)
                    # progress_total is set by the sweep's listing, which always comes next:
                    # counting it here would only lengthen the window in which writes are
                    # refused.
                    moved = await self.runs.to_sweeping(
                        conn,
                        run.id,
                        {
                            "images_deleted": decision.images,
                            "uploads_deleted": decision.uploads,
                            **young_values(decision.young, self.grace_period),
                        },
                    )
                    if not moved:
                        raise RunLost()  # recovered meanwhile as interrupted: roll this back
                return decision
            except DBAPIError:
                if attempt == DECIDE_ATTEMPTS or self.db.is_sqlite:
                    raise
                logger.warning("gc run %s: deciding transaction aborted; retrying", run.id)
        raise AssertionError("unreachable")

    async def _decide_in(self, conn: AsyncConnection, run: RunRow) -> Decision:
        """Step 2's deletions. Only what must be decided under the restriction is here; the
        figures and the list of blobs to sweep are made after it is lifted."""
        now, cutoff, upload_cutoff = await self.cutoffs(conn)
        project = in_project(run.project_id)
        images, young = 0, Young()
        if run.delete_untagged:
            images, young = await self._delete_images(conn, project, cutoff)

        unlinked = await conn.execute(
            delete(repository_blobs)
            .where(collectable_link(run.project_id, cutoff))
            .returning(repository_blobs.c.digest)
        )
        digests = frozenset(unlinked.scalars())

        # Uploads nobody has touched for upload_expiry: their scratch files are swept.
        await conn.execute(
            sweep_listing(
                self.db.insert_ignore(gc_sweep),
                run.id,
                "upload",
                uploads.c.id,
                uploads.c.offset,
                abandoned_upload(run.project_id, upload_cutoff),
            )
        )
        abandoned = select(gc_sweep.c.name).where(
            gc_sweep.c.run_id == run.id, gc_sweep.c.kind == "upload"
        )
        removed_uploads = await conn.execute(delete(uploads).where(uploads.c.id.in_(abandoned)))
        return Decision(images, int(removed_uploads.rowcount or 0), digests, young, now)

    async def _delete_images(
        self, conn: AsyncConnection, project: Any, cutoff: dt.datetime
    ) -> tuple[int, Young]:
        """Delete the project's manifests nothing keeps (`reachability.judge_manifests`);
        returns how many images that was, and what was kept only for being young. The graph
        is walked in Python rather than in a recursive query: one read of the project's
        manifests, and PostgreSQL and SQLite differ in what recursion they allow."""
        tagged = is_tagged()
        rows = await conn.execute(
            select(
                manifests.c.id,
                manifests.c.repository_id,
                manifests.c.image,
                manifests.c.digest,
                manifests.c.subject_digest,
                manifests.c.pushed_at,
                tagged.label("tagged"),
            ).where(manifests.c.repository_id.in_(project))
        )
        found = [
            Manifest(
                r.id,
                r.repository_id,
                r.image,
                r.digest,
                r.pushed_at,
                bool(r.tagged),
                r.subject_digest,
            )
            for r in rows
        ]
        if not found:
            return 0, Young()
        children = await conn.execute(
            select(manifest_references.c.manifest_id, manifest_references.c.digest)
            .join(manifests, manifests.c.id == manifest_references.c.manifest_id)
            .where(manifest_references.c.is_manifest, manifests.c.repository_id.in_(project))
        )
        verdict = judge_manifests(
            found, [Reference(r.manifest_id, r.digest, True) for r in children], cutoff
        )
        if verdict.removed:
            now = utcnow()
            await conn.execute(
                image_events.insert(),
                [
                    {
                        "repository_id": m.repository_id,
                        "image": m.image,
                        "tag": None,
                        "action": "delete",
                        "old_digest": m.digest,
                        "new_digest": None,
                        "actor": ACTOR,
                        "at": now,
                    }
                    for m in verdict.removed
                ],
            )
        for chunk in chunks([m.id for m in verdict.doomed]):
            await conn.execute(delete(manifests).where(manifests.c.id.in_(chunk)))
        return verdict.images, verdict.young

    # ---------------------------------------------------------------- figures

    async def young_links(
        self, conn: AsyncConnection, project_id: int, linked_by: dt.datetime | None = None
    ) -> tuple[int, dt.datetime | None]:
        """The project's blobs linked (by `linked_by`, if given) but referenced by no manifest
        of their repository: after step 2, those are younger than the grace period. How many,
        and the newest link."""
        young = unreferenced_link(project_id)
        if linked_by is not None:
            young &= repository_blobs.c.linked_at <= linked_by
        row = (
            await conn.execute(
                select(
                    func.count(func.distinct(repository_blobs.c.digest)),
                    func.max(repository_blobs.c.linked_at),
                ).where(young)
            )
        ).one()
        return int(row[0]), row[1]

    async def blob_figures(
        self, conn: AsyncConnection, project_id: int, digests: frozenset[str], *, storage: bool
    ) -> BlobFigures:
        """Of these blobs, what the project no longer holds and (with `storage`) what no
        project holds any more."""
        held = (
            select(literal(1))
            .where(
                repository_blobs.c.digest == blobs.c.digest,
                repository_blobs.c.repository_id.in_(in_project(project_id)),
            )
            .exists()
        )
        totals = [0, 0, 0, 0]
        for chunk in chunks(sorted(digests)):
            sums = [func.count(), func.coalesce(func.sum(blobs.c.size), 0)]
            freed = (
                await conn.execute(select(*sums).where(blobs.c.digest.in_(chunk), ~held))
            ).one()
            totals[0] += int(freed[0])
            totals[1] += int(freed[1])
            if storage:
                gone = (
                    await conn.execute(
                        select(*sums).where(blobs.c.digest.in_(chunk), ~linked_anywhere())
                    )
                ).one()
                totals[2] += int(gone[0])
                totals[3] += int(gone[1])
        return BlobFigures(*totals)
