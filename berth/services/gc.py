"""Garbage collection per project: what no remaining image needs leaves metadata and storage.

A run goes through three steps (docs/architecture.md, "Garbage collection"):

1. **Restrict.** `project_settings.gc_restricted_by` is set to the run, so pushes, new tags and
   repository changes in the project are refused (`services/restrictions.py`); pulls go on.
2. **Decide and delete, in one transaction.** With delete-untagged, the images nothing keeps
   (no tag, pushed before the grace period, not a child, referrer or subject of a kept image);
   then the project's repository blob links that no manifest of their repository references
   and that are older than the grace period; abandoned uploads. The same transaction lifts
   the restriction, so the restricted window is just this step, and a crash leaves all of it
   done or none of it.
3. **Sweep**, with writes allowed again. The blobs that lost a link, and any blob no
   repository links that is older than the grace period, are listed in `gc_sweep`; batch by
   batch, the rows of those that no repository links by then are deleted and their files
   removed, in one transaction. That conditional delete is the compare-and-set against a
   concurrent push of the same digest: a push that linked the blob first keeps row and file;
   a push after it waits for the deleted row, finds it gone, and commits its file again
   (`services/uploads.py`). Upload scratch files go the same way.

One run per project at a time. A run holds a lease (`job_leases`, `gc:{project id}`) that it
renews while it works; a run whose lease lapsed, or whose holder process on this machine is
gone, is recovered by any server process: before step 2 committed, it is rolled back (the
restriction lifted, nothing changed); after, its sweep is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import Integer, String, delete, func, literal, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import RegistryError
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import (
    audit_log,
    blobs,
    gc_runs,
    gc_sweep,
    image_events,
    job_leases,
    manifest_references,
    manifests,
    project_settings,
    projects,
    repositories,
    repository_blobs,
    tags,
    uploads,
    utcnow,
)
from berth.services.restrictions import WRITE_GATE_LOCK
from berth.storage.base import BlobStore

logger = logging.getLogger("berth.gc")

# States of a run; `phase` says where a running one is.
RUNNING, SUCCEEDED, FAILED, ROLLED_BACK = "running", "succeeded", "failed", "rolled_back"
QUEUED, MARKING, SWEEPING, DONE = "queued", "marking", "sweeping", "done"

LEASE_SECONDS = 30.0  # a run nobody renews for this long is taken over by another process
HEARTBEAT_SECONDS = 5.0
RECOVERY_SECONDS = 10.0  # how often a serving process looks for interrupted runs
SWEEP_BATCH = 500  # files removed per transaction (and per progress update)
ID_CHUNK = 5000  # values per IN (...) list, well under SQLite's and asyncpg's parameter limits
DECIDE_ATTEMPTS = 3  # the deciding transaction is retried after a deadlock or a lost race
ACTOR = "gc"  # the actor of the image events a run records
_LONG_AGO = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

T = TypeVar("T")
Progress = Callable[[dict[str, Any]], None]


class GcAlreadyRunning(RegistryError):
    code = "GC_RUNNING"
    status = 409


class GcRunUnknown(RegistryError):
    code = "NOT_FOUND"
    status = 404


@dataclass(frozen=True, slots=True)
class Young:
    """What step 2 kept only because it is younger than the grace period."""

    images: int = 0  # untagged images nothing else keeps (`queries.is_image`)
    blobs: int = 0  # blobs linked in a repository that no manifest of it references
    newest: dt.datetime | None = None  # push or link time of the youngest of them


@dataclass(frozen=True, slots=True)
class Decision:
    """What step 2 deleted (or, in a dry run, would delete)."""

    images: int  # images deleted (`queries.is_image`: platform manifests, referrers not again)
    uploads: int  # abandoned uploads
    unlinked: frozenset[str]  # digests of the project's blob links it removed
    young: Young = Young()


@dataclass(frozen=True, slots=True)
class BlobFigures:
    blobs: int = 0  # distinct blobs the project no longer holds
    bytes: int = 0  # their size: what the project's storage use drops by
    storage_blobs: int = 0  # blobs no project holds any more: their files leave storage
    storage_bytes: int = 0


class _DryRunDone(Exception):
    """Raised at the end of a dry run's transaction to roll it back, carrying its figures."""

    def __init__(self, decision: Decision, figures: BlobFigures) -> None:
        super().__init__("dry run")
        self.decision = decision
        self.figures = figures


class _RunLost(Exception):
    """The run was taken over (its lease lapsed and another process recovered it)."""


@dataclass(frozen=True, slots=True)
class _Run:
    id: int
    project_id: int
    phase: str
    dry_run: bool
    delete_untagged: bool


def lease_name(project_id: int) -> str:
    return f"gc:{project_id}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_test_pause(value: str) -> tuple[str, float] | None:
    """`marking=5` -> ("marking", 5.0): a test hook that holds each run in that phase."""
    if not value:
        return None
    phase, _, seconds = value.partition("=")
    if phase not in (MARKING, SWEEPING):
        raise ValueError(f"gc_test_pause: phase must be {MARKING} or {SWEEPING}, not {phase!r}")
    return phase, float(seconds or 0)


