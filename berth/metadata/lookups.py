"""Lookups by name that every service needs: the row's id, or an error naming what is missing."""

from __future__ import annotations

from sqlalchemy import select
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


async def require_user(conn: AsyncConnection, user: str) -> int:
    """The id of a user by name, or NOT_FOUND naming them."""
    user_id = (await conn.execute(select(users.c.id).where(users.c.name == user))).scalar()
    if user_id is None:
        raise NotFound(f"user {user!r} does not exist")
    return int(user_id)
