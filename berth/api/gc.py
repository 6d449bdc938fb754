"""Garbage collection: start a run (it carries on in the server's background), follow the
current one, list the history."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from berth.api.deps import ManageProject, Page, PagingDep, ReadProject
from berth.api.problems import responses
from berth.auth.guard import client_address

router = APIRouter(prefix="/projects/{project}/gc", tags=["garbage collection"])

RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="run id")]


class StartRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = Field(False, description="report what would be deleted; change nothing")
    delete_untagged: bool = Field(
        False,
        description="also delete images that have no tag and that no other image references "
        "(children of a kept index and referrers of a kept image always stay)",
    )


class Run(BaseModel):
    """One garbage collection run. The figures of a dry run are what a real run would delete."""

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


@router.post("", status_code=202, responses=responses(404, 409))
async def start_gc(request: Request, ctx: ManageProject, body: StartRun | None = None) -> Run:
    """Start garbage collection in the project (project admins and members). It runs in the
    background: follow it with `GET .../gc/current` or `GET .../gc/runs/{id}`. One run per
    project at a time: while one runs, this is refused (409, code GC_RUNNING). The audit log
    records who started it, from where, with which options."""
    options = body or StartRun()
    run = await ctx.services.gc.launch(
        ctx.project,
        dry_run=options.dry_run,
        delete_untagged=options.delete_untagged,
        actor=ctx.actor,
        client=client_address(request),
    )
    return Run.model_validate(run)


@router.get("/current", responses=responses(404))
async def current_gc(ctx: ReadProject) -> Run | None:
    """The project's running garbage collection with its progress, or null when none runs."""
    run = await ctx.services.gc.current(ctx.project)
    return Run.model_validate(run) if run is not None else None


@router.get("/runs", responses=responses(404))
async def list_gc_runs(ctx: ReadProject, paging: PagingDep) -> Page[Run]:
    """The project's garbage collection runs, newest first."""
    runs, total = await ctx.services.gc.history_page(
        ctx.project, offset=paging.offset, limit=paging.per_page
    )
    return Page[Run](
        items=[Run.model_validate(r) for r in runs],
        page=paging.page,
        per_page=paging.per_page,
        total=total,
    )


@router.get("/runs/{run_id}", responses=responses(404))
async def get_gc_run(ctx: ReadProject, run_id: RunId) -> Run:
    """One run of the project."""
    return Run.model_validate(await ctx.services.gc.get_run(ctx.project, run_id))
