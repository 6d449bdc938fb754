"""A run's record and its state machine: the `gc_runs` row, and every change of its state.

A run only moves forward: `running` through the phases queued, marking, sweeping (a dry run
skips it), then `succeeded` with phase done; or `failed` / `rolled_back`, keeping the phase it
stopped in. Each transition is a conditional UPDATE on `state = running` (and the phase it leaves
where that matters), so a run recovered by another process meanwhile is not moved twice. The
transition that ends a run queues its `gc.finished` event in its transaction and counts it in the
metrics, once, whichever process ended it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import RegistryError
from berth.domain.events import GC_FINISHED
from berth.metadata.database import Database
from berth.metadata.lookups import count_in_project, require_project
from berth.metadata.tables import gc_runs, project_settings, projects, utcnow
from berth.observability import metrics
from berth.services.gc.reachability import Young, collectable_from
from berth.services.gc.restrictions import lift_restriction
from berth.services.webhook_events import EventData, GcRunSummary, enqueue_event

# States of a run; `phase` says where a running one is.
RUNNING, SUCCEEDED, FAILED, ROLLED_BACK = "running", "succeeded", "failed", "rolled_back"
QUEUED, MARKING, SWEEPING, DONE = "queued", "marking", "sweeping", "done"
BEFORE_DELETING = (QUEUED, MARKING)  # phases in which a run has changed nothing yet


class GcAlreadyRunning(RegistryError):
    code = "GC_RUNNING"
    status = 409


class GcRunUnknown(RegistryError):
    code = "NOT_FOUND"
    status = 404


class Run(BaseModel):
    """One garbage collection run. The figures of a dry run are what a real run would delete."""

    model_config = ConfigDict(frozen=True)

    id: int
    project: str
    state: Literal["running", "succeeded", "failed", "rolled_back"] = Field(
        description="rolled_back: interrupted before it deleted anything, and nothing changed"
    )
    phase: Literal["queued", "marking", "sweeping", "done"] = Field(
        description="marking: deciding and deleting metadata while the project's writes are "
        "refused (a dry run: deciding, writes allowed); sweeping: removing files, writes "
        "allowed again. A run only moves forward: queued, marking, sweeping, done (a dry run "
        "skips sweeping); a failed or rolled-back run keeps the phase it stopped in"
    )
    dry_run: bool
    delete_untagged: bool
    actor: str = Field(description="who started it")
    started_at: dt.datetime
    finished_at: dt.datetime | None
    duration_seconds: float
    restricted_seconds: float | None = Field(
        description="how long pushes, new tags and repository changes were refused"
    )
    images_deleted: int = Field(description="an index and its platform images count once")
    blobs_deleted: int = Field(description="blobs the project no longer holds")
    bytes_freed: int = Field(description="what the project's storage use dropped by")
    storage_blobs_deleted: int = Field(
        description="blobs removed from storage (no project holds them any more; a blob "
        "another project holds stays)"
    )
    storage_bytes_freed: int
    uploads_deleted: int = Field(description="abandoned uploads removed")
    grace_period_seconds: float | None = Field(
        description="the server's gc_grace_period when the run started: what was pushed or "
        "linked more recently is kept"
    )
    young_images_kept: int = Field(
        description="untagged images kept only because they were pushed within the grace "
        "period (with delete_untagged)"
    )
    young_blobs_kept: int = Field(
        description="blobs no image references, kept only because they were linked within the "
        "grace period"
    )
    young_collectable_at: dt.datetime | None = Field(
        description="from when every one of those can be collected (null when none was kept)"
    )
    progress_done: int = Field(description="files removed so far")
    progress_total: int = Field(description="files to remove")
    error: str | None

    @classmethod
    def from_row(cls, row: Any) -> Run:
        """A `gc_runs` row joined with its project's name (`project`)."""
        end = row.finished_at or utcnow()
        restricted = row.restricted_seconds
        return cls(
            id=row.id,
            project=row.project,
            state=row.state,
            phase=row.phase,
            dry_run=row.dry_run,
            delete_untagged=row.delete_untagged,
            actor=row.actor,
            started_at=row.started_at,
            finished_at=row.finished_at,
            duration_seconds=round((end - row.started_at).total_seconds(), 3),
            restricted_seconds=round(restricted, 3) if restricted is not None else None,
            images_deleted=row.images_deleted,
            blobs_deleted=row.blobs_deleted,
            bytes_freed=row.bytes_freed,
            storage_blobs_deleted=row.storage_blobs_deleted,
            storage_bytes_freed=row.storage_bytes_freed,
            uploads_deleted=row.uploads_deleted,
            grace_period_seconds=row.grace_seconds,
            young_images_kept=row.young_images_kept,
            young_blobs_kept=row.young_blobs_kept,
            young_collectable_at=row.young_collectable_at,
            progress_done=row.progress_done,
            progress_total=row.progress_total,
            error=row.error,
        )

    def as_json(self) -> dict[str, Any]:
        """The record as plain JSON values, times in ISO 8601 (what the CLI prints)."""
        return {
            key: value.isoformat() if isinstance(value, dt.datetime) else value
            for key, value in self.model_dump().items()
        }


