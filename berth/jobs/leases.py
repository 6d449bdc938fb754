"""Job leases: which node runs a scheduled job, and until when nobody else may start it.

One `job_leases` row per job. Its `expires_at` is both the lock and the schedule: while a run is
in progress it is a short lease the runner keeps extending; when the run ends it becomes the
time the next run is due. Starting a run is one conditional UPDATE (`expires_at <= now`), which
the database applies to one caller only: SQLite has one writer, and PostgreSQL re-checks the
condition on the row a concurrent winner has just changed.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from berth.metadata.database import Database
from berth.metadata.tables import job_leases, utcnow

_LONG_AGO = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Leases:
    def __init__(self, db: Database, holder: str) -> None:
        self.db = db
        self.holder = holder[:64]

    async def ensure(self, name: str, due: dt.datetime | None = None) -> None:
        """Create the job's row if it is new: due at once, or at `due`."""
        async with self.db.write() as conn:
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

    async def extend(self, name: str, until: dt.datetime) -> bool:
        """Move the end of this node's lease; False when the lease is no longer ours."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(job_leases)
                .where(job_leases.c.name == name, job_leases.c.holder == self.holder)
                .values(expires_at=until)
            )
        return bool(result.rowcount)
