"""Usage: a project's management summary, its storage usage series (collected every
`storage_collect_interval` seconds, or now on request) and its outbound traffic."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from berth.api.deps import ReadProject
from berth.api.problems import FieldError, responses
from berth.domain.names import REPOSITORY_NAME_PATTERN
from berth.domain.usage import STORAGE_SAMPLE_RETENTION_DAYS
from berth.services.repositories import MAX_REPOSITORY_NAME
from berth.services.usage_records import StorageSample, StorageUsage, Summary, Traffic

router = APIRouter(prefix="/projects/{project}", tags=["usage"], responses=responses(404))

RepositoryFilter = Annotated[
    str | None,
    Query(
        pattern=REPOSITORY_NAME_PATTERN,
        max_length=MAX_REPOSITORY_NAME,
        description="only this repository",
    ),
]


@router.get("/summary")
async def summary(ctx: ReadProject) -> Summary:
    """The management summary: repositories stored / maximum, images stored, storage used
    (deduplicated, from the last collection), this month's outbound traffic, the last garbage
    collection and the image limit per repository."""
    return await ctx.services.usage.summary(ctx.project)


@router.get("/traffic")
async def traffic(
    ctx: ReadProject,
    repository: RepositoryFilter = None,
    days: Annotated[int, Query(ge=1, description="days of the daily series, up to today")] = 92,
) -> Traffic:
    """Outbound traffic (blob and manifest downloads): the daily series, monthly totals with
    the change over the month before, and the estimated charge."""
    kept = ctx.services.settings.traffic_retention_days
    if days > kept:
        raise FieldError("query.days", f"traffic is kept {kept} days; ask for at most that many")
    return await ctx.services.usage.traffic(ctx.project, days=days, repository=repository)


@router.get("/storage")
async def storage(
    ctx: ReadProject,
    days: Annotated[
        int,
        Query(ge=1, le=STORAGE_SAMPLE_RETENTION_DAYS, description="days of samples, up to now"),
    ] = 30,
) -> StorageUsage:
    """Storage usage samples and the time of the last collection. A window holding more than
    1,000 samples is shown as the newest sample of each of 1,000 equal stretches of it."""
    return await ctx.services.usage.storage(ctx.project, days)


@router.post("/storage/collect", status_code=201)
async def collect_storage(ctx: ReadProject) -> StorageSample:
    """Measure the project's storage now and record the sample; within a minute of the
    project's newest sample, the new one replaces it (at most one sample a minute on demand).
    A measurement starts at most once every `storage_collect_min_interval` seconds (5) after
    the project's newest sample: one asked for sooner waits for that moment, and calls
    waiting meanwhile share it. The answer is always measured after the call."""
    return await ctx.services.usage.collect(ctx.project)
