"""What a project uses: its management summary, storage samples and outbound traffic figures.

Storage is measured deduplicated within a project: a blob linked in five of its repositories
counts once, as does a manifest stored under several names; another project's copy is that
project's. Samples are taken on a schedule (the `storage-collect` job) and on demand.

Outbound traffic comes from `traffic_daily` (written by `metering.TrafficMeter`); its estimated
charge is `usage_pricing.py`'s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import InvalidValue, StorageRefused
from berth.domain.usage import STORAGE_SAMPLE_RETENTION_DAYS
from berth.metadata.database import Database
from berth.metadata.lookups import count_in_project, require_project, require_repository
from berth.metadata.queries import is_image
from berth.metadata.tables import (
    blobs,
    gc_runs,
    manifests,
    project_settings,
    projects,
    repositories,
    repository_blobs,
    storage_samples,
    traffic_daily,
    utcnow,
)
from berth.services import usage_records as records
from berth.services.usage_pricing import GB, Pricing, money, month_start

# On-demand collections (any reader may ask) within this many seconds of a project's newest
# sample replace it instead of adding one: at most one row a minute however often they come.
ON_DEMAND_COALESCE_SECONDS = 60
# Points of a storage series: a window holding more samples is shown as the newest sample of
# each of this many equal stretches of it (a chart has no use for more).
MAX_SERIES_POINTS = 1000
logger = logging.getLogger("berth.usage")


@dataclass(slots=True)
class Count:
    bytes: int = 0
    requests: int = 0

    def add(self, sent: int, requests: int) -> None:
        self.bytes += sent
        self.requests += requests


@dataclass(frozen=True, slots=True)
class StorageFigures:
    bytes: int
    blobs: int
    images: int


NOTHING = StorageFigures(0, 0, 0)


class Usage:
    def __init__(
        self,
        db: Database,
        *,
        default_quota: int = 100,
        max_images_per_repository: int = 10_000,
        pricing: Pricing | None = None,
        traffic_retention_days: int = 124,
        storage_collect_interval: int = 1800,
        storage_collect_min_interval: int = 5,
        gc_grace_period: int = 3600,
    ) -> None:
        self.db = db
        self.default_quota = default_quota
        self.max_images_per_repository = max_images_per_repository
        self.pricing = pricing or Pricing()
        self.traffic_retention_days = traffic_retention_days
        self.storage_collect_interval = storage_collect_interval
        self.storage_collect_min_interval = storage_collect_min_interval
        self.gc_grace_period = gc_grace_period
        # Per project name, this process's collection on demand under way: callers meanwhile
        # await it rather than measure again.
        self._collecting: dict[str, asyncio.Task[records.StorageSample]] = {}
        # Whether the log said a sample could not be recorded (a full disk), since the last
        # one recorded: said once, not on every read of the summary.
        self._unrecorded_said = False

    # ------------------------------------------------------------------ storage

    @staticmethod
    async def _storage(conn: AsyncConnection, project_id: int | None) -> dict[int, StorageFigures]:
        """Deduplicated storage per project (all projects when `project_id` is None)."""

        def narrowed(query: Any) -> Any:
            return (
                query
                if project_id is None
                else query.where(repositories.c.project_id == project_id)
            )

        linked = narrowed(
            select(repositories.c.project_id, repository_blobs.c.digest)
            .join(repositories, repositories.c.id == repository_blobs.c.repository_id)
            .distinct()
        ).subquery()
        blob_rows = await conn.execute(
            select(linked.c.project_id, func.count(), func.coalesce(func.sum(blobs.c.size), 0))
            .join(blobs, blobs.c.digest == linked.c.digest)
            .group_by(linked.c.project_id)
        )
        stored = narrowed(
            select(repositories.c.project_id, manifests.c.digest, manifests.c.size)
            .join(repositories, repositories.c.id == manifests.c.repository_id)
            .distinct()
        ).subquery()
        manifest_rows = await conn.execute(
            select(stored.c.project_id, func.coalesce(func.sum(stored.c.size), 0)).group_by(
                stored.c.project_id
            )
        )
        image_rows = await conn.execute(
            narrowed(
                select(repositories.c.project_id, func.count())
                .select_from(manifests)
                .join(repositories, repositories.c.id == manifests.c.repository_id)
                .where(is_image())
                .group_by(repositories.c.project_id)
            )
        )
        blob_totals = {pid: (int(count), int(size)) for pid, count, size in blob_rows}
        manifest_bytes = {pid: int(size) for pid, size in manifest_rows}
        images = {pid: int(count) for pid, count in image_rows}
        return {
            pid: StorageFigures(
                bytes=blob_totals.get(pid, (0, 0))[1] + manifest_bytes.get(pid, 0),
                blobs=blob_totals.get(pid, (0, 0))[0],
                images=images.get(pid, 0),
            )
            for pid in blob_totals.keys() | manifest_bytes.keys() | images.keys()
        }

    async def collect(self, project: str) -> records.StorageSample:
        """Measure the project's storage and record the sample (replacing the project's newest
        sample when that is younger than ON_DEMAND_COALESCE_SECONDS). A measurement starts at
        most once every `storage_collect_min_interval` seconds after the project's newest
        sample (taken by any node, or the schedule): one asked for sooner waits for that
        moment, and callers meanwhile in this process share it. Every answer is measured after
        it was asked for, so it counts what the caller changed before; a flood of them costs
        one measurement an interval."""
        pending = self._collecting.get(project)
        if pending is None:
            pending = asyncio.create_task(self._collect_when_due(project))
            self._collecting[project] = pending

            def done(task: asyncio.Task[records.StorageSample]) -> None:
                if self._collecting.get(project) is task:
                    del self._collecting[project]
                if not task.cancelled():
                    task.exception()  # seen, should every caller have gone (they still get it)

            pending.add_done_callback(done)
        # A caller that goes away (a closed connection) leaves it to the others.
        return await asyncio.shield(pending)

    async def _collect_when_due(self, project: str) -> records.StorageSample:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            last = await _last_sample(conn, project_id)
        if last is not None:
            due = last.at + dt.timedelta(seconds=self.storage_collect_min_interval)
            await asyncio.sleep(
                min((due - utcnow()).total_seconds(), self.storage_collect_min_interval)
            )
        # Measuring from here: a caller asking now may have changed what is being read, so
        # it waits for the next measurement instead of sharing this one.
        if self._collecting.get(project) is asyncio.current_task():
            del self._collecting[project]
        return _sample(*await self._record(project_id, coalesce=True))

    async def _record(
        self, project_id: int, *, coalesce: bool = False
    ) -> tuple[dt.datetime, StorageFigures]:
        at, figures = await self._measure(project_id)
        await self._save(project_id, at, figures, coalesce=coalesce)
        return at, figures

    async def _measure(self, project_id: int) -> tuple[dt.datetime, StorageFigures]:
        async with self.db.read() as conn:
            figures = (await self._storage(conn, project_id)).get(project_id, NOTHING)
        return utcnow(), figures

    async def _save(
        self, project_id: int, at: dt.datetime, figures: StorageFigures, *, coalesce: bool
    ) -> None:
        values = {
            "at": at,
            "bytes": figures.bytes,
            "blobs": figures.blobs,
            "images": figures.images,
        }
        async with self.db.write() as conn:
            recent = None
            if coalesce:
                recent = (
                    await conn.execute(
                        select(storage_samples.c.id)
                        .where(
                            storage_samples.c.project_id == project_id,
                            storage_samples.c.at
                            >= at - dt.timedelta(seconds=ON_DEMAND_COALESCE_SECONDS),
                        )
                        .order_by(storage_samples.c.at.desc(), storage_samples.c.id.desc())
                        .limit(1)
                    )
                ).scalar()
            if recent is not None:
                await conn.execute(
                    storage_samples.update().where(storage_samples.c.id == recent).values(values)
                )
            else:
                await conn.execute(storage_samples.insert().values(project_id=project_id, **values))
        self._unrecorded_said = False

    async def collect_all(self) -> int:
        """Record a storage sample for every project (the scheduled job); returns how many."""
        async with self.db.read() as conn:
            project_ids = list((await conn.execute(select(projects.c.id))).scalars())
            found = await self._storage(conn, None)
        if not project_ids:
            return 0
        at = utcnow()
        async with self.db.write() as conn:
            await conn.execute(
                storage_samples.insert(),
                [
                    {
                        "project_id": pid,
                        "at": at,
                        "bytes": found.get(pid, NOTHING).bytes,
                        "blobs": found.get(pid, NOTHING).blobs,
                        "images": found.get(pid, NOTHING).images,
                    }
                    for pid in project_ids
                ],
            )
        return len(project_ids)

    async def latest_storage(self) -> dict[str, tuple[int, dt.datetime]]:
        """Each project's bytes stored and when, from its latest sample (what /metrics
        shows): one indexed lookup per project, no measuring."""
        latest = (
            select(storage_samples.c.id)
            .where(storage_samples.c.project_id == projects.c.id)
            .order_by(storage_samples.c.at.desc(), storage_samples.c.id.desc())
            .limit(1)
            .correlate(projects)
            .scalar_subquery()
        )
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(projects.c.name, storage_samples.c.bytes, storage_samples.c.at).join(
                    storage_samples, storage_samples.c.id == latest
                )
            )
            return {name: (int(size), at) for name, size, at in rows}

    async def _first_sample(self, project: str) -> tuple[int, dt.datetime, StorageFigures]:
        """The project's id and its latest storage sample. A project with no sample yet gets
        one now, recorded: the summary and the storage series then show the same sample
        (never a figure of their own). On a full disk the sample is shown unrecorded: a read
        does not fail for a write it does for convenience."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            last = await _last_sample(conn, project_id)
        if last is not None:
            return project_id, last.at, StorageFigures(last.bytes, last.blobs, last.images)
        at, figures = await self._measure(project_id)
        try:
            await self._save(project_id, at, figures, coalesce=False)
        except StorageRefused as exc:
            # A read, answered with what was measured rather than refused: the sample is
            # taken again by the next read, or the schedule, once the disk takes writes.
            if not self._unrecorded_said:
                logger.warning(
                    "%s: a storage sample measured for a read (project %s) is shown but not "
                    "recorded; said once until one is",
                    exc.message.removesuffix("; nothing was stored"),
                    project,
                )
                self._unrecorded_said = True
        return project_id, at, figures

    async def storage(self, project: str, days: int = 30) -> records.StorageUsage:
        """The storage series of the last `days` days, oldest first, and the last collection."""
        if not 1 <= days <= STORAGE_SAMPLE_RETENTION_DAYS:
            raise InvalidValue(
                f"days must be between 1 and {STORAGE_SAMPLE_RETENTION_DAYS}", "days"
            )
        project_id, at, figures = await self._first_sample(project)
        since = utcnow() - dt.timedelta(days=days)
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(storage_samples)
                    .where(
                        storage_samples.c.project_id == project_id, storage_samples.c.at >= since
                    )
                    .order_by(storage_samples.c.at, storage_samples.c.id)
                )
            ).all()
        if rows:  # the newest, should one have been collected since
            at, figures = (
                rows[-1].at,
                StorageFigures(rows[-1].bytes, rows[-1].blobs, rows[-1].images),
            )
        return records.StorageUsage(
            project=project,
            collected_at=at,
            collect_interval_seconds=self.storage_collect_interval,
            last=_sample(at, figures),
            samples=[
                _sample(r.at, StorageFigures(r.bytes, r.blobs, r.images))
                for r in _thinned(rows, since, utcnow())
            ],
        )

    # ------------------------------------------------------------------ traffic

    async def traffic(
        self,
        project: str,
        *,
        days: int = 92,
        repository: str | None = None,
        today: dt.date | None = None,
    ) -> records.Traffic:
        """Daily series for the last `days` days (zero-filled), monthly totals of the current
        month and the two before it with their change over the month before, and the estimated
        charge; narrowed to one repository when `repository` is given (its share of the
        project's charge, in proportion to its bytes)."""
        if not 1 <= days <= self.traffic_retention_days:
            raise InvalidValue(f"days must be between 1 and {self.traffic_retention_days}", "days")
        today = today or utcnow().date()
        first_day = today - dt.timedelta(days=days - 1)
        # The months shown, oldest first, after the one before them (for the first change).
        month_starts = [month_start(today, back) for back in (3, 2, 1, 0)]
        since = min(first_day, month_starts[0])
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            repository_id = None
            if repository is not None:
                repository_id = await require_repository(conn, project_id, project, repository)
            rows = (
                await conn.execute(
                    select(
                        traffic_daily.c.repository_id,
                        traffic_daily.c.day,
                        traffic_daily.c.bytes,
                        traffic_daily.c.requests,
                    ).where(
                        traffic_daily.c.project_id == project_id,
                        traffic_daily.c.day >= since,
                        traffic_daily.c.day <= today,
                    )
                )
            ).all()
            names = dict(
                (
                    await conn.execute(
                        select(repositories.c.id, repositories.c.name).where(
                            repositories.c.project_id == project_id
                        )
                    )
                ).all()
            )

        daily: dict[dt.date, Count] = defaultdict(Count)
        months: dict[dt.date, Count] = defaultdict(Count)
        project_months: dict[dt.date, int] = defaultdict(int)  # for the charge
        by_repository: dict[int, Count] = defaultdict(Count)
        for row in rows:
            month = row.day.replace(day=1)
            project_months[month] += row.bytes
            if repository_id is not None and row.repository_id != repository_id:
                continue
            months[month].add(row.bytes, row.requests)
            if row.day >= first_day:
                daily[row.day].add(row.bytes, row.requests)
                by_repository[row.repository_id].add(row.bytes, row.requests)

        def month_figures(start: dt.date, previous: dt.date) -> records.MonthTrend:
            count, total = months[start], project_months[start]
            charge = self.pricing.charge(total)
            if repository_id is not None:  # the repository's share of the project's charge
                charge = charge * count.bytes / total if total else Decimal(0)
            before = months[previous].bytes
            return records.MonthTrend(
                month=start.strftime("%Y-%m"),
                bytes=count.bytes,
                requests=count.requests,
                change_bytes=count.bytes - before,
                change_percent=round((count.bytes - before) * 100 / before, 2) if before else None,
                estimated_charge=money(charge),
                currency=self.pricing.currency,
            )

        monthly = [month_figures(month_starts[i], month_starts[i - 1]) for i in range(1, 4)]
        series = [first_day + dt.timedelta(days=i) for i in range(days)]
        shares = None  # per repository: for the whole project only
        if repository is None:
            ranked = sorted(by_repository.items(), key=lambda item: (-item[1].bytes, item[0]))
            shares = [
                records.RepositoryTraffic(
                    repository=names.get(rid),
                    repository_id=rid,
                    deleted=rid not in names,
                    bytes=count.bytes,
                    requests=count.requests,
                )
                for rid, count in ranked
            ]
        return records.Traffic(
            project=project,
            repository=repository,
            first_day=first_day,
            last_day=today,
            daily=[
                records.DayTraffic(day=day, bytes=daily[day].bytes, requests=daily[day].requests)
                for day in series
            ],
            total_bytes=sum(count.bytes for count in daily.values()),
            total_requests=sum(count.requests for count in daily.values()),
            months=monthly,
            this_month=monthly[-1],
            pricing=records.Pricing(
                price_per_gb=self.pricing.price_per_gb,
                free_gb_per_month=self.pricing.free_gb,
                gb=GB,
                currency=self.pricing.currency,
            ),
            repositories=shares,
        )

    async def prune(self, today: dt.date | None = None) -> dict[str, int]:
        """Delete traffic rows past the retention and storage samples past theirs (daily job)."""
        today = today or utcnow().date()
        oldest_day = today - dt.timedelta(days=self.traffic_retention_days)
        oldest_sample = utcnow() - dt.timedelta(days=STORAGE_SAMPLE_RETENTION_DAYS)
        async with self.db.write() as conn:
            traffic = await conn.execute(
                delete(traffic_daily).where(traffic_daily.c.day < oldest_day)
            )
            samples = await conn.execute(
                delete(storage_samples).where(storage_samples.c.at < oldest_sample)
            )
        return {"traffic_rows": traffic.rowcount, "storage_samples": samples.rowcount}

    # ------------------------------------------------------------------ summary

    async def summary(self, project: str, *, today: dt.date | None = None) -> records.Summary:
        """The management summary: repositories stored / maximum, images, storage used (the
        last sample, as the storage series shows it; taken now if there has been none), this month's outbound traffic,
        the last garbage collection and the image limit."""
        today = today or utcnow().date()
        month = month_start(today)
        project_id, sampled_at, sampled = await self._first_sample(project)
        async with self.db.read() as conn:
            repository_count = await count_in_project(conn, repositories, project_id)
            images = (
                await conn.execute(
                    select(func.count())
                    .select_from(manifests)
                    .join(repositories, repositories.c.id == manifests.c.repository_id)
                    .where(repositories.c.project_id == project_id, is_image())
                )
            ).scalar() or 0
            settings_row = (
                await conn.execute(
                    select(
                        project_settings.c.repository_quota, project_settings.c.last_gc_at
                    ).where(project_settings.c.project_id == project_id)
                )
            ).first()
            traffic_row = (
                await conn.execute(
                    select(
                        func.coalesce(func.sum(traffic_daily.c.bytes), 0),
                        func.coalesce(func.sum(traffic_daily.c.requests), 0),
                    ).where(
                        traffic_daily.c.project_id == project_id,
                        traffic_daily.c.day >= month,
                        traffic_daily.c.day <= today,
                    )
                )
            ).one()
            last_run = (
                await conn.execute(
                    select(
                        gc_runs.c.id,
                        gc_runs.c.state,
                        gc_runs.c.dry_run,
                        gc_runs.c.delete_untagged,
                        gc_runs.c.finished_at,
                    )
                    .where(gc_runs.c.project_id == project_id, gc_runs.c.finished_at.is_not(None))
                    .order_by(gc_runs.c.finished_at.desc(), gc_runs.c.id.desc())
                    .limit(1)
                )
            ).first()
        storage = _sample(sampled_at, sampled)
        quota = self.default_quota
        if settings_row is not None and settings_row.repository_quota is not None:
            quota = int(settings_row.repository_quota)
        last_gc = settings_row.last_gc_at if settings_row is not None else None
        month_bytes = int(traffic_row[0])
        return records.Summary(
            project=project,
            repositories=records.RepositoryCount(stored=int(repository_count), maximum=quota),
            images=records.ImageCount(
                stored=int(images), limit_per_repository=self.max_images_per_repository
            ),
            storage=storage,
            traffic_this_month=records.MonthTraffic(
                month=month.strftime("%Y-%m"),
                bytes=month_bytes,
                requests=int(traffic_row[1]),
                estimated_charge=money(self.pricing.charge(month_bytes)),
                currency=self.pricing.currency,
            ),
            gc_grace_period_seconds=self.gc_grace_period,
            last_gc_at=last_gc,
            last_gc_run=records.FinishedRun(
                id=last_run.id,
                state=last_run.state,
                dry_run=last_run.dry_run,
                delete_untagged=last_run.delete_untagged,
                finished_at=last_run.finished_at,
            )
            if last_run is not None
            else None,
            storage_collect_interval_seconds=self.storage_collect_interval,
        )


def _sample(at: dt.datetime | None, figures: StorageFigures) -> records.StorageSample:
    return records.StorageSample(
        collected_at=at, bytes=figures.bytes, blobs=figures.blobs, images=figures.images
    )


async def _last_sample(conn: AsyncConnection, project_id: int) -> Any:
    return (
        await conn.execute(
            select(storage_samples)
            .where(storage_samples.c.project_id == project_id)
            .order_by(storage_samples.c.at.desc(), storage_samples.c.id.desc())
            .limit(1)
        )
    ).first()


def _thinned(rows: Sequence[Any], since: dt.datetime, until: dt.datetime) -> Sequence[Any]:
    """`rows` (oldest first) if there are at most MAX_SERIES_POINTS, else the newest of each
    of MAX_SERIES_POINTS equal stretches of [since, until] that holds any."""
    if len(rows) <= MAX_SERIES_POINTS:
        return rows
    stretch = (until - since) / MAX_SERIES_POINTS
    newest: dict[int, Any] = {}
    for row in rows:  # oldest first: a later row of a stretch replaces an earlier one
        newest[min(int((row.at - since) / stretch), MAX_SERIES_POINTS - 1)] = row
    return [newest[key] for key in sorted(newest)]
