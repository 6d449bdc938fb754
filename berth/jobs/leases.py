"""Job leases: which process runs a job, and until when nobody else may start it.

One `job_leases` row per job. Its `expires_at` is both the lock and, for scheduled jobs, the
schedule: while a run is in progress it is a short lease the runner keeps extending; when the run
ends it becomes the time the next run is due. Starting a run is one conditional UPDATE
(`expires_at <= now`, or, to take over a lease seen lapsed, "still as seen"), which the database
applies to one caller only: SQLite has one writer, and PostgreSQL re-checks the condition on the
row a concurrent winner has just changed.

Every time written or compared here is the database's (`Database.clock`), never a node's own:
nodes whose clocks disagree (one running 40 s ahead) still agree on whether a lease has lapsed,
and one of them never takes over a lease another is renewing.

Scheduled jobs (`scheduler.py`) and garbage collection runs (one lease per project) both hold
their work this way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.metadata.database import Database
from berth.metadata.presence import process_gone, this_process
from berth.metadata.tables import job_leases

_LONG_AGO = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# A lease names its holder as a serving process names itself (`host:pid`), and a holder that
# is a process of this machine no longer running can be taken over at once, whatever its
# expiry says (a restart recovers without waiting); one on another machine only by expiry.
default_holder = this_process
holder_process_gone = process_gone


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    expires_at: dt.datetime
    # Seconds of it that were left when it was read, by the database's clock (0 or less: it
    # had lapsed). Not part of what the lease is: two reads of one lease are equal.
    remaining: float = field(compare=False)

    def holder_at_work(self, here: str, carried_out_here: bool) -> bool:
        """Whether its holder may still be carrying out the work it guards: this process
        (`here`) while it does (`carried_out_here`), another unless it is a process of this
        machine that no longer runs (one elsewhere only its expiry tells)."""
        if self.holder == here:
            return carried_out_here
        return not holder_process_gone(self.holder)


class Leases:
    def __init__(self, db: Database, holder: str) -> None:
        self.db = db
        self.holder = holder[:64]

    async def ensure(self, name: str, after: float | None = None) -> None:
        """Create the job's row if it is new: due at once, or `after` seconds from now."""
        async with self.db.write() as conn:
            await self._ensure_in(conn, name, after)

    async def _ensure_in(
        self, conn: AsyncConnection, name: str, after: float | None = None
    ) -> None:
        due = _LONG_AGO if after is None else self.db.clock(after)
        await conn.execute(
            self.db.insert_ignore(job_leases).values(name=name, holder="", expires_at=due)
        )

    async def due_in(self, name: str) -> float | None:
        """Seconds until the job may next be started (0 or less: it may now; None: it has no
        row yet)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(job_leases.c.expires_at, self.db.clock().label("now")).where(
                        job_leases.c.name == name
                    )
                )
            ).first()
        return None if row is None else (row.expires_at - row.now).total_seconds()

    async def read(self, names: Iterable[str]) -> dict[str, Lease]:
        """The leases of these jobs that have a row, by name."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(job_leases, self.db.clock().label("now")).where(
                    job_leases.c.name.in_(list(names))
                )
            )
            return {
                row.name: Lease(
                    row.name, row.holder, row.expires_at, (row.expires_at - row.now).total_seconds()
                )
                for row in rows
            }

    async def claim(self, name: str, seconds: float) -> bool:
        """Start a run if the job is due: hold it for `seconds`. True when this node won."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(job_leases)
                .where(job_leases.c.name == name, job_leases.c.expires_at <= self.db.clock())
                .values(holder=self.holder, expires_at=self.db.clock(seconds))
            )
        return bool(result.rowcount)

    async def take_over(self, name: str, seen: Lease | None, seconds: float) -> bool:
        """Compare-and-set: hold the job for `seconds` if its lease is still as `seen` (None:
        it had no row). True when this node won; of several callers, one does."""
        until = self.db.clock(seconds)
        async with self.db.write() as conn:
            if seen is None:
                result = await conn.execute(
                    self.db.insert_ignore(job_leases).values(
                        name=name, holder=self.holder, expires_at=until
                    )
                )
            else:
                result = await conn.execute(
                    update(job_leases)
                    .where(
                        job_leases.c.name == name,
                        job_leases.c.holder == seen.holder,
                        job_leases.c.expires_at == seen.expires_at,
                    )
                    .values(holder=self.holder, expires_at=until)
                )
        return bool(result.rowcount)

    async def lock_in(self, conn: AsyncConnection, name: str) -> None:
        """In the caller's write transaction, lock the job's row (made if new) until it
        commits: two such transactions for one job queue here (PostgreSQL; SQLite has one
        writer). The caller then decides whether to `hold_in`."""
        await self._ensure_in(conn, name)
        await conn.execute(
            select(job_leases.c.name).where(job_leases.c.name == name).with_for_update()
        )

    async def hold_in(self, conn: AsyncConnection, name: str, seconds: float) -> None:
        """In the caller's transaction (after `lock_in`): hold the job for `seconds`."""
        await conn.execute(
            update(job_leases)
            .where(job_leases.c.name == name)
            .values(holder=self.holder, expires_at=self.db.clock(seconds))
        )

    async def renew(self, name: str, seconds: float, *, margin: float | None = None) -> bool:
        """Hold this node's lease for `seconds` from now; False when it is no longer ours.
        With `margin`, before an act another holder must not see done late: only if at least
        `margin` seconds of it are left (False: stop, the job is not surely ours), and
        otherwise it is left as it was. One conditional UPDATE: a take-over commits either
        before it (False) or after it, and then only once the renewed lease has lapsed."""
        still_ours = [job_leases.c.name == name, job_leases.c.holder == self.holder]
        if margin is not None:
            still_ours.append(job_leases.c.expires_at >= self.db.clock(margin))
        async with self.db.write() as conn:
            result = await conn.execute(
                update(job_leases).where(*still_ours).values(expires_at=self.db.clock(seconds))
            )
        return bool(result.rowcount)

    async def release(self, name: str, *, due_in: float = 0.0) -> bool:
        """End this node's lease: anyone may take the job `due_in` seconds from now (a
        scheduled job's next run; at once by default). False when it was no longer ours."""
        return await self.renew(name, due_in)
