"""Role lookups: a user's role in a project or on a repository, read from the database and
kept for a second, and what they allow there (through `policy`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.expiring import ExpiringCache
from berth.access.permissions import Action
from berth.access.policy import (
    Principal,
    key_works_in,
    repository_actions,
    sees_whole_project,
)
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import memberships, repositories, repository_grants

# Access checks reuse a lookup this long; a removed member or a disabled key stops working
# within it on every node.
CACHE_SECONDS = 1.0
CACHE_ENTRIES = 50_000
# Built once (bind parameters), read by `Database.first`: building a statement costs more
# than a cache hit, and every request asks.
_PROJECT_ROLE = select(memberships.c.role).where(
    memberships.c.user_id == bindparam("user_id"),
    memberships.c.project_id == bindparam("target_id"),
)
_REPOSITORY_ROLE = select(repository_grants.c.role).where(
    repository_grants.c.user_id == bindparam("user_id"),
    repository_grants.c.repository_id == bindparam("target_id"),
)


async def has_role(conn: AsyncConnection, project_id: int, user_id: int) -> bool:
    """A project role or a role on one of the project's repositories."""
    member = (
        await conn.execute(
            select(memberships.c.role).where(
                memberships.c.project_id == project_id, memberships.c.user_id == user_id
            )
        )
    ).first()
    if member is not None:
        return True
    grant = (
        await conn.execute(
            select(repository_grants.c.role)
            .join(repositories, repositories.c.id == repository_grants.c.repository_id)
            .where(repositories.c.project_id == project_id, repository_grants.c.user_id == user_id)
            .limit(1)
        )
    ).first()
    return grant is not None


class Roles:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: ExpiringCache[tuple[str, int, int], str | None] = ExpiringCache(
            CACHE_ENTRIES, CACHE_SECONDS
        )

    def forget(self) -> None:
        """Drop cached roles (after some changed)."""
        self._cache.clear()

    async def project_role(self, user_id: int, project_id: int) -> str | None:
        return await self._role(("p", user_id, project_id), _PROJECT_ROLE)

    async def repository_role(self, user_id: int, repository_id: int) -> str | None:
        return await self._role(("r", user_id, repository_id), _REPOSITORY_ROLE)

    async def _role(self, key: tuple[str, int, int], query: Select[Any]) -> str | None:
        try:
            return self._cache[key]  # None too: no role, as read a moment ago
        except KeyError:
            pass
        row = await self.db.first(query, user_id=key[1], target_id=key[2])
        role: str | None = row[0] if row is not None else None
        self._cache[key] = role
        return role

    async def has_any_role(self, user_id: int, project_id: int) -> bool:
        """A project role or a role on one of the project's repositories."""
        async with self.db.read() as conn:
            return await has_role(conn, project_id, user_id)

    async def project_roles(self, user_id: int) -> dict[int, str]:
        """project id -> the user's role there, for every project they are a member of."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(memberships.c.project_id, memberships.c.role).where(
                    memberships.c.user_id == user_id
                )
            )
            return {int(r.project_id): str(r.role) for r in rows}

    async def sees_project(self, principal: Principal | None, project_id: int) -> bool:
        """Project-wide standing, as opposed to roles on single repositories."""
        if principal is None or principal.is_admin or not key_works_in(principal, project_id):
            return sees_whole_project(principal, project_id, None)
        role = await self.project_role(principal.user_id, project_id)
        return sees_whole_project(principal, project_id, role)

    async def actions(
        self, principal: Principal | None, project_id: int, repo: RepositoryRef | None
    ) -> frozenset[Action]:
        """What `principal` may do on `repo` (or, with None, on a repository not yet created)."""
        project_role = repository_role = None
        if principal is not None:
            project_role = await self.project_role(principal.user_id, project_id)
            if repo is not None:
                repository_role = await self.repository_role(principal.user_id, repo.id)
        return repository_actions(
            principal,
            project_id=project_id,
            public=repo.public if repo is not None else False,
            project_role=project_role,
            repository_role=repository_role,
        )

    async def describe(
        self,
        principal: Principal,
        project_id: int,
        project: str,
        repository: str,
        repo: RepositoryRef | None,
    ) -> str | None:
        """The caller's role here, for a refusal: `reader in project 'demo'`."""
        role = await self.project_role(principal.user_id, project_id)
        if role is not None:
            return f"{role} in project {project!r}"
        if repo is not None:
            role = await self.repository_role(principal.user_id, repo.id)
            if role is not None:
                return f"{role} on repository {project}/{repository}"
        return None
