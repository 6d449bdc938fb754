"""A project's repository quota, checked in the transaction that creates a repository."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import QuotaExceeded
from berth.metadata.lookups import count_in_project
from berth.metadata.tables import project_settings, repositories

# The largest quota a project may be given, from the API or the CLI alike.
MAX_REPOSITORY_QUOTA = 1_000_000


async def check_repository_quota(
    conn: AsyncConnection, project_id: int, project: str, default_quota: int
) -> None:
    """QuotaExceeded when the project holds as many repositories as its quota (its own, else
    the server's default) allows."""
    own = (
        await conn.execute(
            select(project_settings.c.repository_quota).where(
                project_settings.c.project_id == project_id
            )
        )
    ).scalar()
    quota = int(own) if own is not None else default_quota
    stored = await count_in_project(conn, repositories, project_id)
    if stored >= quota:
        raise QuotaExceeded(
            f"project {project!r} already has {stored} of its maximum {quota} "
            "repositories (repository quota); delete one or raise the quota",
            {"quota": quota, "stored": stored},
        )
