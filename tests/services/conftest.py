"""In-process service tests: each runs on a fresh, migrated SQLite database of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from berth.metadata.database import Database
from berth.metadata.migrate import upgrade


def run_on_database(tmp_path: Path, scenario: Callable[[Database], Awaitable[None]]) -> None:
    """Run `scenario` against a new database under `tmp_path`, then close it."""

    async def main() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}"
        await asyncio.to_thread(upgrade, url)
        db = Database(url)
        try:
            await scenario(db)
        finally:
            await db.dispose()

    asyncio.run(main())
