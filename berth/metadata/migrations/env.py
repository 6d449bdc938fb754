"""Alembic environment: runs migrations over the async engine the app uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection

from berth.metadata.database import open_engine
from berth.metadata.migrate import AFTER, BEFORE, MIGRATION_LOCK, refuse_unknown_revisions
from berth.metadata.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held to the end of the transaction, which Alembic commits after the last
            # migration (PostgreSQL's DDL is transactional). SQLite serves one node only.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        migration = context.get_context()
        refuse_unknown_revisions(migration.get_current_heads(), context.script)
        config.attributes[BEFORE] = migration.get_current_revision()
        context.run_migrations()
        config.attributes[AFTER] = migration.get_current_revision()


async def _run_async() -> None:
    engine = open_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported")
asyncio.run(_run_async())
