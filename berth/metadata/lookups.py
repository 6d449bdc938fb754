"""Lookups by name that every service needs: the row's id, or an error naming what is missing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import NameUnknown, NotFound
from berth.metadata.tables import projects, repositories, users


async def require_project(conn: AsyncConnection, project: str) -> int:
    """The id of a project by name, or NAME_UNKNOWN naming it."""
    project_id = (
        await conn.execute(select(projects.c.id).where(projects.c.name == project))
    ).scalar()
    if project_id is None:
        raise NameUnknown(f"project {project!r} does not exist", {"project": project})
    return int(project_id)


async def require_repository(
    conn: AsyncConnection, project_id: int, project: str, repository: str
) -> int:
    """The id of a repository of a project, or NAME_UNKNOWN naming it."""
    repository_id = (
        await conn.execute(
            select(repositories.c.id).where(
                repositories.c.project_id == project_id, repositories.c.name == repository
            )
        )
    ).scalar()
    if repository_id is None:
        raise NameUnknown(
            f"repository {project}/{repository} does not exist", {"repository": repository}
        )
    return int(repository_id)


async def require_user_row(conn: AsyncConnection, user: str) -> Row[Any]:
    """A user's row by name, or NOT_FOUND naming them."""
    row = (await conn.execute(select(users).where(users.c.name == user))).first()
    if row is None:
        raise NotFound(f"user {user!r} does not exist")
    return row


async def require_user(conn: AsyncConnection, user: str) -> int:
    """The id of a user by name, or NOT_FOUND naming them."""
    return int((await require_user_row(conn, user)).id)


async def count_in_project(conn: AsyncConnection, table: Table, project_id: int) -> int:
    """How many rows of `table` (one with a `project_id` column) belong to the project."""
    counted = await conn.execute(
        select(func.count()).select_from(table).where(table.c.project_id == project_id)
    )
    return int(counted.scalar() or 0)
