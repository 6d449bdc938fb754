"""Outbound traffic: the bytes sent to clients for blob and manifest downloads.

Each process counts in memory, keyed by (project, repository, UTC day): the pull path only adds
to a dict entry, and never touches the database. The counts are written every few seconds, and
once more at a clean shutdown, with an upsert that adds them to the day's row, so every process
of every node adds into the same rows. A write that fails keeps its counts for the next one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from berth.jobs.periodic import Periodic, unwritten_said
from berth.metadata.database import Database
from berth.metadata.tables import projects, traffic_daily

logger = logging.getLogger("berth.metering")

SECONDS_PER_DAY = 86_400
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

# (project id, repository id, days since 1970-01-01 UTC) -> [bytes, requests]
Key = tuple[int, int, int]


def day_of(epoch_day: int) -> dt.date:
    return dt.date.fromordinal(_EPOCH_ORDINAL + epoch_day)


class TrafficMeter:
    """In-memory counters of outbound bytes, flushed to `traffic_daily`."""

    def __init__(self, db: Database, *, enabled: bool = True, flush_interval: float = 5.0) -> None:
        self.db = db
        self.enabled = enabled
        self.flush_interval = flush_interval
        self._pending: dict[Key, list[int]] = {}
        self._lock = asyncio.Lock()  # one write at a time: the periodic one and the last one
        self._flusher = Periodic(
            "traffic flush",
            flush_interval,
            self.flush,
            failure="could not write outbound traffic counts; kept for the next try",
        )

    def count(self, project_id: int, repository_id: int, sent: int) -> None:
        """Add one download of `sent` bytes. The hot path: a dict lookup and two additions."""
        if sent <= 0:
            return
        key = (project_id, repository_id, int(time.time()) // SECONDS_PER_DAY)
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = [sent, 1]
        else:
            entry[0] += sent
            entry[1] += 1

    @property
    def pending_bytes(self) -> int:
        """Bytes counted here and not yet written."""
        return sum(entry[0] for entry in self._pending.values())

    # ------------------------------------------------------------------ writing

    async def flush(self) -> int:
        """Write what has been counted; returns the number of rows written. On failure the
        counts are kept (added back) for the next flush, and the error is raised."""
        async with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return 0
            try:
                return await self._write(pending)
            except BaseException:
                self._restore(pending)
                raise

    def _restore(self, counts: dict[Key, list[int]]) -> None:
        for key, (sent, requests) in counts.items():
            entry = self._pending.setdefault(key, [0, 0])
            entry[0] += sent
            entry[1] += requests

    def _upsert(self) -> Any:
        dialect: Any = self.db.dialect_package
        statement = dialect.insert(traffic_daily)
        return statement.on_conflict_do_update(
            index_elements=["project_id", "repository_id", "day"],
            set_={
                "bytes": traffic_daily.c.bytes + statement.excluded.bytes,
                "requests": traffic_daily.c.requests + statement.excluded.requests,
            },
        )

    async def _write(self, counts: dict[Key, list[int]]) -> int:
        # Sorted, so that two nodes' upserts lock rows in the same order (no deadlock).
        rows = [
            {
                "project_id": project_id,
                "repository_id": repository_id,
                "day": day_of(epoch_day),
                "bytes": sent,
                "requests": requests,
            }
            for (project_id, repository_id, epoch_day), (sent, requests) in sorted(counts.items())
        ]
        try:
            async with self.db.write() as conn:
                await conn.execute(self._upsert(), rows)
        except IntegrityError:
            # A project was deleted since its downloads were counted: its traffic goes with it.
            async with self.db.write() as conn:
                wanted = {row["project_id"] for row in rows}
                existing = set(
                    (
                        await conn.execute(select(projects.c.id).where(projects.c.id.in_(wanted)))
                    ).scalars()
                )
                rows = [row for row in rows if row["project_id"] in existing]
                if rows:
                    await conn.execute(self._upsert(), rows)
        return len(rows)

    # ------------------------------------------------------------------ the flusher

    def start(self) -> None:
        """Flush every `flush_interval` seconds, in this process's event loop."""
        if self.enabled:
            self._flusher.start()

    async def stop(self) -> None:
        """Stop the flusher, then flush once more (never cancelled in the middle of a write)."""
        await self._flusher.stop()
        for _attempt in range(2):
            try:
                await self.flush()
                return
            except Exception:
                await asyncio.sleep(0.5)
        with unwritten_said(logger, self._unwritten):
            await self.flush()

    def _unwritten(self) -> str:
        requests = sum(entry[1] for entry in self._pending.values())
        return (
            f"outbound traffic counts of {self.pending_bytes} bytes ({requests} requests) could "
            "not be written at shutdown"
        )
