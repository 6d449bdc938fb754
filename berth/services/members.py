"""Who has a role where: project members and repository grants (role lookups for access
checks are `berth.access.roles`). Losing one's last role in a project deletes one's access keys
there. A project that has admins keeps one: its last admin is neither demoted nor removed."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import Field
from sqlalchemy import ColumnElement, Select, and_, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.permissions import (
    PROJECT_ROLES,
    REPOSITORY_ROLES,
    Action,
    ProjectRole,
    RepositoryRole,
)
from berth.access.policy import roles_actions
from berth.access.roles import Roles, has_role
from berth.domain.errors import Conflict, InvalidValue, NameUnknown, StateRefusal
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project, require_repository, require_user
from berth.metadata.tables import (
    access_keys,
    memberships,
    projects,
    repositories,
    repository_grants,
    tags,
    uploads,
    users,
    utcnow,
)
from berth.services.records import Record
from berth.storage.base import BlobStore


class Member(Record):
    """A project member."""

    user: str
    role: ProjectRole
    since: dt.datetime


class Grant(Record):
    """A user's role on one repository."""

    user: str
    role: RepositoryRole = Field(description="member: push and pull; viewer: pull")
    since: dt.datetime


class HeldRepositoryRole(Record):
    """One of a user's own roles on a repository, and the tag they would pull first."""

    project: str
    repository: str
    role: RepositoryRole = Field(description="member: push and pull; viewer: pull")
    newest_tag: str | None = Field(
        description="the tag set most recently in the repository, null while it has none"
    )
    newest_tag_image: str | None = Field(
        description="the image under the repository that tag is of (`` for the repository itself)"
    )


def _membership(project_id: int, user_id: int) -> ColumnElement[bool]:
    return and_(memberships.c.project_id == project_id, memberships.c.user_id == user_id)


def _not_a_member(project: str, user: str) -> NameUnknown:
    return NameUnknown(f"user {user!r} is not a member of project {project!r}")


def _grant(repository_id: int, user_id: int) -> ColumnElement[bool]:
    return and_(
        repository_grants.c.repository_id == repository_id, repository_grants.c.user_id == user_id
    )


def _no_grant(project: str, repository: str, user: str) -> NameUnknown:
    return NameUnknown(f"user {user!r} has no role on {project}/{repository}")


