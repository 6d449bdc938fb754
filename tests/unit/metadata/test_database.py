"""The metadata database's write path (`berth.metadata.database`), on a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from berth.domain.errors import Unavailable
from berth.metadata import database
from berth.metadata.database import Database


def test_a_write_queued_behind_this_process_writer_for_too_long_is_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: one writer connection per process; a write that waits too long for it is
    refused as busy (503, Retry-After), not a server error."""
    monkeypatch.setattr(database, "WRITER_QUEUE_SECONDS", 0.2)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}")

    async def queue() -> Unavailable:
        try:
            async with db.write():  # holds the writer
                with pytest.raises(Unavailable) as refused:
                    async with db.write():
                        pass
            return refused.value
        finally:
            await db.dispose()

    refused = asyncio.run(queue())
    assert refused.status == 503 and refused.headers["Retry-After"].isdigit()
