"""Where the commands the CLI prints say clients reach the registry (`where_served`), against a
real SQLite database: the live server process that started last, never one that stopped or
was killed; with none serving, where the last server to start was, said to be no server's."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess

from berth.metadata.database import Database
from berth.metadata.presence import HOST, LIVE_SECONDS, Presence
from berth.metadata.tables import serving_processes, utcnow
from berth.services.install import ServedAt, record_served_at, where_served


async def _serving(db: Database, holder: str, served_at: str, started_ago: float) -> None:
    """A row of another process, as its heartbeat writes it, renewed just now."""
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            serving_processes.insert().values(
                holder=holder,
                node_name="",
                version="0.1.0",
                schema_revision="head",
                started_at=now - dt.timedelta(seconds=started_ago),
                seen_at=now,
                served_at=served_at,
                project_host_suffix="",
            )
        )


def test_the_address_printed_is_the_newest_live_servers(database_url: str) -> None:
    killed = subprocess.Popen(["true"])
    killed.wait()

    async def scenario() -> None:
        db = Database(database_url)
        try:
            assert await where_served(db) is None  # no server has started: the CLI's own
            # `make run` on 5000, then `berth serve --listen ...:5014`, which stopped.
            for port in (5000, 5014):
                url = f"http://127.0.0.1:{port}"
                await record_served_at(db, f"127.0.0.1:{port}", "", url)
            assert await where_served(db) == ServedAt("127.0.0.1:5014", "", serving=False)

            running = Presence(db, node_name="", version="0.1.0", served_at="127.0.0.1:5000")
            await running.renew()
            # Started after it, but killed here, or silent too long on another machine.
            await _serving(db, f"{HOST}:{killed.pid}", "127.0.0.1:5014", started_ago=-5)
            await _serving(db, "elsewhere:7", "10.0.0.7:5000", started_ago=-5)
            async with db.write() as conn:
                await conn.execute(
                    serving_processes.update()
                    .where(serving_processes.c.holder == "elsewhere:7")
                    .values(seen_at=utcnow() - dt.timedelta(seconds=LIVE_SECONDS + 1))
                )
            assert await where_served(db) == ServedAt("127.0.0.1:5000", None, serving=True)

            # Another machine's server that started later and still serves: its address.
            await _serving(db, "elsewhere:8", "10.0.0.8:5000", started_ago=-5)
            assert await where_served(db) == ServedAt("10.0.0.8:5000", "", serving=True)
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_a_live_server_whose_address_is_too_long_to_record_is_not_said_to_be_gone(
    database_url: str,
) -> None:
    """Its address is not recorded (cut short it would fail): the last recorded one is
    printed, neither said to serve nor said not to."""

    async def scenario() -> None:
        db = Database(database_url)
        try:
            await record_served_at(db, "127.0.0.1:5000", "", "http://127.0.0.1:5000")
            long_name = ".".join(["x" * 60] * 4) + ":5000"  # 247 characters: fits
            await Presence(db, node_name="", version="0.1.0", served_at=long_name).renew()
            assert await where_served(db) == ServedAt(long_name, None, serving=True)
            await Presence(db, node_name="", version="0.1.0", served_at="x" * 256 + ":5000").renew()
            assert await where_served(db) == ServedAt("127.0.0.1:5000", "", serving=None)
        finally:
            await db.dispose()

    asyncio.run(scenario())