class Members:
    def __init__(
        self,
        db: Database,
        roles: Roles,
        forget_access: Callable[[], None],
        store: BlobStore | None = None,
    ) -> None:
        self.db = db
        self.roles = roles
        self._forget_access = forget_access  # removed roles and deleted keys stop working
        self.store = store  # where the uploads of users who lose push access are stored

    async def add_member(
        self, project: str, user: str, role: str, *, actor: str, client: str | None = None
    ) -> None:
        if role not in PROJECT_ROLES:
            raise InvalidValue(f"project role must be one of {', '.join(PROJECT_ROLES)}", "role")
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            user_id = await require_user(conn, user)
            if role != ProjectRole.ADMIN:
                await refuse_leaving_no_admin(conn, project_id, project, user_id, user)
            await conn.execute(
                self.db.upsert(memberships, ["project_id", "user_id"], {"role": role}).values(
                    project_id=project_id, user_id=user_id, role=role, created_at=utcnow()
                )
            )
            await write_audit_entry(
                conn,
                actor,
                "member.add",
                project_id=project_id,
                target=user,
                detail={"role": role},
                client=client,
            )
        self.roles.forget()

    async def require_removable(self, project: str, user: str) -> None:
        """Refuse as `remove_member` would a user who is not a member of the project (or a
        project or user that does not exist), or is its last admin: asked before a removal is
        confirmed."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            user_id = await require_user(conn, user)
            held = _membership(project_id, user_id)
            if (await conn.execute(select(memberships.c.user_id).where(held))).first() is None:
                raise _not_a_member(project, user)
            await refuse_leaving_no_admin(conn, project_id, project, user_id, user)

    async def remove_member(
        self, project: str, user: str, *, actor: str, client: str | None = None
    ) -> None:
        """Remove a user from a project; their access keys there are deleted and stop working
        within a second (other processes cache key records for up to 1 s)."""
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            user_id = await require_user(conn, user)
            await refuse_leaving_no_admin(conn, project_id, project, user_id, user)
            result = await conn.execute(delete(memberships).where(_membership(project_id, user_id)))
            if result.rowcount == 0:
                raise _not_a_member(project, user)
            await self._delete_keys_without_role(conn, project_id, user_id, actor, client)
            ended = await _end_uploads_without_push(conn, project_id, user_id)
            await write_audit_entry(
                conn,
                actor,
                "member.remove",
                project_id=project_id,
                target=user,
                detail={"uploads_cancelled": len(ended)} if ended else None,
                client=client,
            )
        self._forget_access()
        await self._remove_scratch(ended)

    async def _delete_keys_without_role(
        self,
        conn: AsyncConnection,
        project_id: int,
        user_id: int,
        actor: str,
        client: str | None = None,
    ) -> None:
        if await has_role(conn, project_id, user_id):
            return
        is_admin = (
            await conn.execute(select(users.c.is_admin).where(users.c.id == user_id))
        ).scalar()
        if is_admin:
            return  # a server administrator's keys need no project role
        deleted = await conn.execute(
            delete(access_keys)
            .where(access_keys.c.project_id == project_id, access_keys.c.user_id == user_id)
            .returning(access_keys.c.id)
        )
        for key_id in deleted.scalars():
            await write_audit_entry(
                conn,
                actor,
                "key.delete",
                project_id=project_id,
                target=key_id,
                detail={"reason": "user left the project"},
                client=client,
            )

    async def list_members(self, project: str) -> list[Member]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            rows = await conn.execute(
                _holders(memberships).where(memberships.c.project_id == project_id)
            )
            return [Member.model_validate(r, from_attributes=True) for r in rows]

    async def grant(
        self,
        project: str,
        repository: str,
        user: str,
        role: str,
        *,
        actor: str,
        client: str | None = None,
    ) -> None:
        if role not in REPOSITORY_ROLES:
            raise InvalidValue(
                f"repository role must be one of {', '.join(REPOSITORY_ROLES)}", "role"
            )
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            repository_id = await require_repository(conn, project_id, project, repository)
            user_id = await require_user(conn, user)
            await _refuse_a_grant_that_adds_nothing(conn, project_id, project, user_id, user, role)
            await conn.execute(
                self.db.upsert(
                    repository_grants, ["repository_id", "user_id"], {"role": role}
                ).values(
                    repository_id=repository_id, user_id=user_id, role=role, created_at=utcnow()
                )
            )
            await write_audit_entry(
                conn,
                actor,
                "repository.grant",
                project_id=project_id,
                target=f"{repository}:{user}",
                detail={"role": role},
                client=client,
            )
        self.roles.forget()

    async def require_grant(self, project: str, repository: str, user: str) -> None:
        """Refuse as `revoke` would a user with no role on the repository (or a project,
        repository or user that does not exist): asked before a revoke is confirmed."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            repository_id = await require_repository(conn, project_id, project, repository)
            held = _grant(repository_id, await require_user(conn, user))
            if (
                await conn.execute(select(repository_grants.c.user_id).where(held))
            ).first() is None:
                raise _no_grant(project, repository, user)

    async def revoke(
        self,
        project: str,
        repository: str,
        user: str,
        *,
        actor: str,
        client: str | None = None,
    ) -> None:
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            repository_id = await require_repository(conn, project_id, project, repository)
            user_id = await require_user(conn, user)
            result = await conn.execute(
                delete(repository_grants).where(_grant(repository_id, user_id))
            )
            if result.rowcount == 0:
                raise _no_grant(project, repository, user)
            await self._delete_keys_without_role(conn, project_id, user_id, actor, client)
            ended = await _end_uploads_without_push(conn, project_id, user_id, repository_id)
            await write_audit_entry(
                conn,
                actor,
                "repository.revoke",
                project_id=project_id,
                target=f"{repository}:{user}",
                detail={"uploads_cancelled": len(ended)} if ended else None,
                client=client,
            )
        self._forget_access()
        await self._remove_scratch(ended)

    async def _remove_scratch(self, upload_ids: list[str]) -> None:
        """What the ended uploads stored (best effort: what stays is the abandoned-uploads
        job's, as scratch no upload names). A request still sending one stops on its own."""
        if self.store is None:
            return
        for upload_id in upload_ids:
            with contextlib.suppress(Exception):
                await self.store.delete_upload(upload_id)

    async def list_grants(self, project: str, repository: str) -> list[Grant]:
        """Users with a role on one repository (not through a project role)."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            repository_id = await require_repository(conn, project_id, project, repository)
            rows = await conn.execute(
                _holders(repository_grants).where(
                    repository_grants.c.repository_id == repository_id
                )
            )
            return [Grant.model_validate(r, from_attributes=True) for r in rows]

    async def repository_roles_of(
        self, user_id: int, *, project_id: int | None = None
    ) -> list[HeldRepositoryRole]:
        """The user's roles on single repositories (in one project, or in all), by project and
        repository: what they reach through the registry without a project role. Nothing of
        the project's other repositories."""
        # Correlated, one row each: the same order for both, so they name the same tag.
        newest = (
            select(tags.c.image, tags.c.name)
            .where(tags.c.repository_id == repositories.c.id)
            .order_by(tags.c.updated_at.desc(), tags.c.image, tags.c.name)
            .limit(1)
        )
        query = (
            select(
                projects.c.name.label("project"),
                repositories.c.name.label("repository"),
                repository_grants.c.role,
                newest.with_only_columns(tags.c.name).scalar_subquery().label("newest_tag"),
                newest.with_only_columns(tags.c.image).scalar_subquery().label("newest_tag_image"),
            )
            .join(repositories, repositories.c.id == repository_grants.c.repository_id)
            .join(projects, projects.c.id == repositories.c.project_id)
            .where(repository_grants.c.user_id == user_id)
            .order_by(projects.c.name, repositories.c.name)
        )
        if project_id is not None:
            query = query.where(repositories.c.project_id == project_id)
        async with self.db.read() as conn:
            rows = await conn.execute(query)
            return [HeldRepositoryRole.model_validate(r, from_attributes=True) for r in rows]


