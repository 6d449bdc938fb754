"""The audit log's batched writes (`AuditLog`) against a real SQLite database: what a write the
database refuses (away, or its disk full) does to the entries waiting in it."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from berth.metadata.database import Database
from berth.services import audit as audit_module
from berth.services.audit import AuditLog
from tests.unit.services.test_metering import with_database


async def table_away(db: Database, away: bool) -> None:
    names = ("audit_log", "audit_away") if away else ("audit_away", "audit_log")
    async with db.write() as conn:
        await conn.execute(text(f"ALTER TABLE {names[0]} RENAME TO {names[1]}"))


async def actors(audit: AuditLog) -> list[str]:
    entries, _ = await audit.server_entries()
    return [entry["actor"] for entry in reversed(entries)]  # oldest first


def test_entries_a_refused_write_held_are_written_by_the_next(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        audit = AuditLog(db, flush_interval=3600)  # flushed by hand below
        audit.start()
        try:
            await table_away(db, True)
            await audit.record("first", "login")
            await audit.record("second", "login")
            with pytest.raises(OperationalError, match="no such table"):
                await audit.flush()
            await audit.record("third", "login")
            await table_away(db, False)
            await audit.flush()  # within the wait after a refusal: not tried yet
            assert await actors(audit) == []
            await audit.flush(now=True)
            assert await actors(audit) == ["first", "second", "third"]
            assert audit.dropped == 0
        finally:
            await audit.stop()

    with_database(database_url, scenario)


def test_a_long_refusal_keeps_the_newest_entries_and_says_how_many_went(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit_module, "AUDIT_BACKLOG", 3)

    async def scenario(db: Database) -> None:
        audit = AuditLog(db, flush_interval=3600)
        audit.start()
        try:
            await table_away(db, True)
            for n in range(5):
                await audit.record(f"user{n}", "login")
            with pytest.raises(OperationalError):
                await audit.flush(now=True)
            await table_away(db, False)
        finally:
            await audit.stop()  # writes what is left, without waiting
        assert await actors(audit) == ["user2", "user3", "user4"]
        assert audit.dropped == 2

    with caplog.at_level(logging.WARNING, logger="berth.services.audit"):
        with_database(database_url, scenario)
    assert "2 audit entries dropped" in caplog.text
