"""Lookups by name that every service needs: the row's id, or an error naming what is missing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import NameUnknown
from berth.metadata.tables import projects


async def require_project(conn: AsyncConnection, project: str) -> int:
    """The id of a project by name, or NAME_UNKNOWN naming it."""
    project_id = (
        await conn.execute(select(projects.c.id).where(projects.c.name == project))
    ).scalar()
    if project_id is None:
        raise NameUnknown(f"project {project!r} does not exist", {"project": project})
    return int(project_id)
