"""Which server processes serve on this database.

Every serving process writes its row in `serving_processes` every HEARTBEAT_SECONDS and deletes
it when it stops (`Presence`); a process killed without stopping leaves a row that is no longer
renewed, which counts as gone LIVE_SECONDS after its last renewal, or at once when the process
was on this machine and no longer exists. `berth status` lists the live ones, and a `berth
serve` that would migrate the schema waits for them to be gone first (migrate.py): a server of
the older version serving beside the newer schema would misread it.

The times written and compared are the database's (`database_clock`), not a node's own: a
node whose clock runs ahead would otherwise see a live server on another node as gone, and one
whose clock lags would write a heartbeat the others see as old.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, delete, inspect, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import StorageRefused, Unavailable
from berth.metadata.database import Database
from berth.metadata.tables import database_clock, serving_processes

logger = logging.getLogger("berth.presence")

HEARTBEAT_SECONDS = 10.0
# A row not renewed for this long: its process died without deleting it (three beats missed:
# a stalled event loop or a slow database is not taken for a dead server).
LIVE_SECONDS = 30.0
# Rows of processes gone this long ago are deleted by any process's heartbeat.
FORGOTTEN_AFTER = dt.timedelta(days=1)

HOST = socket.gethostname()[:40]


def this_process() -> str:
    """This process, as its row and a job lease name it: `host:pid`."""
    return f"{HOST}:{os.getpid()}"


def process_gone(holder: str) -> bool:
    """Whether `holder` (`host:pid`) is a process of this machine that no longer exists. A
    process on another machine is never known to be gone: only its silence tells."""
    host, _, pid = holder.rpartition(":")
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class ServingProcess:
    holder: str
    node_name: str
    version: str
    schema_revision: str
    started_at: dt.datetime
    seen_at: dt.datetime

    def describe(self) -> str:
        node = f"node {self.node_name}, " if self.node_name else ""
        return f"{self.holder} ({node}Berth {self.version}, schema {self.schema_revision})"


def _live(rows: list[ServingProcess], now: dt.datetime) -> list[ServingProcess]:
    cutoff = now - dt.timedelta(seconds=LIVE_SECONDS)
    return [row for row in rows if row.seen_at > cutoff and not process_gone(row.holder)]


def _all_rows(connection: Connection) -> list[ServingProcess]:
    if not inspect(connection).has_table(serving_processes.name):
        return []  # a schema older than the table: its servers write no rows
    rows = connection.execute(select(serving_processes).order_by(serving_processes.c.holder))
    return [ServingProcess(**row._mapping) for row in rows]


def live_processes_sync(connection: Connection) -> list[ServingProcess]:
    """The live serving processes, read on a synchronous connection (a migration's)."""
    now = connection.execute(select(database_clock(connection.dialect.name))).scalar_one()
    return _live(_all_rows(connection), now)


class Presence:
    """This serving process's row: written at start, renewed every HEARTBEAT_SECONDS, deleted
    when it stops."""

    def __init__(self, db: Database, *, node_name: str, version: str) -> None:
        self.db = db
        self.holder = this_process()
        self.node_name, self.version = node_name[:64], version
        self.schema: str | None = None  # read from the database (Alembic is not loaded here)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name="presence")

    async def stop(self) -> None:
        if self._task is None:
            return  # never started: an admin verb's services, which serve nothing
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):  # the database away: the row lapses by itself
            async with self.db.write() as conn:
                await conn.execute(
                    delete(serving_processes).where(serving_processes.c.holder == self.holder)
                )

    async def renew(self) -> None:
        """Write this process's row as seen now, and forget long-gone processes."""
        if self.schema is None:
            self.schema = await self._schema_revision()
        values = {
            "node_name": self.node_name,
            "version": self.version,
            "schema_revision": self.schema,
            "seen_at": self.db.clock(),
        }
        forgotten = self.db.clock(-FORGOTTEN_AFTER.total_seconds())
        async with self.db.write() as conn:
            await self._upsert(conn, values)
            await conn.execute(
                delete(serving_processes).where(serving_processes.c.seen_at < forgotten)
            )

    async def _schema_revision(self) -> str:
        try:
            async with self.db.read() as conn:
                return str(await conn.scalar(text("SELECT version_num FROM alembic_version")))
        except DBAPIError:  # a schema made without Alembic (tests' create_all)
            return "unknown"

    async def _upsert(self, conn: AsyncConnection, values: Mapping[str, object]) -> None:
        mine = serving_processes.c.holder == self.holder
        changed = await conn.execute(update(serving_processes).where(mine).values(**values))
        if changed.rowcount == 0:  # its first beat: it started now
            await conn.execute(
                serving_processes.insert().values(
                    holder=self.holder, started_at=self.db.clock(), **values
                )
            )

    async def _beat(self) -> None:
        while True:
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:  # the database away: its own log said so
                logger.debug("could not renew this process's presence: %s", exc.message)
            except StorageRefused as exc:
                logger.warning("could not renew this process's presence: %s", exc.message)
            except Exception:
                logger.exception("could not renew this process's presence")
            await asyncio.sleep(HEARTBEAT_SECONDS)
