"""Storage samples: on-demand collections (any reader of a project may ask) add at most one row
a minute, and a window holding more samples than a chart shows is thinned to MAX_SERIES_POINTS.
In-process, on SQLite."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import storage_samples, utcnow
from berth.services.repositories import Repositories
from berth.services.usage import MAX_SERIES_POINTS, ON_DEMAND_COALESCE_SECONDS, Usage
from tests.services.conftest import run_on_database


async def rows(db: Database) -> int:
    async with db.read() as conn:
        return len((await conn.execute(storage_samples.select())).all())


def test_collections_on_demand_within_a_minute_replace_the_newest_sample(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        await Repositories(db).create_project("acme", actor="test")
        # Measured each time (no wait between collections): only the sample is coalesced.
        usage = Usage(db, storage_collect_min_interval=0)
        samples = [await usage.collect("acme") for _ in range(50)]
        assert await rows(db) == 1
        series = await usage.storage("acme")
        assert series.samples == [samples[-1]] and series.last == samples[-1]
        # A minute on, the next collection is a sample of its own.
        async with db.write() as conn:
            earlier = utcnow() - dt.timedelta(seconds=ON_DEMAND_COALESCE_SECONDS + 1)
            await conn.execute(storage_samples.update().values(at=earlier))
        await usage.collect("acme")
        assert await rows(db) == 2

    run_on_database(tmp_path, scenario)


def test_collections_at_once_share_one_measurement(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        await Repositories(db).create_project("acme", actor="test")
        usage = Usage(db, storage_collect_min_interval=0)  # nothing recent to return
        samples = await asyncio.gather(*(usage.collect("acme") for _ in range(20)))
        [measured] = {sample.collected_at for sample in samples}
        # Once it is done, the next one measures again.
        again = (await usage.collect("acme")).collected_at
        assert measured is not None and again is not None and again > measured

    run_on_database(tmp_path, scenario)


def test_a_window_of_more_samples_than_a_chart_shows_is_thinned(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        await Repositories(db).create_project("acme", actor="test")
        now = utcnow()
        async with db.write() as conn:
            project_id = await require_project(conn, "acme")
            await conn.execute(
                storage_samples.insert(),
                [
                    {
                        "project_id": project_id,
                        "at": now - dt.timedelta(minutes=minutes),
                        "bytes": minutes,
                        "blobs": 1,
                        "images": 1,
                    }
                    for minutes in range(1, 5 * 24 * 60)  # five days, one a minute
                ],
            )
        series = await Usage(db).storage("acme", days=5)
        assert len(series.samples) <= MAX_SERIES_POINTS
        times = [sample.collected_at for sample in series.samples if sample.collected_at]
        assert len(times) == len(series.samples)
        assert times == sorted(times) and len(set(times)) == len(times)
        assert series.samples[-1].bytes == 1  # the newest is kept
        assert series.last == series.samples[-1]
        # Spread over the whole window, not its newest part.
        assert times[0] - (now - dt.timedelta(days=5)) < dt.timedelta(minutes=10)
        few = await Usage(db).storage("acme", days=1)  # 1,439 rows: thinned too
        assert len(few.samples) <= MAX_SERIES_POINTS

    run_on_database(tmp_path, scenario)
