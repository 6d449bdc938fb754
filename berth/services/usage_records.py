"""The records `Usage` returns: a project's summary, storage series and traffic figures, as the
management API serves them (their fields and descriptions are its schema)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from berth.services.records import Record


class StorageSample(Record):
    collected_at: dt.datetime | None = Field(description="when it was measured")
    bytes: int = Field(
        description="storage used, deduplicated: each blob and manifest the project holds "
        "counts once, however many of its repositories hold it"
    )
    blobs: int = Field(description="distinct blobs (layers and configs)")
    images: int = Field(description="images stored (an index and its platform images count once)")


class RepositoryCount(Record):
    stored: int
    maximum: int = Field(description="the project's repository quota")


class ImageCount(Record):
    stored: int = Field(description="images in all the project's repositories")
    limit_per_repository: int


class MonthTraffic(Record):
    month: str = Field(description="YYYY-MM (UTC)")
    bytes: int
    requests: int
    estimated_charge: float = Field(
        description="bytes past the monthly free allowance times the price per GB (10^9 bytes)"
    )
    currency: str = Field(description="ISO 4217 code of the charge (setting currency)")


class FinishedRun(Record):
    id: int
    state: Literal["succeeded", "failed", "rolled_back"]
    dry_run: bool
    delete_untagged: bool
    finished_at: dt.datetime


class Summary(Record):
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


class StorageUsage(Record):
    project: str
    collected_at: dt.datetime | None = Field(description="the last collection, if any")
    collect_interval_seconds: int
    last: StorageSample | None
    samples: list[StorageSample] = Field(description="oldest first")


class DayTraffic(Record):
    day: dt.date = Field(description="a UTC day")
    bytes: int
    requests: int


class MonthTrend(MonthTraffic):
    change_bytes: int = Field(description="bytes more (or fewer) than the month before")
    change_percent: float | None = Field(description="null when the month before had none")


class RepositoryTraffic(Record):
    repository: str | None = Field(description="null once the repository has been deleted")
    repository_id: int
    deleted: bool
    bytes: int
    requests: int


class Pricing(Record):
    price_per_gb: float
    free_gb_per_month: float = Field(description="per project")
    gb: int = Field(description="bytes in a GB")
    currency: str = Field(description="ISO 4217 code of prices and charges (setting currency)")


class Traffic(Record):
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
