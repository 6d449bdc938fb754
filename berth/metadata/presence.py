"""Which server processes serve on this database.

Every serving process writes its row in `serving_processes` every HEARTBEAT_SECONDS and deletes
it when it stops (`Presence`); a process killed without stopping leaves a row that is no longer
renewed, which counts as gone LIVE_SECONDS after its last renewal, or at once when the process
was on this machine and no longer exists. `berth status` lists the live ones, a `berth
serve` that would migrate the schema waits for them to be gone first (migrate.py): a server of
the older version serving beside the newer schema would misread it, and the commands the CLI
prints name where the newest live one is reached (`newest_addressed_process`), not where a
stopped one was.

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
from berth.metadata.tables import column_width, database_clock, serving_processes

logger = logging.getLogger("berth.presence")

HEARTBEAT_SECONDS = 10.0
# A row not renewed for this long: its process died without deleting it (three beats missed:
# a stalled event loop or a slow database is not taken for a dead server).
LIVE_SECONDS = 30.0
# Rows of processes gone this long ago are deleted by any process's heartbeat.
FORGOTTEN_AFTER = dt.timedelta(days=1)

HOST = socket.gethostname()[:40]


# serving_processes.served_at's width (project_host_suffix's too).
ADDRESS_WIDTH = column_width(serving_processes.c.served_at)


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
    # Where clients reach it and its project hosts' suffix (None: a server of before they were
    # recorded, or an address longer than the column).
    served_at: str | None = None
    project_host_suffix: str | None = None

    def describe(self) -> str:
        node = f"node {self.node_name}, " if self.node_name else ""
        at = f", at {self.served_at}" if self.served_at else ""
        return f"{self.holder} ({node}Berth {self.version}, schema {self.schema_revision}{at})"


def _live(rows: list[ServingProcess], now: dt.datetime) -> list[ServingProcess]:
    cutoff = now - dt.timedelta(seconds=LIVE_SECONDS)
    return [row for row in rows if row.seen_at > cutoff and not process_gone(row.holder)]


# Columns added after the table (0025): a row of an older schema has none of them.
_ADDED_SINCE_THE_TABLE = frozenset({"served_at", "project_host_suffix"})


def _all_rows(connection: Connection) -> list[ServingProcess]:
    inspector = inspect(connection)
    if not inspector.has_table(serving_processes.name):
        return []  # a schema older than the table: its servers write no rows
    # A schema from before the addresses (read by the migration that adds them): without them.
    present = {column["name"] for column in inspector.get_columns(serving_processes.name)}
    columns = [
        column
        for column in serving_processes.c
        if column.name in present or column.name not in _ADDED_SINCE_THE_TABLE
    ]
    rows = connection.execute(select(*columns).order_by(serving_processes.c.holder))
    return [ServingProcess(**row._mapping) for row in rows]


def live_processes_sync(connection: Connection) -> list[ServingProcess]:
    """The live serving processes, read on a synchronous connection (a migration's)."""
    now = connection.execute(select(database_clock(connection.dialect.name))).scalar_one()
    return _live(_all_rows(connection), now)


def newest_addressed_process(live: list[ServingProcess]) -> ServingProcess | None:
    """Of the `live` serving processes, the one that started last among those that recorded
    where clients reach them (a server's workers all record the same), or None."""
    addressed = [row for row in live if row.served_at is not None]
    return max(addressed, key=lambda row: (row.started_at, row.holder), default=None)


class Presence:
    """This serving process's row: written at start, renewed every HEARTBEAT_SECONDS, deleted
    when it stops."""

    def __init__(
        self,
        db: Database,
        *,
        node_name: str,
        version: str,
        served_at: str | None = None,
        project_host_suffix: str | None = None,
    ) -> None:
        self.db = db
        self.holder = this_process()
        self.node_name, self.version = node_name[:64], version
        # Too long for the columns: not recorded (cut short, it would be an address that fails).
        fits = max(len(served_at or ""), len(project_host_suffix or "")) <= ADDRESS_WIDTH
        self.served_at = served_at if fits else None
        self.project_host_suffix = project_host_suffix if fits else None
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
            "served_at": self.served_at,
            "project_host_suffix": self.project_host_suffix,
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
