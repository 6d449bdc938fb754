"""Write restrictions a project can be under (garbage collection), checked inside every write
transaction that adds content, so a check and the write it guards cannot be split apart."""

from __future__ import annotations

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import Denied
from berth.metadata.database import Database
from berth.metadata.tables import project_settings

GC_IN_PROGRESS = "garbage collection in progress"


# PostgreSQL advisory lock namespace (first key) for a project's write gate; the second key is
# the project id. Writers hold it shared until they commit; GC takes it exclusively to switch
# the restriction on, so no write that checked before the switch is still in flight after it.
WRITE_GATE_LOCK = 0x6763  # "gc"


async def ensure_writable(conn: AsyncConnection, project_id: int, project: str) -> None:
    """Refuse (DENIED) while a garbage collection holds the project's write restriction; in a
    write transaction, which then cannot overlap GC's switching the restriction on."""
    if conn.dialect.name == "postgresql":
        # SQLite needs nothing: its one writer already orders this after GC's switch.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock_shared(:gate, :project)"),
            {"gate": WRITE_GATE_LOCK, "project": project_id},
        )
    await refuse_if_restricted(conn, project_id, project)


async def refuse_if_restricted(conn: AsyncConnection, project_id: int, project: str) -> None:
    """The check alone, without the write gate: an early answer to a client (the write that
    follows checks again with `ensure_writable`)."""
    holder = (
        await conn.execute(
            select(project_settings.c.gc_restricted_by).where(
                project_settings.c.project_id == project_id
            )
        )
    ).scalar()
    if holder is not None:
        raise Denied(
            f"{GC_IN_PROGRESS} in project {project!r}: pushes, new tags and repository changes "
            "are refused until it finishes (usually seconds); pulls keep working. Retry shortly.",
            {"gc_run": holder},
        )


async def impose_restriction(
    db: Database, conn: AsyncConnection, project_id: int, run_id: int
) -> None:
    """Step 1 of a run, in its own transaction: from its commit on, every write in the project
    is refused until `lift_restriction`."""
    if not db.is_sqlite:
        # Waits for the project's writes that already passed their check: once this commits,
        # every write in the project sees the restriction.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(:gate, :project)"),
            {"gate": WRITE_GATE_LOCK, "project": project_id},
        )
    await conn.execute(
        db.upsert(project_settings, ["project_id"], {"gc_restricted_by": run_id}).values(
            project_id=project_id, gc_restricted_by=run_id
        )
    )


async def lift_restriction(conn: AsyncConnection, project_id: int, run_id: int) -> None:
    """Lift the run's restriction, if it still holds it (a later run's stays)."""
    await conn.execute(
        update(project_settings)
        .where(
            project_settings.c.project_id == project_id,
            project_settings.c.gc_restricted_by == run_id,
        )
        .values(gc_restricted_by=None)
    )
