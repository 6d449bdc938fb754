"""A scenario played in this process on a database holding Berth's tables, for tests of what
reads and writes them without a server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from berth.metadata.database import Database
from berth.metadata.tables import metadata


def on_new_tables(url: str, scenario: Callable[[Database], Awaitable[None]]) -> None:
    """Play `scenario` on the (empty) database at `url` once Berth's tables are created in it,
    from their definitions rather than by migrating; its connections are closed after."""

    async def play() -> None:
        db = Database(url)
        try:
            async with db.write() as conn:
                await conn.run_sync(metadata.create_all)
            await scenario(db)
        finally:
            await db.dispose()

    asyncio.run(play())
