"""The audit log: recording events (a login, an image delete) and reading the log back.

A change made in its own transaction writes its entry there (`metadata.audit.write_audit_entry`);
events that change nothing else are recorded here, in batches while a server runs.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.jobs.periodic import Periodic, unwritten_said
from berth.metadata.database import Database
from berth.metadata.lookups import count_in_project, require_project
from berth.metadata.tables import audit_log, utcnow

logger = logging.getLogger(__name__)

AUDIT_FLUSH_SECONDS = 0.25
# Entries a refused write keeps for the next (the database away, or its disk full): bounded, so
# that an outage of hours cannot take the worker's memory (a few MB at this count).
AUDIT_BACKLOG = 10_000
# After a refused write, the next try waits this long: a warning line every few seconds, not
# four a second, while the database is away.
AUDIT_RETRY_SECONDS = 5.0


class AuditLog:
    def __init__(self, db: Database, flush_interval: float = AUDIT_FLUSH_SECONDS) -> None:
        self.db = db
        self._pending: list[dict[str, Any]] = []
        self._retry_at = 0.0
        self.dropped = 0
        self._flusher = Periodic(
            "audit flush", flush_interval, self.flush, failure="could not write audit entries"
        )

    async def record(self, actor: str, action: str, **fields: Any) -> None:
        """Audit an event that changes nothing else (a login). In a server these are written
        in batches a few times a second: one transaction per token request would cap the token
        endpoint at the writer's commit rate. A crash can lose the last fraction of a second."""
        entry = {"at": utcnow(), "actor": actor, "action": action, "target": "", **fields}
        if "detail" in entry:
            entry["detail"] = json.dumps(entry["detail"])
        if not self._flusher.running:
            async with self.db.write() as conn:
                await conn.execute(audit_log.insert().values(**entry))
        else:
            self._pending.append(entry)

    async def flush(self, *, now: bool = False) -> None:
        """Write the entries recorded since the last flush. Entries a refused write held stay
        for the next try (`AUDIT_RETRY_SECONDS` later, or at once when `now`), and the error is
        raised."""
        if not self._pending or (not now and time.monotonic() < self._retry_at):
            return
        pending, self._pending = self._pending, []
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    audit_log.insert(),
                    [{"project_id": None, "detail": None, "client": None, **e} for e in pending],
                )
        except BaseException:
            self._keep(pending)
            raise

    def _keep(self, refused: list[dict[str, Any]]) -> None:
        """Put refused entries back before the newer ones; past `AUDIT_BACKLOG`, the oldest
        are dropped, counted and logged."""
        self._retry_at = time.monotonic() + AUDIT_RETRY_SECONDS
        backlog = refused + self._pending
        over = len(backlog) - AUDIT_BACKLOG
        if over > 0:
            del backlog[:over]
            self.dropped += over
            logger.warning(
                "%d audit entries dropped, the oldest: the database refused them for too long "
                "(%d newer ones kept for the next write)",
                over,
                len(backlog),
            )
        self._pending = backlog

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        with unwritten_said(  # a flush that fails keeps its entries: counted after it
            logger, lambda: f"{len(self._pending)} audit entries could not be written at shutdown"
        ):
            await self.flush(now=True)

    async def entries(
        self, project: str, limit: int = 200, offset: int = 0
    ) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            return await _page(conn, audit_log.c.project_id == project_id, limit, offset)

    async def server_entries(
        self, limit: int = 200, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Entries outside any project (users created, passwords set, projects created and
        deleted), newest first, and how many there are."""
        outside = audit_log.c.project_id.is_(None)
        async with self.db.read() as conn:
            entries = await _page(conn, outside, limit, offset)
            count = await conn.execute(select(func.count()).select_from(audit_log).where(outside))
            return entries, int(count.scalar() or 0)

    async def count(self, project: str) -> int:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            return await count_in_project(conn, audit_log, project_id)


async def _page(
    conn: AsyncConnection, where: ColumnElement[bool], limit: int, offset: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(audit_log)
        .where(where)
        .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [
        {
            "at": r.at.isoformat(),
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "detail": json.loads(r.detail) if r.detail else None,
            "client": r.client,
        }
        for r in rows
    ]
