"""berth_db_pool_size describes the pools a process has open now, not every pool it made."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from prometheus_client import REGISTRY

from berth.metadata.database import Database
from berth.metadata.sqlite_engine import READERS
from berth.observability import metrics


def pool_size(pool: str) -> float:
    metrics.sample_pools()
    return REGISTRY.get_sample_value("berth_db_pool_size", {"pool": pool}) or 0.0


def test_a_database_opened_again_counts_its_pools_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}"

    async def open_twice() -> None:
        gc.collect()  # pools other tests left for the garbage collector go now, not midway
        writers, readers = pool_size("writer"), pool_size("reader")
        first = Database(url)
        assert (pool_size("writer"), pool_size("reader")) == (writers + 1, readers + READERS)
        await first.dispose()
        # The process opens its database again (as a start-up's checks, then its services,
        # do): the new pools, not both.
        second = Database(url)
        assert (pool_size("writer"), pool_size("reader")) == (writers + 1, readers + READERS)
        async with second.read() as conn:
            await conn.exec_driver_sql("SELECT 1")
        await second.dispose()
        assert (pool_size("writer"), pool_size("reader")) == (writers, readers)

    asyncio.run(open_twice())
