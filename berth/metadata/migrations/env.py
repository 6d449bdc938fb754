"""Alembic environment: runs migrations over the async engine the app uses."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event, pool, text
from sqlalchemy.engine import Connection, Engine

from berth.metadata.database import open_engine
from berth.metadata.migrate import AFTER, BEFORE, MIGRATION_LOCK, refuse_unknown_revisions
from berth.metadata.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # On SQLite too (its DDL is transactional once the driver leaves BEGIN to us, below):
        # a start killed mid-migration then leaves the schema as it was, not tables that
        # the next start fails to create again ("table blobs already exists").
        transactional_ddl=True,
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


def _begin_sqlite_transactions_explicitly(engine: Engine) -> None:
    """Python's sqlite3 opens a transaction only before INSERT, UPDATE and DELETE, so each
    CREATE TABLE, and each batch migration's copy and rename, would commit at once: turn its
    own handling off and begin every transaction ourselves (SQLAlchemy's documented recipe)."""

    @event.listens_for(engine, "connect")
    def no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


async def _run_async() -> None:
    engine = open_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    if engine.dialect.name == "sqlite":
        _begin_sqlite_transactions_explicitly(engine.sync_engine)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported")
asyncio.run(_run_async())