Progress = Callable[[Run], None]


@dataclass(frozen=True, slots=True)
class RunRow:
    """What carrying a run out needs to know of it."""

    id: int
    project_id: int
    phase: str
    dry_run: bool
    delete_untagged: bool


def young_values(young: Young, grace_seconds: float) -> dict[str, Any]:
    """A run's record of what it kept for being young, and from when that can go."""
    return {
        "young_images_kept": young.images,
        "young_blobs_kept": young.blobs,
        "young_collectable_at": collectable_from(young.newest, grace_seconds),
    }


def _with_project() -> Select[Any]:
    return select(gc_runs, projects.c.name.label("project")).join(
        projects, projects.c.id == gc_runs.c.project_id
    )


class RunBook:
    """Reads runs and moves them from state to state."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ reading

    async def project_id(self, project: str) -> int:
        async with self.db.read() as conn:
            return await require_project(conn, project)

    async def load(self, run_id: int) -> RunRow:
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
        return RunRow(row.id, row.project_id, row.phase, row.dry_run, row.delete_untagged)

    async def record(self, run_id: int) -> Run:
        async with self.db.read() as conn:
            row = (await conn.execute(_with_project().where(gc_runs.c.id == run_id))).one()
        return Run.from_row(row)

    async def get(self, project: str, run_id: int) -> Run:
        project_id = await self.project_id(project)
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    _with_project().where(
                        gc_runs.c.id == run_id, gc_runs.c.project_id == project_id
                    )
                )
            ).first()
        if row is None:
            raise GcRunUnknown(
                f"project {project!r} has no garbage collection run {run_id}", {"run": run_id}
            )
        return Run.from_row(row)

    async def history(
        self, project: str, *, limit: int = 50, offset: int = 0, state: str | None = None
    ) -> list[Run]:
        """The project's runs, newest first."""
        project_id = await self.project_id(project)
        query = _with_project().where(gc_runs.c.project_id == project_id)
        if state is not None:
            query = query.where(gc_runs.c.state == state)
        async with self.db.read() as conn:
            rows = await conn.execute(
                query.order_by(gc_runs.c.id.desc()).limit(limit).offset(offset)
            )
            return [Run.from_row(row) for row in rows]

    async def count(self, project: str) -> int:
        project_id = await self.project_id(project)
        async with self.db.read() as conn:
            return await count_in_project(conn, gc_runs, project_id)

    # ------------------------------------------------------------------ transitions

    async def to_marking(self, conn: AsyncConnection, run_id: int) -> bool:
        """Queued -> marking, in the transaction that restricts writes. False when the run is
        no longer running (recovered meanwhile as interrupted): the caller must then neither
        restrict nor decide, as nothing would lift the restriction."""
        moved = await conn.execute(
            update(gc_runs)
            .where(
                gc_runs.c.id == run_id,
                gc_runs.c.state == RUNNING,
                gc_runs.c.phase.in_(BEFORE_DELETING),
            )
            .values(phase=MARKING)
        )
        return moved.rowcount == 1

    async def to_sweeping(self, conn: AsyncConnection, run_id: int, values: dict[str, Any]) -> bool:
        """Marking -> sweeping, with the figures of the decision, in its transaction. False
        when the run is no longer marking (recovered meanwhile as interrupted)."""
        moved = await conn.execute(
            update(gc_runs)
            .where(gc_runs.c.id == run_id, gc_runs.c.state == RUNNING, gc_runs.c.phase == MARKING)
            .values(phase=SWEEPING, **values)
        )
        return moved.rowcount == 1

    async def succeed(self, run_id: int, values: dict[str, Any]) -> None:
        """Running -> succeeded (phase done), with these figures (nothing when it was not
        running any more)."""
        async with self.db.write() as conn:
            ended = await self._succeed_in(conn, run_id, values)
        _reported(ended)

    async def _succeed_in(
        self,
        conn: AsyncConnection,
        run_id: int,
        values: dict[str, Any],
        now: dt.datetime | None = None,
    ) -> Run | None:
        finished = await conn.execute(
            update(gc_runs)
            .where(gc_runs.c.id == run_id, gc_runs.c.state == RUNNING)
            .values(state=SUCCEEDED, phase=DONE, finished_at=now or utcnow(), **values)
        )
        return await self._ended_in(conn, run_id) if finished.rowcount else None

    async def finish(self, run: RunRow) -> None:
        """The run succeeded: it and the project's last collection say so at the same time."""
        now = utcnow()
        async with self.db.write() as conn:
            ended = await self._succeed_in(conn, run.id, {}, now)
            if ended is not None:
                await conn.execute(
                    update(project_settings)
                    .where(project_settings.c.project_id == run.project_id)
                    .values(last_gc_at=now)
                )
        _reported(ended)

    async def fail(self, run_id: int, exc: BaseException) -> None:
        """Record a failure; the restriction is lifted whatever happened."""
        run = await self.load(run_id)
        if run.phase in BEFORE_DELETING:
            note = "nothing was deleted"
        else:
            note = "its deletions stand; the next run removes the files it left"
        async with self.db.write() as conn:
            await lift_restriction(conn, run.project_id, run.id)
            failed = await conn.execute(
                update(gc_runs)
                .where(gc_runs.c.id == run_id, gc_runs.c.state == RUNNING)
                .values(state=FAILED, finished_at=utcnow(), error=f"{exc} ({note})"[:2000])
            )
            ended = await self._ended_in(conn, run_id) if failed.rowcount else None
        _reported(ended)

    async def roll_back(self, run: RunRow, reason: str) -> None:
        """A run interrupted before deleting anything: lift its restriction, say so."""
        async with self.db.write() as conn:
            await lift_restriction(conn, run.project_id, run.id)
            rolled_back = await conn.execute(
                update(gc_runs)
                .where(
                    gc_runs.c.id == run.id,
                    gc_runs.c.state == RUNNING,
                    gc_runs.c.phase.in_(BEFORE_DELETING),
                )
                .values(state=ROLLED_BACK, finished_at=utcnow(), error=f"{reason}; nothing changed")
            )
            ended = await self._ended_in(conn, run.id) if rolled_back.rowcount else None
        _reported(ended)

    async def _ended_in(self, conn: AsyncConnection, run_id: int) -> Run:
        """In the transaction that ended the run: its record, and its `gc.finished` event
        queued (the event exists exactly when the end does)."""
        row = (await conn.execute(_with_project().where(gc_runs.c.id == run_id))).one()
        ended = Run.from_row(row)
        summary = GcRunSummary(
            id=ended.id,
            state=ended.state,
            dry_run=ended.dry_run,
            images_deleted=ended.images_deleted,
            blobs_deleted=ended.blobs_deleted,
            bytes_freed=ended.bytes_freed,
            duration_seconds=ended.duration_seconds,
        )
        data = EventData(project=ended.project, actor=ended.actor, gc_run=summary)
        await enqueue_event(conn, row.project_id, GC_FINISHED, data, f"gc/runs/{ended.id}")
        return ended


def _reported(ended: Run | None) -> None:
    """Count a run that just ended (once committed) in the metrics."""
    if ended is not None and ended.state != "running":
        metrics.gc_run_finished(
            "dry_run" if ended.dry_run and ended.state == "succeeded" else ended.state,
            ended.duration_seconds,
            ended.restricted_seconds,
            ended.bytes_freed,
            ended.storage_bytes_freed,
        )
