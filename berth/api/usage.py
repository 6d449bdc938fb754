"""Usage: a project's management summary, its storage usage series (collected every
`storage_collect_interval` seconds, or now on request) and its outbound traffic."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from berth.api.deps import COMPONENT_PATTERN, ReadProject
from berth.api.problems import FieldError, responses
from berth.services.repositories import MAX_REPOSITORY_NAME
from berth.services.usage import STORAGE_SAMPLE_RETENTION_DAYS

router = APIRouter(prefix="/projects/{project}", tags=["usage"], responses=responses(404))


# ---------------------------------------------------------------- documents


class StorageSample(BaseModel):
    collected_at: dt.datetime | None = Field(description="when it was measured")
    bytes: int = Field(
        description="storage used, deduplicated: each blob and manifest the project holds "
        "counts once, however many of its repositories hold it"
    )
    blobs: int = Field(description="distinct blobs (layers and configs)")
    images: int = Field(description="images stored (an index and its platform images count once)")


class RepositoryCount(BaseModel):
    stored: int
    maximum: int = Field(description="the project's repository quota")


class ImageCount(BaseModel):
    stored: int = Field(description="images in all the project's repositories")
    limit_per_repository: int


class MonthTraffic(BaseModel):
    month: str = Field(description="YYYY-MM (UTC)")
    bytes: int
    requests: int
    estimated_charge: float = Field(
        description="bytes past the monthly free allowance times the price per GB (10^9 bytes)"
    )
    currency: str = Field(description="ISO 4217 code of the charge (setting currency)")


class FinishedRun(BaseModel):
    id: int
    state: Literal["succeeded", "failed", "rolled_back"]
    dry_run: bool
    delete_untagged: bool
    finished_at: dt.datetime


class Summary(BaseModel):
    project: str
    repositories: RepositoryCount
    images: ImageCount
    storage: StorageSample = Field(description="the last collection")
    traffic_this_month: MonthTraffic = Field(
        description="outbound traffic so far this month (written every few seconds)"
    )
    last_gc_at: dt.datetime | None = Field(
        description="when a garbage collection that deleted (not a dry run) last succeeded"
    )
    gc_grace_period_seconds: int = Field(
        description="garbage collection keeps what was pushed more recently than this"
    )
    last_gc_run: FinishedRun | None = Field(
        description="the last run that finished, of any kind (as the GC history lists it)"
    )
    storage_collect_interval_seconds: int


class StorageUsage(BaseModel):
    project: str
    collected_at: dt.datetime | None = Field(description="the last collection, if any")
    collect_interval_seconds: int
    last: StorageSample | None
    samples: list[StorageSample] = Field(description="oldest first")


class DayTraffic(BaseModel):
    day: dt.date = Field(description="a UTC day")
    bytes: int
    requests: int


class MonthTrend(MonthTraffic):
    change_bytes: int = Field(description="bytes more (or fewer) than the month before")
    change_percent: float | None = Field(description="null when the month before had none")


class RepositoryTraffic(BaseModel):
    repository: str | None = Field(description="null once the repository has been deleted")
    repository_id: int
    deleted: bool
    bytes: int
    requests: int


class Pricing(BaseModel):
    price_per_gb: float
    free_gb_per_month: float = Field(description="per project")
    gb: int = Field(description="bytes in a GB")
    currency: str = Field(description="ISO 4217 code of prices and charges (setting currency)")


class Traffic(BaseModel):
    project: str
    repository: str | None = Field(description="the repository the figures are narrowed to")
    first_day: dt.date
    last_day: dt.date = Field(description="today (UTC)")
    daily: list[DayTraffic] = Field(description="every day from first_day to last_day")
    total_bytes: int = Field(description="over the days listed")
    total_requests: int
    months: list[MonthTrend] = Field(
        description="this month and the two before it, oldest first; for one repository, "
        "its charge is its share of the project's, in proportion to its bytes"
    )
    this_month: MonthTrend
    pricing: Pricing
    repositories: list[RepositoryTraffic] | None = Field(
        None, description="per repository over the days listed, most bytes first"
    )


# ---------------------------------------------------------------- endpoints

RepositoryFilter = Annotated[
    str | None,
    Query(
        pattern=COMPONENT_PATTERN,
        max_length=MAX_REPOSITORY_NAME,
        description="only this repository",
    ),
]


@router.get("/summary")
async def summary(ctx: ReadProject) -> Summary:
    """The management summary: repositories stored / maximum, images stored, storage used
    (deduplicated, from the last collection), this month's outbound traffic, the last garbage
    collection and the image limit per repository."""
    return Summary.model_validate(await ctx.services.usage.summary(ctx.project))


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
    found = await ctx.services.usage.traffic(ctx.project, days=days, repository=repository)
    return Traffic.model_validate(found)


@router.get("/storage")
async def storage(
    ctx: ReadProject,
    days: Annotated[
        int,
        Query(ge=1, le=STORAGE_SAMPLE_RETENTION_DAYS, description="days of samples, up to now"),
    ] = 30,
) -> StorageUsage:
    """Storage usage samples and the time of the last collection."""
    return StorageUsage.model_validate(await ctx.services.usage.storage(ctx.project, days))


@router.post("/storage/collect", status_code=201)
async def collect_storage(ctx: ReadProject) -> StorageSample:
    """Measure the project's storage now and record the sample."""
    return StorageSample.model_validate(await ctx.services.usage.collect(ctx.project))
