"""Job leases: which process runs a job, and until when nobody else may start it.

One `job_leases` row per job. Its `expires_at` is both the lock and, for scheduled jobs, the
schedule: while a run is in progress it is a short lease the runner keeps extending; when the run
ends it becomes the time the next run is due. Starting a run is one conditional UPDATE
(`expires_at <= now`, or, to take over a lease seen lapsed, "still as seen"), which the database
applies to one caller only: SQLite has one writer, and PostgreSQL re-checks the condition on the
row a concurrent winner has just changed.

Scheduled jobs (`scheduler.py`) and garbage collection runs (one lease per project) both hold
their work this way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.metadata.database import Database
from berth.metadata.presence import process_gone, this_process
from berth.metadata.tables import job_leases, utcnow

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


class Leases:
    def __init__(self, db: Database, holder: str) -> None:
        self.db = db
        self.holder = holder[:64]

    async def ensure(self, name: str, due: dt.datetime | None = None) -> None:
        """Create the job's row if it is new: due at once, or at `due`."""
        async with self.db.write() as conn:
            await self._ensure_in(conn, name, due)

    async def _ensure_in(
        self, conn: AsyncConnection, name: str, due: dt.datetime | None = None
    ) -> None:
        await conn.execute(
            self.db.insert_ignore(job_leases).values(
                name=name, holder="", expires_at=due or _LONG_AGO
            )
        )

    async def due_at(self, name: str) -> dt.datetime | None:
        """When the job may next be started (None: it has no row yet)."""
        async with self.db.read() as conn:
            value = (
                await conn.execute(select(job_leases.c.expires_at).where(job_leases.c.name == name))
            ).scalar()
        return value if isinstance(value, dt.datetime) else None

    async def read(self, names: Iterable[str]) -> dict[str, Lease]:
        """The leases of these jobs that have a row, by name."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(job_leases).where(job_leases.c.name.in_(list(names))))
            return {row.name: Lease(row.name, row.holder, row.expires_at) for row in rows}

    async def claim(self, name: str, seconds: float) -> bool:
        """Start a run if the job is due: hold it for `seconds`. True when this node won."""
        now = utcnow()
        async with self.db.write() as conn:
            result = await conn.execute(
                update(job_leases)
                .where(job_leases.c.name == name, job_leases.c.expires_at <= now)
                .values(holder=self.holder, expires_at=now + dt.timedelta(seconds=seconds))
            )
        return bool(result.rowcount)

    async def take_over(self, name: str, seen: Lease | None, seconds: float) -> bool:
        """Compare-and-set: hold the job for `seconds` if its lease is still as `seen` (None:
        it had no row). True when this node won; of several callers, one does."""
        until = utcnow() + dt.timedelta(seconds=seconds)
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
            .values(holder=self.holder, expires_at=utcnow() + dt.timedelta(seconds=seconds))
        )

    async def extend(
        self, name: str, until: dt.datetime, *, held_until: dt.datetime | None = None
    ) -> bool:
        """Move the end of this node's lease to `until`; False when the lease is no longer
        ours, or (with `held_until`) when it ends before `held_until`, and then it is left as
        it was. One conditional UPDATE: a take-over commits either before it (False) or after
        it, and then only once `until` has passed."""
        still_ours = [job_leases.c.name == name, job_leases.c.holder == self.holder]
        if held_until is not None:
            still_ours.append(job_leases.c.expires_at >= held_until)
        async with self.db.write() as conn:
            result = await conn.execute(
                update(job_leases).where(*still_ours).values(expires_at=until)
            )
        return bool(result.rowcount)

    async def renew(self, name: str, seconds: float, *, margin: float | None = None) -> bool:
        """Hold this node's lease for `seconds` from now; False when it is no longer ours.
        With `margin`, before an act another holder must not see done late: only if at least
        `margin` seconds of it are left (False: stop, the job is not surely ours)."""
        now = utcnow()
        held_until = None if margin is None else now + dt.timedelta(seconds=margin)
        return await self.extend(name, now + dt.timedelta(seconds=seconds), held_until=held_until)

    async def release(self, name: str) -> bool:
        """End this node's lease now: anyone may take the job."""
        return await self.extend(name, utcnow())