def _holders(roles: Any) -> Select[Any]:
    """Who holds a role in a table of roles (memberships or repository grants), by name."""
    return (
        select(users.c.name.label("user"), roles.c.role, roles.c.created_at.label("since"))
        .join(users, users.c.id == roles.c.user_id)
        .order_by(users.c.name)
    )


async def refuse_leaving_no_admin(
    conn: AsyncConnection, project_id: int, project: str, user_id: int, user: str
) -> None:
    """Refused when the user is the project's one admin, and so would leave it with none:
    nobody but a server administrator could manage it then (its members, webhooks, settings).
    Whoever asks, a server administrator too: another member is made admin first. A project
    with no admin at all (made by a server administrator) is not concerned."""
    admins = (
        await conn.execute(
            select(memberships.c.user_id)
            .where(
                memberships.c.project_id == project_id,
                memberships.c.role == ProjectRole.ADMIN,
            )
            # Two admins demoting each other at once on PostgreSQL: the second waits for the
            # first and then counts one admin. (SQLite has one writer at a time.)
            .with_for_update()
        )
    ).scalars()
    if list(admins) == [user_id]:
        raise StateRefusal(
            f"user {user!r} is the last admin of project {project!r}: a project keeps at "
            "least one admin; make another member admin first"
        )


async def _refuse_a_grant_that_adds_nothing(
    conn: AsyncConnection, project_id: int, project: str, user_id: int, user: str, role: str
) -> None:
    """A repository role the user's project role already covers would change nothing (and stay
    behind unseen if the project role went): refused, saying what the user has."""
    project_role = (
        await conn.execute(
            select(memberships.c.role).where(
                memberships.c.project_id == project_id, memberships.c.user_id == user_id
            )
        )
    ).scalar_one_or_none()
    if project_role is not None and roles_actions(project_role, role) == roles_actions(
        project_role, None
    ):
        raise Conflict(
            f"user {user!r} is {project_role} of project {project!r}, which already gives "
            f"what repository {role} would on every repository of it; change the project "
            "role instead"
        )


async def _end_uploads_without_push(
    conn: AsyncConnection, project_id: int, user_id: int, repository_id: int | None = None
) -> list[str]:
    """The IDs of the user's uploads in progress in the project (or in one of its
    repositories), ended (their rows deleted) where the user may no longer push now that a
    role is gone: nobody may go on with them, and they would hold the project's and the
    user's share of max_open_uploads until they expired."""
    is_admin = (await conn.execute(select(users.c.is_admin).where(users.c.id == user_id))).scalar()
    project_role = (
        await conn.execute(
            select(memberships.c.role).where(
                memberships.c.project_id == project_id, memberships.c.user_id == user_id
            )
        )
    ).scalar()
    if is_admin or Action.PUSH in roles_actions(project_role, None):
        return []
    pushable = select(repository_grants.c.repository_id).where(
        repository_grants.c.user_id == user_id,
        repository_grants.c.role.in_(
            [role for role in REPOSITORY_ROLES if Action.PUSH in roles_actions(None, role)]
        ),
    )
    in_project = select(repositories.c.id).where(repositories.c.project_id == project_id)
    ending = delete(uploads).where(
        uploads.c.started_by == user_id,
        uploads.c.repository_id.in_(in_project),
        uploads.c.repository_id.not_in(pushable),
    )
    if repository_id is not None:
        ending = ending.where(uploads.c.repository_id == repository_id)
    return list((await conn.execute(ending.returning(uploads.c.id))).scalars())