def _chunks(values: Sequence[T], size: int = ID_CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class GarbageCollector:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        *,
        grace_period: float = 3600,
        test_pause: str = "",
    ) -> None:
        self.db = db
        self.store = store
        self.grace_period = grace_period
        self._pause = parse_test_pause(test_pause)
        self._host = socket.gethostname()[:40]
        self.holder = f"{self._host}:{os.getpid()}"
        self._active: set[int] = set()  # runs this process is executing
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recovery: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ serving process

    def start(self) -> None:
        """Recover interrupted runs now and every few seconds (runs of a crashed process)."""
        self._recovery = asyncio.create_task(self._recover_forever(), name="gc recovery")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._recovery] if self._recovery else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._recovery = None

    async def _recover_forever(self) -> None:
        while True:
            try:
                await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("gc: could not look for interrupted runs")
            await asyncio.sleep(RECOVERY_SECONDS)

    def _spawn(self, run_id: int) -> None:
        task = asyncio.create_task(self.execute(run_id), name=f"gc run {run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ starting runs

    async def launch(
        self,
        project: str,
        *,
        dry_run: bool = False,
        delete_untagged: bool = False,
        actor: str,
        client: str | None = None,
    ) -> dict[str, Any]:
        """Start a run in the background of this process (the API); returns it as queued."""
        run = await self.start_run(
            project,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            actor=actor,
            client=client,
            here=False,
        )
        self._spawn(int(run["id"]))
        return run

    async def run(
        self,
        project: str,
        *,
        dry_run: bool = False,
        delete_untagged: bool = False,
        actor: str,
        client: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Start a run and carry it out here (the CLI); returns it finished."""
        run = await self.start_run(
            project,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            actor=actor,
            client=client,
            here=True,
        )
        return await self.execute(int(run["id"]), progress)

    async def start_run(
        self,
        project: str,
        *,
        dry_run: bool,
        delete_untagged: bool,
        actor: str,
        client: str | None = None,
        here: bool,
    ) -> dict[str, Any]:
        """Record a new run and take the project's GC lease; refused while one is running.
        An interrupted run of the project is recovered first (finished `here`, or in the
        background, when its sweep was under way: then this one is refused). The project's
        audit log records the run with it: who, from where (`client`), with which options
        (it deletes images); its outcome is in the GC history under the same id."""
        project_id = await self._project_id(project)
        await self.recover(project_id, resume_here=here)
        name = lease_name(project_id)
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(
                self.db.insert_ignore(job_leases).values(name=name, holder="", expires_at=_LONG_AGO)
            )
            # Locked, so two starts in one project queue here (PostgreSQL; SQLite has one writer).
            await conn.execute(
                select(job_leases.c.name).where(job_leases.c.name == name).with_for_update()
            )
            active = (
                await conn.execute(
                    select(gc_runs.c.id).where(
                        gc_runs.c.project_id == project_id, gc_runs.c.state == RUNNING
                    )
                )
            ).scalar()
            if active is not None:
                raise GcAlreadyRunning(
                    f"garbage collection run {active} is already running in project "
                    f"{project!r}; one run per project at a time. Follow it under Management "
                    f"in the console (or GET /api/v1/projects/{project}/gc/current) and start "
                    "another when it has finished.",
                    {"run": active},
                )
            run_id = (
                await conn.execute(
                    gc_runs.insert()
                    .values(
                        project_id=project_id,
                        state=RUNNING,
                        phase=QUEUED,
                        dry_run=dry_run,
                        delete_untagged=delete_untagged,
                        started_at=now,
                        actor=actor[:64],
                        grace_seconds=self.grace_period,
                    )
                    .returning(gc_runs.c.id)
                )
            ).scalar_one()
            await conn.execute(
                audit_log.insert().values(
                    at=now,
                    project_id=project_id,
                    actor=actor[:64],
                    action="gc.dry_run" if dry_run else "gc.run",
                    target=f"run {run_id}",
                    detail=json.dumps(
                        {"run": run_id, "dry_run": dry_run, "delete_untagged": delete_untagged}
                    ),
                    client=client[:64] if client else None,
                )
            )
            if not dry_run:
                # Files a failed run of this project left to sweep become this run's work.
                await conn.execute(
                    update(gc_sweep)
                    .where(
                        gc_sweep.c.run_id.in_(
                            select(gc_runs.c.id).where(
                                gc_runs.c.project_id == project_id, gc_runs.c.state != RUNNING
                            )
                        )
                    )
                    .values(run_id=run_id)
                )
            await conn.execute(
                update(job_leases)
                .where(job_leases.c.name == name)
                .values(holder=self.holder, expires_at=now + dt.timedelta(seconds=LEASE_SECONDS))
            )
        return await self.get_run(project, int(run_id))

    # ------------------------------------------------------------------ carrying a run out

    async def execute(self, run_id: int, progress: Progress | None = None) -> dict[str, Any]:
        """Carry out (or finish) a run whose lease this process holds. Never raises for the
        run's own failures: they are recorded in it."""
        run = await self._load(run_id)
        self._active.add(run_id)
        heartbeat = asyncio.create_task(self._heartbeat(run.project_id))
        try:
            unlinked: frozenset[str] = frozenset()
            if run.phase in (QUEUED, MARKING):
                if run.dry_run:
                    await self._dry_run(run)
                    return await self._run_dict(run_id)
                unlinked = await self._mark(run)
            await self._list_for_sweep(run, unlinked)
            await self._sweep(run, progress)
            await self._finish(run)
        except asyncio.CancelledError:
            # This process is stopping: leave the run as any other process can pick it up.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._interrupted(run_id))
            raise
        except _RunLost:
            logger.warning("gc run %s was taken over by another process", run_id)
        except Exception as exc:
            logger.exception("gc run %s failed", run_id)
            await self._fail(run_id, exc)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._active.discard(run_id)
            with contextlib.suppress(Exception):
                await self._release(run.project_id)
        return await self._run_dict(run_id)

    async def _mark(self, run: _Run) -> frozenset[str]:
        """Steps 1 and 2: restrict, decide and delete, lift the restriction. Returns the
        digests whose links were removed."""
        async with self.db.write() as conn:
            if not self.db.is_sqlite:
                # Waits for the project's writes that already passed their check: once this
                # commits, every write in the project sees the restriction.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:gate, :project)"),
                    {"gate": WRITE_GATE_LOCK, "project": run.project_id},
                )
            await conn.execute(
                self.db.upsert(
                    project_settings, ["project_id"], {"gc_restricted_by": run.id}
                ).values(project_id=run.project_id, gc_restricted_by=run.id)
            )
            await self._set_phase(conn, run.id, MARKING)
        restricted_at = time.monotonic()
        await self._pause_in(MARKING)
        decision = await self._decide(run, dry_run=False)
        restricted = time.monotonic() - restricted_at
        async with self.db.write() as conn:
            await conn.execute(
                update(gc_runs).where(gc_runs.c.id == run.id).values(restricted_seconds=restricted)
            )
        logger.info(
            "gc run %s: %s images and %s blob links deleted; writes refused for %.3f s",
            run.id,
            decision.images,
            len(decision.unlinked),
            restricted,
        )
        return decision.unlinked

    async def _dry_run(self, run: _Run) -> None:
        """The deciding transaction, rolled back: figures, no changes, no restriction."""
        async with self.db.write() as conn:
            await self._set_phase(conn, run.id, MARKING)
        await self._pause_in(MARKING)
        try:
            await self._decide(run, dry_run=True)
            raise AssertionError("a dry run ends in _DryRunDone")
        except _DryRunDone as done:
            decision, figures = done.decision, done.figures
        async with self.db.write() as conn:
            await conn.execute(
                update(gc_runs)
                .where(gc_runs.c.id == run.id, gc_runs.c.state == RUNNING)
                .values(
                    state=SUCCEEDED,
                    phase=DONE,
                    finished_at=utcnow(),
                    restricted_seconds=0.0,
                    images_deleted=decision.images,
                    uploads_deleted=decision.uploads,
                    blobs_deleted=figures.blobs,
                    bytes_freed=figures.bytes,
                    storage_blobs_deleted=figures.storage_blobs,
                    storage_bytes_freed=figures.storage_bytes,
                    **self._young_values(decision.young),
                )
            )

    def _young_values(self, young: Young) -> dict[str, Any]:
        """A run's record of what it kept for being young, and from when that can go."""
        collectable = None
        if young.newest is not None:
            collectable = young.newest + dt.timedelta(seconds=self.grace_period)
        return {
            "young_images_kept": young.images,
            "young_blobs_kept": young.blobs,
            "young_collectable_at": collectable,
        }

    async def _decide(self, run: _Run, *, dry_run: bool) -> Decision:
        """Step 2 in one transaction, retried when PostgreSQL aborts it (a deadlock)."""
        for attempt in range(1, DECIDE_ATTEMPTS + 1):
            try:
                async with self.db.write() as conn:
                    decision = await self._decide_in(conn, run)
                    if dry_run:
                        figures = await self._blob_figures(
                            conn, run, decision.unlinked, storage=True
                        )
                        links, linked_at = await self._young_links(conn, run)
                        times = [t for t in (decision.young.newest, linked_at) if t is not None]
                        young = Young(decision.young.images, links, max(times, default=None))
                        decision = replace(decision, young=young)
                        raise _DryRunDone(decision, figures)  # rolls the transaction back
                    await self._lift(conn, run, decision)
                return decision
            except DBAPIError:
                if attempt == DECIDE_ATTEMPTS or self.db.is_sqlite:
                    raise
                logger.warning("gc run %s: deciding transaction aborted; retrying", run.id)
        raise AssertionError("unreachable")

    async def _decide_in(self, conn: AsyncConnection, run: _Run) -> Decision:
        """Step 2's deletions. Only what must be decided under the restriction is here; the
        figures and the list of blobs to sweep are made after it is lifted."""
        cutoff = utcnow() - dt.timedelta(seconds=self.grace_period)
        in_project = select(repositories.c.id).where(repositories.c.project_id == run.project_id)
        images, young = 0, Young()
        if run.delete_untagged:
            images, young = await self._delete_images(conn, run, in_project, cutoff)

        # The project's links that no manifest of their repository references, past the grace.
        unlinked = await conn.execute(
            delete(repository_blobs)
            .where(
                repository_blobs.c.repository_id.in_(in_project),
                repository_blobs.c.linked_at < cutoff,
                ~_link_referenced(),
            )
            .returning(repository_blobs.c.digest)
        )
        digests = frozenset(unlinked.scalars())

        # Uploads nobody has touched for the grace period: their scratch files are swept.
        await conn.execute(
            self.db.insert_ignore(gc_sweep).from_select(
                ["run_id", "kind", "name", "size"],
                select(
                    literal(run.id, Integer),
                    literal("upload", String),
                    uploads.c.id,
                    uploads.c.offset,
                ).where(uploads.c.repository_id.in_(in_project), uploads.c.updated_at < cutoff),
            )
        )
        abandoned = select(gc_sweep.c.name).where(
            gc_sweep.c.run_id == run.id, gc_sweep.c.kind == "upload"
        )
        removed_uploads = await conn.execute(delete(uploads).where(uploads.c.id.in_(abandoned)))
        return Decision(images, int(removed_uploads.rowcount or 0), digests, young)

    async def _young_links(
        self, conn: AsyncConnection, run: _Run
    ) -> tuple[int, dt.datetime | None]:
        """The project's blobs linked but referenced by no manifest of their repository: after
        step 2, those are younger than the grace period. How many, and the newest link."""
        in_project = select(repositories.c.id).where(repositories.c.project_id == run.project_id)
        row = (
            await conn.execute(
                select(
                    func.count(func.distinct(repository_blobs.c.digest)),
                    func.max(repository_blobs.c.linked_at),
                ).where(repository_blobs.c.repository_id.in_(in_project), ~_link_referenced())
            )
        ).one()
        return int(row[0]), row[1]

    async def _blob_figures(
        self, conn: AsyncConnection, run: _Run, digests: frozenset[str], *, storage: bool
    ) -> BlobFigures:
        """Of these blobs, what the project no longer holds and (with `storage`) what no
        project holds any more."""
        in_project = select(repositories.c.id).where(repositories.c.project_id == run.project_id)
        held = (
            select(literal(1))
            .where(
                repository_blobs.c.digest == blobs.c.digest,
                repository_blobs.c.repository_id.in_(in_project),
            )
            .exists()
        )
        totals = [0, 0, 0, 0]
        for chunk in _chunks(sorted(digests)):
            sums = [func.count(), func.coalesce(func.sum(blobs.c.size), 0)]
            freed = (
                await conn.execute(select(*sums).where(blobs.c.digest.in_(chunk), ~held))
            ).one()
            totals[0] += int(freed[0])
            totals[1] += int(freed[1])
            if storage:
                gone = (
                    await conn.execute(
                        select(*sums).where(blobs.c.digest.in_(chunk), ~_linked_anywhere())
                    )
                ).one()
                totals[2] += int(gone[0])
                totals[3] += int(gone[1])
        return BlobFigures(*totals)

    async def _delete_images(
        self, conn: AsyncConnection, run: _Run, in_project: Any, cutoff: dt.datetime
    ) -> tuple[int, Young]:
        """Delete the project's manifests nothing keeps; returns how many images that was,
        and what was kept only for being pushed within the grace period.

        Kept: tagged manifests and those pushed within the grace period (a push in flight
        uploads an index's children, or an image before its signature, untagged), and,
        transitively, the children of a kept index, the referrers of a kept manifest (whose
        subject it is) and the subject of a kept referrer. The graph is walked here rather
        than in a recursive query: one read of the project's manifests, and PostgreSQL and
        SQLite differ in what recursion they allow.
        """
        tagged = (
            select(literal(1))
            .where(
                tags.c.repository_id == manifests.c.repository_id,
                tags.c.image == manifests.c.image,
                tags.c.digest == manifests.c.digest,
            )
            .exists()
        )
        rows = (
            await conn.execute(
                select(
                    manifests.c.id,
                    manifests.c.repository_id,
                    manifests.c.image,
                    manifests.c.digest,
                    manifests.c.subject_digest,
                    manifests.c.pushed_at,
                    tagged.label("tagged"),
                ).where(manifests.c.repository_id.in_(in_project))
            )
        ).all()
        if not rows:
            return 0, Young()
        by_key = {(r.repository_id, r.image, r.digest): r.id for r in rows}
        edges: dict[int, list[int]] = {}
        for r in rows:
            if r.subject_digest is not None:
                subject = by_key.get((r.repository_id, r.image, r.subject_digest))
                if subject is not None:
                    edges.setdefault(subject, []).append(r.id)  # subject keeps its referrers
                    edges.setdefault(r.id, []).append(subject)  # a referrer keeps its subject
        parent = manifests.alias("parent")
        child_refs = (
            await conn.execute(
                select(
                    parent.c.id,
                    parent.c.repository_id,
                    parent.c.image,
                    manifest_references.c.digest,
                )
                .join(parent, parent.c.id == manifest_references.c.manifest_id)
                .where(manifest_references.c.is_manifest, parent.c.repository_id.in_(in_project))
            )
        ).all()
        children: set[int] = set()
        for ref in child_refs:
            child = by_key.get((ref.repository_id, ref.image, ref.digest))
            if child is not None:
                edges.setdefault(ref.id, []).append(child)
                children.add(child)

        def reached_from(roots: set[int]) -> set[int]:
            kept = set(roots)
            frontier = list(kept)
            while frontier:
                for reached in edges.get(frontier.pop(), ()):
                    if reached not in kept:
                        kept.add(reached)
                        frontier.append(reached)
            return kept

        def is_image(r: Any) -> bool:  # as `queries.is_image`
            is_referrer = (r.repository_id, r.image, r.subject_digest) in by_key
            return r.id not in children and not is_referrer

        kept = reached_from({r.id for r in rows if r.tagged or r.pushed_at >= cutoff})
        kept_by_tags = reached_from({r.id for r in rows if r.tagged})
        only_young = [r for r in rows if r.id in kept and r.id not in kept_by_tags]
        young = Young(
            images=sum(1 for r in only_young if is_image(r)),
            newest=max((r.pushed_at for r in only_young), default=None),
        )
        doomed = [r for r in rows if r.id not in kept]
        if not doomed:
            return 0, young
        images = [r for r in doomed if r.id not in children]  # an index counts for its children
        now = utcnow()
        if images:
            await conn.execute(
                image_events.insert(),
                [
                    {
                        "repository_id": r.repository_id,
                        "image": r.image,
                        "tag": None,
                        "action": "delete",
                        "old_digest": r.digest,
                        "new_digest": None,
                        "actor": ACTOR,
                        "at": now,
                    }
                    for r in images
                ],
            )
        for chunk in _chunks([r.id for r in doomed]):
            await conn.execute(delete(manifests).where(manifests.c.id.in_(chunk)))
        return sum(1 for r in images if is_image(r)), young

    async def _lift(self, conn: AsyncConnection, run: _Run, decision: Decision) -> None:
        """End of step 2, in its transaction: lift the restriction and record the figures."""
        await conn.execute(
            update(project_settings)
            .where(
                project_settings.c.project_id == run.project_id,
                project_settings.c.gc_restricted_by == run.id,
            )
            .values(gc_restricted_by=None)
        )
        # progress_total is set by _list_for_sweep, which always comes next: counting the
        # sweep list here would only lengthen the window in which writes are refused.
        moved = await conn.execute(
            update(gc_runs)
            .where(gc_runs.c.id == run.id, gc_runs.c.state == RUNNING, gc_runs.c.phase == MARKING)
            .values(
                phase=SWEEPING,
                images_deleted=decision.images,
                uploads_deleted=decision.uploads,
                **self._young_values(decision.young),
            )
        )
        if moved.rowcount != 1:
            raise _RunLost()  # recovered meanwhile as interrupted: roll this back

    async def _list_for_sweep(self, run: _Run, unlinked: frozenset[str]) -> None:
        """After step 2, with writes allowed again: the project's figures, and the sweep's
        list. On it go the blobs whose links step 2 removed, and every blob no repository
        links at all that is older than the grace period (its last repository was deleted,
        its link removed by a blob DELETE, or a run died before listing it): nobody can reach
        those, and no project's run would find them through its own links."""
        async with self.db.read() as conn:
            figures = await self._blob_figures(conn, run, unlinked, storage=False)
            # What stays unreferenced is younger than the grace period: say so, and until when
            # (counted here, not while the project's writes were refused).
            young_blobs, linked_at = await self._young_links(conn, run)
            collectable = (
                await conn.execute(
                    select(gc_runs.c.young_collectable_at).where(gc_runs.c.id == run.id)
                )
            ).scalar()
        if linked_at is not None:
            links_collectable = linked_at + dt.timedelta(seconds=self.grace_period)
            collectable = max(collectable or links_collectable, links_collectable)
        for chunk in _chunks(sorted(unlinked)):
            async with self.db.write() as conn:
                await conn.execute(
                    self.db.insert_ignore(gc_sweep).from_select(
                        ["run_id", "kind", "name", "size"],
                        select(
                            literal(run.id, Integer),
                            literal("blob", String),
                            blobs.c.digest,
                            blobs.c.size,
                        ).where(blobs.c.digest.in_(chunk)),
                    )
                )
        cutoff = utcnow() - dt.timedelta(seconds=self.grace_period)
        listed = (
            select(literal(1))
            .where(
                gc_sweep.c.run_id == run.id,
                gc_sweep.c.kind == "blob",  # the whole key: one index probe per blob
                gc_sweep.c.name == blobs.c.digest,
            )
            .exists()
        )
        async with self.db.write() as conn:
            await conn.execute(
                gc_sweep.insert().from_select(
                    ["run_id", "kind", "name", "size"],
                    select(
                        literal(run.id, Integer),
                        literal("blob", String),
                        blobs.c.digest,
                        blobs.c.size,
                    ).where(blobs.c.created_at < cutoff, ~_linked_anywhere(), ~listed),
                )
            )
            to_sweep = select(func.count()).where(gc_sweep.c.run_id == run.id).scalar_subquery()
            values: dict[str, Any] = {
                "progress_total": gc_runs.c.progress_done + to_sweep,
                "young_blobs_kept": young_blobs,
                "young_collectable_at": collectable,
            }
            if unlinked:
                values.update(blobs_deleted=figures.blobs, bytes_freed=figures.bytes)
            await conn.execute(update(gc_runs).where(gc_runs.c.id == run.id).values(**values))

    async def _sweep(self, run: _Run, progress: Progress | None) -> None:
        """Step 3: remove the listed blobs no repository links by now, rows and files, and the
        listed upload scratch files; a batch per transaction, recording progress."""
        paused = False
        while True:
            async with self.db.read() as conn:
                batch = (
                    await conn.execute(
                        select(gc_sweep.c.kind, gc_sweep.c.name)
                        .where(gc_sweep.c.run_id == run.id)
                        .order_by(gc_sweep.c.kind, gc_sweep.c.name)
                        .limit(SWEEP_BATCH)
                    )
                ).all()
            if not batch:
                return
            digests = [b.name for b in batch if b.kind == "blob"]
            upload_ids = [b.name for b in batch if b.kind == "upload"]
            for upload_id in upload_ids:  # their rows are gone: nobody can resume them
                await self.store.delete_upload(upload_id)
            try:
                removed, freed = await self._sweep_batch(run, digests, upload_ids)
            except IntegrityError:
                # PostgreSQL: a push of another project linked one of these blobs while the
                # batch deleted its row (the foreign key refused). Again, the push is seen.
                logger.info("gc run %s: a blob was linked meanwhile; sweeping again", run.id)
                removed, freed = await self._sweep_batch(run, digests, upload_ids)
            logger.debug("gc run %s: removed %s blobs (%s bytes)", run.id, removed, freed)
            if progress is not None:
                progress(await self._run_dict(run.id))
            if not paused:
                paused = True
                await self._pause_in(SWEEPING)

    async def _sweep_batch(
        self, run: _Run, digests: list[str], upload_ids: list[str]
    ) -> tuple[int, int]:
        async with self.db.write() as conn:
            removed: list[tuple[str, int]] = []
            if digests:
                # The compare-and-set: a blob's row goes only while no repository links it, and
                # its file with it, before this commits. A push that linked it first keeps
                # both. A push of the same digest after this waits for the deleted row until
                # we commit, then finds it gone and commits its file again.
                deleted = await conn.execute(
                    delete(blobs)
                    .where(blobs.c.digest.in_(digests), ~_linked_anywhere())
                    .returning(blobs.c.digest, blobs.c.size)
                )
                removed = [(row.digest, int(row.size)) for row in deleted]
                if removed:
                    await self.store.delete_many([digest for digest, _ in removed])
            for kind, names in (("blob", digests), ("upload", upload_ids)):
                if names:
                    # The batch is a run of the list's order: deleted as a key range (an IN
                    # list of hundreds of names made PostgreSQL compare each row to each).
                    await conn.execute(
                        delete(gc_sweep).where(
                            gc_sweep.c.run_id == run.id,
                            gc_sweep.c.kind == kind,
                            gc_sweep.c.name.between(names[0], names[-1]),
                        )
                    )
            freed = sum(size for _, size in removed)
            await conn.execute(
                update(gc_runs)
                .where(gc_runs.c.id == run.id)
                .values(
                    progress_done=gc_runs.c.progress_done + len(digests) + len(upload_ids),
                    storage_blobs_deleted=gc_runs.c.storage_blobs_deleted + len(removed),
                    storage_bytes_freed=gc_runs.c.storage_bytes_freed + freed,
                )
            )
        return len(removed), freed

    async def _finish(self, run: _Run) -> None:
        """The run succeeded: it and the project's last collection say so at the same time."""
        now = utcnow()
        async with self.db.write() as conn:
            finished = await conn.execute(
                update(gc_runs)
                .where(gc_runs.c.id == run.id, gc_runs.c.state == RUNNING)
                .values(state=SUCCEEDED, phase=DONE, finished_at=now)
            )
            if finished.rowcount:
                await conn.execute(
                    update(project_settings)
                    .where(project_settings.c.project_id == run.project_id)
                    .values(last_gc_at=now)
                )

    async def _fail(self, run_id: int, exc: BaseException) -> None:
        """Record a failure; the restriction is lifted whatever happened."""
        run = await self._load(run_id)
        if run.phase in (QUEUED, MARKING):
            note = "nothing was deleted"
        else:
            note = "its deletions stand; the next run removes the files it left"
        async with self.db.write() as conn:
            await self._unrestrict(conn, run)
            await conn.execute(
                update(gc_runs)
                .where(gc_runs.c.id == run_id, gc_runs.c.state == RUNNING)
                .values(state=FAILED, finished_at=utcnow(), error=f"{exc} ({note})"[:2000])
            )

    async def _interrupted(self, run_id: int) -> None:
        """This process is stopping mid-run. Before step 2 committed: roll back. After: leave
        the sweep for whichever process recovers it first (the lease is freed now)."""
        run = await self._load(run_id)
        if run.phase in (QUEUED, MARKING):
            await self._roll_back(run, "interrupted (the server stopped) before deleting anything")

    async def _roll_back(self, run: _Run, reason: str) -> None:
        async with self.db.write() as conn:
            await self._unrestrict(conn, run)
            await conn.execute(
                update(gc_runs)
                .where(
                    gc_runs.c.id == run.id,
                    gc_runs.c.state == RUNNING,
                    gc_runs.c.phase.in_([QUEUED, MARKING]),
                )
                .values(state=ROLLED_BACK, finished_at=utcnow(), error=f"{reason}; nothing changed")
            )

    async def _unrestrict(self, conn: AsyncConnection, run: _Run) -> None:
        await conn.execute(
            update(project_settings)
            .where(
                project_settings.c.project_id == run.project_id,
                project_settings.c.gc_restricted_by == run.id,
            )
            .values(gc_restricted_by=None)
        )

    async def _set_phase(self, conn: AsyncConnection, run_id: int, phase: str) -> None:
        await conn.execute(update(gc_runs).where(gc_runs.c.id == run_id).values(phase=phase))

    async def _pause_in(self, phase: str) -> None:
        if self._pause is not None and self._pause[0] == phase:
            logger.warning("gc: test pause of %.1f s in %s", self._pause[1], phase)
            await asyncio.sleep(self._pause[1])

    # ------------------------------------------------------------------ leases and recovery

    async def _heartbeat(self, project_id: int) -> None:
        name = lease_name(project_id)
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                async with self.db.write() as conn:
                    await conn.execute(
                        update(job_leases)
                        .where(job_leases.c.name == name, job_leases.c.holder == self.holder)
                        .values(expires_at=utcnow() + dt.timedelta(seconds=LEASE_SECONDS))
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("gc: could not renew the lease %s", name)

    async def _release(self, project_id: int) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(job_leases)
                .where(
                    job_leases.c.name == lease_name(project_id),
                    job_leases.c.holder == self.holder,
                )
                .values(expires_at=utcnow())
            )

    def _holder_alive(self, holder: str, run_id: int) -> bool:
        """Whether a lease's holder may still be working. A holder on this machine whose
        process is gone is not, whatever its lease says: a restart recovers at once."""
        if holder == self.holder:
            return run_id in self._active
        host, _, pid = holder.rpartition(":")
        if host != self._host or not pid.isdigit():
            return True  # another machine: only the lease's expiry tells
        return _pid_alive(int(pid))

    async def recover(self, project_id: int | None = None, *, resume_here: bool = False) -> None:
        """Take over the runs whose holder is gone: roll back those that had not committed
        their deletions; finish the sweep of the others (here, or in the background)."""
        query = select(gc_runs.c.id, gc_runs.c.project_id, gc_runs.c.phase).where(
            gc_runs.c.state == RUNNING
        )
        if project_id is not None:
            query = query.where(gc_runs.c.project_id == project_id)
        async with self.db.read() as conn:
            running = (await conn.execute(query)).all()
            if not running:
                return
            names = [lease_name(r.project_id) for r in running]
            leases = {
                row.name: row
                for row in await conn.execute(
                    select(job_leases).where(job_leases.c.name.in_(names))
                )
            }
        now = utcnow()
        for row in running:
            lease = leases.get(lease_name(row.project_id))
            if (
                lease is not None
                and lease.expires_at > now
                and self._holder_alive(lease.holder, row.id)
            ):
                continue  # its holder is at work
            if not await self._take_over(row.project_id, lease):
                continue
            run = await self._load(row.id)
            if run.phase in (QUEUED, MARKING):
                logger.warning("gc run %s was interrupted before deleting: rolling back", run.id)
                await self._roll_back(run, "interrupted (its process stopped) before deleting")
                await self._release(run.project_id)
            elif resume_here:
                logger.warning("gc run %s was interrupted while sweeping: finishing it", run.id)
                await self.execute(run.id)
            else:
                logger.warning("gc run %s was interrupted while sweeping: finishing it", run.id)
                self._spawn(run.id)

    async def _take_over(self, project_id: int, lease: Any) -> bool:
        """Compare-and-set the lease to this process: one recoverer wins."""
        name = lease_name(project_id)
        until = utcnow() + dt.timedelta(seconds=LEASE_SECONDS)
        async with self.db.write() as conn:
            if lease is None:
                result = await conn.execute(
                    self.db.insert_ignore(job_leases).values(
                        name=name, holder=self.holder, expires_at=until
                    )
                )
            else:
                result = await conn.execute(
                    update(job_leases)
                    .where(
                        job_leases.c.name == name,
                        job_leases.c.holder == lease.holder,
                        job_leases.c.expires_at == lease.expires_at,
                    )
                    .values(holder=self.holder, expires_at=until)
                )
        return bool(result.rowcount)

    # ------------------------------------------------------------------ reading runs

    async def _project_id(self, project: str) -> int:
        async with self.db.read() as conn:
            return await require_project(conn, project)

    async def _load(self, run_id: int) -> _Run:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        gc_runs.c.id,
                        gc_runs.c.project_id,
                        gc_runs.c.phase,
                        gc_runs.c.dry_run,
                        gc_runs.c.delete_untagged,
                    ).where(gc_runs.c.id == run_id)
                )
            ).one()
        return _Run(row.id, row.project_id, row.phase, row.dry_run, row.delete_untagged)

    async def _run_dict(self, run_id: int) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(gc_runs, projects.c.name.label("project"))
                    .join(projects, projects.c.id == gc_runs.c.project_id)
                    .where(gc_runs.c.id == run_id)
                )
            ).one()
        return run_dict(row)

    async def get_run(self, project: str, run_id: int) -> dict[str, Any]:
        project_id = await self._project_id(project)
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(gc_runs, projects.c.name.label("project"))
                    .join(projects, projects.c.id == gc_runs.c.project_id)
                    .where(gc_runs.c.id == run_id, gc_runs.c.project_id == project_id)
                )
            ).first()
        if row is None:
            raise GcRunUnknown(
                f"project {project!r} has no garbage collection run {run_id}", {"run": run_id}
            )
        return run_dict(row)

    async def current(self, project: str) -> dict[str, Any] | None:
        """The project's running run, if any."""
        runs = await self.history(project, limit=1, state=RUNNING)
        return runs[0] if runs else None

    async def history(
        self, project: str, *, limit: int = 50, offset: int = 0, state: str | None = None
    ) -> list[dict[str, Any]]:
        """The project's runs, newest first."""
        project_id = await self._project_id(project)
        query = (
            select(gc_runs, projects.c.name.label("project"))
            .join(projects, projects.c.id == gc_runs.c.project_id)
            .where(gc_runs.c.project_id == project_id)
        )
        if state is not None:
            query = query.where(gc_runs.c.state == state)
        async with self.db.read() as conn:
            rows = await conn.execute(
                query.order_by(gc_runs.c.id.desc()).limit(limit).offset(offset)
            )
            return [run_dict(row) for row in rows]

    async def history_page(
        self, project: str, *, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the project's runs, newest first, and how many runs there are."""
        runs = await self.history(project, limit=limit, offset=offset)
        project_id = await self._project_id(project)
        async with self.db.read() as conn:
            total = (
                await conn.execute(
                    select(func.count())
                    .select_from(gc_runs)
                    .where(gc_runs.c.project_id == project_id)
                )
            ).scalar_one()
        return runs, int(total)


def _link_referenced() -> Any:
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


def _linked_anywhere() -> Any:
    """For a row of `blobs`: some repository, of any project, links it."""
    return select(literal(1)).where(repository_blobs.c.digest == blobs.c.digest).exists()


def run_dict(row: Any) -> dict[str, Any]:
    """A run as the API and the CLI show it."""
    end = row.finished_at or utcnow()
    return {
        "id": row.id,
        "project": row.project,
        "state": row.state,
        "phase": row.phase,
        "dry_run": row.dry_run,
        "delete_untagged": row.delete_untagged,
        "actor": row.actor,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "duration_seconds": round((end - row.started_at).total_seconds(), 3),
        "restricted_seconds": (
            round(row.restricted_seconds, 3) if row.restricted_seconds is not None else None
        ),
        "images_deleted": row.images_deleted,
        "blobs_deleted": row.blobs_deleted,
        "bytes_freed": row.bytes_freed,
        "storage_blobs_deleted": row.storage_blobs_deleted,
        "storage_bytes_freed": row.storage_bytes_freed,
        "uploads_deleted": row.uploads_deleted,
        "grace_period_seconds": row.grace_seconds,
        "young_images_kept": row.young_images_kept,
        "young_blobs_kept": row.young_blobs_kept,
        "young_collectable_at": (
            row.young_collectable_at.isoformat() if row.young_collectable_at else None
        ),
        "progress_done": row.progress_done,
        "progress_total": row.progress_total,
        "error": row.error,
    }


__all__ = [
    "FAILED",
    "ROLLED_BACK",
    "RUNNING",
    "SUCCEEDED",
    "GarbageCollector",
    "GcAlreadyRunning",
    "GcRunUnknown",
]
