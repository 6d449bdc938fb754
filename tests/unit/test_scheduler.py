"""Scheduled jobs on two workers sharing one database: a job runs on one of them at a time,
even when the worker running it stalls for longer than the job's interval."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from berth.jobs.scheduler import Job, Scheduler
from berth.metadata.database import Database
from berth.metadata.tables import metadata

# The job's interval and the stall, scaled down from webhook deliveries' 1 s and a 2 s stall to
# keep this fast: what matters is that the stall outlasts the interval (and so a hold as short
# as the interval) while the scheduler's floor on the hold, which this leaves as it is, outlasts
# the stall.
INTERVAL = 0.2
STALL = 0.5


def test_a_worker_stalled_longer_than_a_frequent_job_s_interval_keeps_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frequent job (webhook deliveries run every second). A worker's first run stalls its
    event loop for longer than the interval (a library imported on first use): the other
    worker must not take the job meanwhile and run it beside (a second delivery of the same
    event)."""
    database = tmp_path / "berth.db"
    metadata.create_all(create_engine(f"sqlite:///{database}"))
    running, most_at_once, runs = 0, 0, 0
    lock = threading.Lock()
    ran_again = threading.Event()

    async def deliver() -> None:
        nonlocal running, most_at_once, runs
        with lock:
            running += 1
            most_at_once = max(most_at_once, running)
            first = runs == 0
            runs += 1
            if runs >= 2:
                ran_again.set()
        if first:
            time.sleep(STALL)  # blocks the loop: no renewal of the lease meanwhile
        await asyncio.sleep(0.05)
        with lock:
            running -= 1

    def worker(name: str) -> None:
        async def serve() -> None:
            db = Database(f"sqlite+aiosqlite:///{database}")
            scheduler = Scheduler(db, [Job("webhook-delivery", INTERVAL, deliver)], holder=name)
            scheduler.start()
            # Both workers serve until the job has run again after the stall (or long enough
            # to tell that it did not).
            await asyncio.to_thread(ran_again.wait, 20 * STALL)
            await scheduler.stop()
            await db.dispose()

        asyncio.run(serve())

    with caplog.at_level(logging.WARNING, logger="berth.jobs"):
        workers = [threading.Thread(target=worker, args=(name,)) for name in ("w1", "w2")]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()

    assert runs >= 2  # it ran on, after the stall
    assert most_at_once == 1
    assert "lost its lease" not in caplog.text
