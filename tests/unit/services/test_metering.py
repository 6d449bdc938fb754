"""Outbound traffic counting (`TrafficMeter`) against a real SQLite database."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import OperationalError

from berth.metadata.database import Database
from berth.metadata.tables import projects, repositories, traffic_daily
from berth.services.metering import TrafficMeter

Scenario = Callable[[Database], Awaitable[Any]]


def with_database(url: str, scenario: Scenario) -> Any:
    async def main() -> Any:
        db = Database(url)
        try:
            return await scenario(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


async def add_repository(db: Database, project: str, repository: str) -> tuple[int, int]:
    async with db.write() as conn:
        project_key = (
            await conn.execute(insert(projects).values(name=project))
        ).inserted_primary_key
        assert project_key is not None
        project_id = project_key[0]
        repository_key = (
            await conn.execute(insert(repositories).values(project_id=project_id, name=repository))
        ).inserted_primary_key
        assert repository_key is not None
        repository_id = repository_key[0]
    return project_id, repository_id


async def traffic_rows(db: Database) -> list[tuple[int, int, dt.date, int, int]]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(
                traffic_daily.c.project_id,
                traffic_daily.c.repository_id,
                traffic_daily.c.day,
                traffic_daily.c.bytes,
                traffic_daily.c.requests,
            ).order_by(traffic_daily.c.project_id, traffic_daily.c.repository_id)
        )
        return [tuple(row) for row in rows]


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def test_downloads_are_summed_per_repository_and_day(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        demo, web = await add_repository(db, "demo", "web")
        demo2, api = await add_repository(db, "demo2", "api")
        meter = TrafficMeter(db)
        meter.count(demo, web, 1000)
        meter.count(demo, web, 500)
        meter.count(demo2, api, 7)
        assert meter.pending_bytes == 1507
        assert await traffic_rows(db) == []  # nothing written until a flush
        assert await meter.flush() == 2
        assert meter.pending_bytes == 0
        assert await traffic_rows(db) == [
            (demo, web, today(), 1500, 2),
            (demo2, api, today(), 7, 1),
        ]
        assert await meter.flush() == 0

    with_database(database_url, scenario)


def test_empty_downloads_are_not_requests(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        project_id, repository_id = await add_repository(db, "demo", "web")
        meter = TrafficMeter(db)
        meter.count(project_id, repository_id, 0)
        meter.count(project_id, repository_id, -1)
        assert meter.pending_bytes == 0
        assert await meter.flush() == 0
        assert await traffic_rows(db) == []

    with_database(database_url, scenario)


def test_every_process_adds_into_the_same_row(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        project_id, repository_id = await add_repository(db, "demo", "web")
        first, second = TrafficMeter(db), TrafficMeter(db)
        first.count(project_id, repository_id, 100)
        second.count(project_id, repository_id, 250)
        second.count(project_id, repository_id, 1)
        await asyncio.gather(first.flush(), second.flush())
        first.count(project_id, repository_id, 9)
        await first.flush()
        assert await traffic_rows(db) == [(project_id, repository_id, today(), 360, 4)]

    with_database(database_url, scenario)


def test_a_deleted_projects_traffic_goes_with_it(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        kept, kept_repository = await add_repository(db, "kept", "web")
        gone, gone_repository = await add_repository(db, "gone", "web")
        meter = TrafficMeter(db)
        meter.count(kept, kept_repository, 10)
        meter.count(gone, gone_repository, 20)
        async with db.write() as conn:
            await conn.execute(projects.delete().where(projects.c.id == gone))
        assert await meter.flush() == 1
        assert await traffic_rows(db) == [(kept, kept_repository, today(), 10, 1)]
        assert meter.pending_bytes == 0

    with_database(database_url, scenario)


def test_counts_a_write_could_not_store_are_kept_for_the_next(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        project_id, repository_id = await add_repository(db, "demo", "web")
        meter = TrafficMeter(db)
        meter.count(project_id, repository_id, 300)
        async with db.write() as conn:  # the table unreachable for a while
            await conn.execute(text("ALTER TABLE traffic_daily RENAME TO traffic_away"))
        with pytest.raises(OperationalError, match="no such table"):
            await meter.flush()
        meter.count(project_id, repository_id, 5)
        assert meter.pending_bytes == 305
        async with db.write() as conn:
            await conn.execute(text("ALTER TABLE traffic_away RENAME TO traffic_daily"))
        assert await meter.flush() == 1
        assert await traffic_rows(db) == [(project_id, repository_id, today(), 305, 2)]

    with_database(database_url, scenario)


def test_stopping_writes_what_is_left(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        project_id, repository_id = await add_repository(db, "demo", "web")
        meter = TrafficMeter(db, flush_interval=3600)
        meter.start()
        meter.count(project_id, repository_id, 42)
        await meter.stop()
        assert await traffic_rows(db) == [(project_id, repository_id, today(), 42, 1)]

    with_database(database_url, scenario)


def test_a_disabled_meter_runs_no_flusher(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        meter = TrafficMeter(db, enabled=False)
        meter.start()
        await meter.stop()
        assert await traffic_rows(db) == []

    with_database(database_url, scenario)
