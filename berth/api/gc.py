"""Garbage collection: start a run (it carries on in the server's background), follow the
current one, list the history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import Field

from berth.api.bodies import RequestBody
from berth.api.deps import ManageProject, Page, PagingDep, ReadProject
from berth.api.problems import responses
from berth.auth.guard import client_address
from berth.domain.references import MAX_ID
from berth.services.gc import Run

router = APIRouter(prefix="/projects/{project}/gc", tags=["garbage collection"])

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="run id")]


class StartRun(RequestBody):
    dry_run: bool = Field(False, description="report what would be deleted; change nothing")
    delete_untagged: bool = Field(
        False,
        description="also delete images that have no tag and that no other image references "
        "(children of a kept index and referrers of a kept image always stay)",
    )


@router.post("", status_code=202, responses=responses(404, 409))
async def start_gc(request: Request, ctx: ManageProject, body: StartRun | None = None) -> Run:
    """Start garbage collection in the project (project admins and members). It runs in the
    background: follow it with `GET .../gc/current` or `GET .../gc/runs/{id}`. One run per
    project at a time: while one runs, this is refused (409, code GC_RUNNING). The audit log
    records who started it, from where, with which options."""
    options = body or StartRun()
    return await ctx.services.gc.launch(
        ctx.project,
        dry_run=options.dry_run,
        delete_untagged=options.delete_untagged,
        actor=ctx.actor,
        client=client_address(request),
    )


@router.get("/current", responses=responses(404))
async def current_gc(ctx: ReadProject) -> Run | None:
    """The project's running garbage collection with its progress, or null when none runs."""
    return await ctx.services.gc.current(ctx.project)


@router.get("/runs", responses=responses(404))
async def list_gc_runs(ctx: ReadProject, paging: PagingDep) -> Page[Run]:
    """The project's garbage collection runs, newest first."""
    runs, total = await ctx.services.gc.history_page(
        ctx.project, offset=paging.offset, limit=paging.per_page
    )
    return Page[Run].of(runs, paging, total)


@router.get("/runs/{run_id}", responses=responses(404))
async def get_gc_run(ctx: ReadProject, run_id: RunId) -> Run:
    """One run of the project."""
    return await ctx.services.gc.get_run(ctx.project, run_id)
