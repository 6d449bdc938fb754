"""One run per project at a time, and no run left behind, on the lease protocol of `jobs/leases.py`.

A run holds its project's lease (`gc:{project id}`) and renews it while it works. A run whose
lease lapsed, or whose holder process on this machine is gone, is recovered by any serving
process: before step 2 committed it is rolled back (the restriction lifted, nothing changed);
after, its sweep is finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from berth.jobs.leases import Lease, Leases
from berth.jobs.periodic import Periodic
from berth.metadata.database import Database
from berth.metadata.tables import gc_runs
from berth.services.gc.runs import BEFORE_DELETING, RUNNING, RunBook

logger = logging.getLogger("berth.gc")

LEASE_SECONDS = 30.0  # a run nobody renews for this long is taken over by another process
HEARTBEAT_SECONDS = 5.0
RECOVERY_SECONDS = 10.0  # how often a serving process looks for interrupted runs
# The fence before each removal from the store (`Recovery.fence`): the run's lease must have
# this much left, or the heartbeat has missed four renewals in a row and the process stops
# (a healthy run has 25 s or more left). The fence renews the lease to LEASE_SECONDS; while the
# removal is under way the heartbeat goes on renewing it, so no other process can take the run
# over unless this one stops renewing (it stalled) for LEASE_SECONDS.
FENCE_MARGIN_SECONDS = 10.0


def lease_name(project_id: int) -> str:
    return f"gc:{project_id}"


class Recovery:
    """The leases of this process's runs, and the recovery of other processes' runs."""

    def __init__(
        self,
        db: Database,
        leases: Leases,
        runs: RunBook,
        *,
        finish_here: Callable[[int], Awaitable[object]],
        finish_in_background: Callable[[int], None],
    ) -> None:
        self.db = db
        self.leases = leases
        self.runs = runs
        self._finish_here = finish_here
        self._finish_in_background = finish_in_background
        self.active: set[int] = set()  # runs this process is executing

    @property
    def holder(self) -> str:
        return self.leases.holder

    def heartbeat(self, project_id: int, lost: asyncio.Event) -> Periodic:
        """Renews the run's lease while it works (start it; stop it when the run ends). Sets
        `lost` once the lease is another process's: it took the run over (this one stalled
        past the lease), and the run is its to finish."""
        name = lease_name(project_id)

        async def renew() -> None:
            if not await self.leases.renew(name, LEASE_SECONDS):
                lost.set()

        return Periodic(
            f"gc lease {name}",
            HEARTBEAT_SECONDS,
            renew,
            failure=f"gc: could not renew the lease {name}",
        )

    async def fence(self, project_id: int) -> bool:
        """Whether the run may remove objects from the store now: this process still holds
        its lease with `FENCE_MARGIN_SECONDS` left (renewed to `LEASE_SECONDS` by the same
        query). False: it stalled or was taken over; whoever holds the run removes them."""
        return await self.leases.renew(
            lease_name(project_id), LEASE_SECONDS, margin=FENCE_MARGIN_SECONDS
        )

    async def release(self, project_id: int) -> None:
        await self.leases.release(lease_name(project_id))

    def _holder_alive(self, lease: Lease, run_id: int) -> bool:
        """Whether a lease's holder may still be working on the run."""
        return lease.holder_at_work(self.holder, run_id in self.active)

    async def recover(self, project_id: int | None = None, *, resume_here: bool = False) -> None:
        """Take over the runs whose holder is gone: roll back those that had not committed
        their deletions; finish the sweep of the others (here, or in the background)."""
        query = select(gc_runs.c.id, gc_runs.c.project_id).where(gc_runs.c.state == RUNNING)
        if project_id is not None:
            query = query.where(gc_runs.c.project_id == project_id)
        async with self.db.read() as conn:
            running = (await conn.execute(query)).all()
        if not running:
            return
        leases = await self.leases.read(lease_name(r.project_id) for r in running)
        for row in running:
            if row.id in self.active:
                continue  # this process carries it out, or is taking it over just now
            name = lease_name(row.project_id)
            lease = leases.get(name)
            if lease is not None and lease.remaining > 0 and self._holder_alive(lease, row.id):
                continue  # its holder is at work
            # Ours before the take-over's first await: another recovery in this process (the
            # periodic one and a start in the project) would otherwise see our fresh lease
            # with the run not yet active, take it over again and carry it out twice.
            self.active.add(row.id)
            handed_over = False
            try:
                if not await self.leases.take_over(name, lease, LEASE_SECONDS):
                    continue
                run = await self.runs.load(row.id)
                if run.phase in BEFORE_DELETING:
                    logger.warning(
                        "gc run %s was interrupted before deleting: rolling back", run.id
                    )
                    await self.runs.roll_back(
                        run, "interrupted (its process stopped) before deleting"
                    )
                    await self.release(run.project_id)
                    continue
                logger.warning("gc run %s was interrupted while sweeping: finishing it", run.id)
                handed_over = True  # `execute` lets it go when it ends
                if resume_here:
                    await self._finish_here(run.id)
                else:
                    self._finish_in_background(run.id)
            finally:
                if not handed_over:
                    self.active.discard(row.id)
