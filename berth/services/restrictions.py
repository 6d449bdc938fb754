"""Write restrictions a project can be under (garbage collection), checked inside every write
transaction that adds content, so a check and the write it guards cannot be split apart."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import Denied
from berth.metadata.tables import project_settings

GC_IN_PROGRESS = "garbage collection in progress"


async def ensure_writable(conn: AsyncConnection, project_id: int, project: str) -> None:
    """Refuse (DENIED) while a garbage collection holds the project's write restriction."""
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
