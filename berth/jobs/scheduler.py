"""Scheduled jobs: every serving process runs this scheduler; the job leases make sure that,
across all processes and nodes, one of them runs each job at a time, once per interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from berth.domain.errors import StorageRefused, Unavailable
from berth.jobs.leases import Leases, default_holder
from berth.metadata.database import Database

logger = logging.getLogger("berth.jobs")

# A run holds its job for this long at a time (or the interval, if shorter, but never less than
# MIN_HOLD_SECONDS), renewing the hold while it works: a runner that dies mid-run frees the job
# this soon for another to redo. The floor: a hold as short as a frequent job's interval (1 s
# for webhook deliveries) was lost to any stall of the event loop that long (a worker's first
# import of a library), and another worker then ran the job beside it.
HOLD_SECONDS = 30.0
MIN_HOLD_SECONDS = 10.0
# Waiting nodes look again at least this often, and this long after a database error.
MAX_WAIT_SECONDS = 60.0
RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    name: str
    interval: float  # seconds from the start of one run to the start of the next
    run: Callable[[], Coroutine[Any, Any, object]]
    # A new job is due at once, or, with this, one interval after it is first scheduled (a
    # heavy job that should not run on a server's first start).
    first_after_interval: bool = False
    # For a frequent job that is mostly idle: asked (a read) once it is due, and the lease is
    # claimed (a write, on every node) only when it answers True; otherwise every node looks
    # again an interval later, having written nothing.
    has_work: Callable[[], Coroutine[Any, Any, bool]] | None = None

    @property
    def hold(self) -> float:
        return max(min(self.interval, HOLD_SECONDS), MIN_HOLD_SECONDS)


class Scheduler:
    def __init__(self, db: Database, jobs: list[Job], holder: str | None = None) -> None:
        self.jobs = jobs
        self.leases = Leases(db, holder or default_holder())
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(self._schedule(job), name=f"job {job.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _schedule(self, job: Job) -> None:
        while True:
            try:
                due_in = await self.leases.due_in(job.name)
                if due_in is None:
                    first = job.interval if job.first_after_interval else None
                    await self.leases.ensure(job.name, first)
                    continue
                wait = due_in
                if wait <= 0:
                    if job.has_work is None or await job.has_work():
                        if await self.leases.claim(job.name, job.hold):
                            await self._run(job)
                        continue
                    wait = job.interval
            except asyncio.CancelledError:
                raise
            # The database away or busy (its log said why), or its disk full or read-only.
            except (Unavailable, StorageRefused) as exc:
                logger.warning(
                    "job %s: could not read or take its lease: %s", job.name, exc.message
                )
                wait = RETRY_SECONDS
            except Exception:
                logger.exception("job %s: could not read or take its lease", job.name)
                wait = RETRY_SECONDS
            # A little jitter, so that the nodes waking for the same due time do not collide.
            await asyncio.sleep(min(wait, MAX_WAIT_SECONDS) + random.uniform(0.0, 0.05))

    async def _run(self, job: Job) -> None:
        """Run the job, renewing the hold while it works; then set when it is next due: an
        interval after this run started (measured here, set by the database's clock)."""
        started, stopping = time.monotonic(), False
        work: asyncio.Task[object] = asyncio.create_task(job.run(), name=f"run {job.name}")
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=job.hold / 3)
                if work.done():
                    break
                try:
                    renewed = await self.leases.renew(job.name, job.hold)
                except Exception:
                    logger.warning("job %s: could not renew its lease; still running", job.name)
                    continue
                if not renewed:
                    logger.warning("job %s: lost its lease mid-run; stopping this run", job.name)
                    work.cancel()
                    return
            if work.exception() is not None:
                logger.error("job %s failed", job.name, exc_info=work.exception())
        except asyncio.CancelledError:
            # This process is stopping: free the job at once for another node to run.
            work.cancel()
            stopping = True
            raise
        finally:
            next_in = 0.0 if stopping else max(job.interval - (time.monotonic() - started), 0.0)
            with contextlib.suppress(Exception):
                await self.leases.release(job.name, due_in=next_in)
