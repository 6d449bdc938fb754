"""Access: access keys, project members, repository permissions and the audit log.

Users manage their own access keys (anyone with a role in the project, repository roles
included); project admins also create keys for service accounts and may disable, enable or
delete any key in their project. Members and repository permissions are managed by project
admins; the audit log is theirs to read.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, field_validator

from berth.access.permissions import ProjectRole, RepositoryRole
from berth.access.policy import KeyOwner, can_manage_key, key_creation_refusal
from berth.api.bodies import RequestBody
from berth.api.deps import (
    AdminProject,
    AnyRoleProject,
    KeyId,
    Page,
    PagingDep,
    ProjectContext,
    ReadProject,
    RepositoryName,
    UserName,
)
from berth.api.problems import FieldError, responses
from berth.domain.errors import Denied, NameUnknown
from berth.domain.names import MAX_USER_NAME_LENGTH, USER_NAME_PATTERN
from berth.metadata.tables import utcnow
from berth.services.keys import AccessKey
from berth.services.members import Grant, Member

router = APIRouter(prefix="/projects/{project}", tags=["access"])


# ---------------------------------------------------------------- access keys


class NewAccessKey(RequestBody):
    user: str | None = Field(
        None,
        pattern=USER_NAME_PATTERN,
        max_length=MAX_USER_NAME_LENGTH,
        description="whose key: the caller (the default); project admins also name a service "
        "account, server administrators anyone; the owner needs a role in the project unless "
        "a server administrator",
    )
    expires_at: dt.datetime | None = Field(
        None,
        strict=False,
        description="when it stops working (UTC when no zone is given); a date alone "
        "(`2027-06-01`) is the end of that day, 23:59:59 UTC: the key works through that day, "
        "as with the CLI's `--expires` and the console; never when null",
    )

    @field_validator("expires_at", mode="before")
    @classmethod
    def _date_is_its_last_second(cls, value: object) -> object:
        if isinstance(value, str) and len(value) == len("YYYY-MM-DD"):
            try:
                day = dt.date.fromisoformat(value)
            except ValueError:
                return value  # the datetime's own parsing says what is wrong
            return dt.datetime.combine(day, dt.time(23, 59, 59), dt.UTC)
        return value

    @field_validator("expires_at")
    @classmethod
    def _in_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError("date out of range") from None


class CreatedAccessKey(BaseModel):
    access_key_id: str
    secret_access_key: str = Field(description="shown only now: it is stored as a hash")
    user: str
    project: str
    expires_at: dt.datetime | None


async def _key_in_project(ctx: ProjectContext, key_id: str) -> dict[str, Any]:
    owner = await ctx.services.identity.keys.key_owner(key_id)
    if owner is None or owner["project_id"] != ctx.project_id:
        raise NameUnknown(f"access key {key_id} does not exist in project {ctx.project!r}")
    if not can_manage_key(ctx.actor, owner["user"], ctx.is_project_admin):
        raise Denied(
            f"access key {key_id} belongs to {owner['user']!r}; users manage their own keys, "
            "project admins every key in the project"
        )
    return owner


async def _key(ctx: ProjectContext, key_id: str) -> AccessKey:
    for key in await ctx.services.identity.keys.list_keys(project=ctx.project):
        if key.access_key_id == key_id:
            return key
    raise NameUnknown(f"access key {key_id} does not exist in project {ctx.project!r}")


@router.get("/keys", tags=["access keys"], responses=responses(404))
async def list_keys(
    ctx: AnyRoleProject,
    user: Annotated[
        str | None, Query(pattern=USER_NAME_PATTERN, max_length=MAX_USER_NAME_LENGTH)
    ] = None,
) -> list[AccessKey]:
    """Access keys in the project (never their secrets): the caller's own, or, for project
    admins, everyone's (optionally one user's)."""
    if not ctx.is_project_admin:
        if user is not None and user != ctx.actor:
            raise Denied("only project admins see other users' access keys")
        user = ctx.actor
    return await ctx.services.identity.keys.list_keys(user=user, project=ctx.project)


@router.post("/keys", status_code=201, tags=["access keys"], responses=responses(404))
async def create_key(ctx: AnyRoleProject, body: NewAccessKey) -> CreatedAccessKey:
    """Create an access key: its secret is in this answer and never again. At most
    `max_access_keys` (2) per user per project."""
    owner = body.user or ctx.actor
    if owner != ctx.actor:
        # Only admins learn whether the user exists (they may search users anyway).
        target = await ctx.services.identity.users.get_user(owner) if ctx.is_project_admin else {}
        if target is None:
            raise NameUnknown(f"user {owner!r} does not exist")
        refusal = key_creation_refusal(
            ctx.actor,
            KeyOwner(owner, bool(target.get("service_account")), bool(target.get("admin"))),
            is_project_admin=ctx.is_project_admin,
            is_server_admin=ctx.is_server_admin,
        )
        if refusal is not None:
            raise Denied(refusal)
    if body.expires_at is not None and body.expires_at <= utcnow():
        raise FieldError("expires_at", "the expiry date must be in the future")
    created = await ctx.services.identity.keys.create_key(
        owner,
        ctx.project,
        expires_at=body.expires_at,
        actor=ctx.actor,
        client=ctx.caller.client,
    )
    return CreatedAccessKey.model_validate(created.as_dict())


@router.post("/keys/{key_id}/disable", tags=["access keys"], responses=responses(404))
async def disable_key(ctx: AnyRoleProject, key_id: KeyId) -> AccessKey:
    """Disable a key: it stops working within a second, and can be enabled again."""
    await _key_in_project(ctx, key_id)
    await ctx.services.identity.keys.set_key_disabled(
        key_id, True, actor=ctx.actor, client=ctx.caller.client
    )
    return await _key(ctx, key_id)


@router.post("/keys/{key_id}/enable", tags=["access keys"], responses=responses(404))
async def enable_key(ctx: AnyRoleProject, key_id: KeyId) -> AccessKey:
    await _key_in_project(ctx, key_id)
    await ctx.services.identity.keys.set_key_disabled(
        key_id, False, actor=ctx.actor, client=ctx.caller.client
    )
    return await _key(ctx, key_id)


@router.delete("/keys/{key_id}", status_code=204, tags=["access keys"], responses=responses(404))
async def delete_key(ctx: AnyRoleProject, key_id: KeyId) -> Response:
    await _key_in_project(ctx, key_id)
    await ctx.services.identity.keys.delete_key(key_id, actor=ctx.actor, client=ctx.caller.client)
    return Response(status_code=204)


# ---------------------------------------------------------------- members


class RoleRequest(RequestBody):
    role: ProjectRole = Field(strict=False)


class GrantRequest(RequestBody):
    role: RepositoryRole = Field(strict=False, description="member: push and pull; viewer: pull")


@router.get("/members", tags=["members"], responses=responses(404))
async def list_members(ctx: ReadProject) -> list[Member]:
    return await ctx.services.identity.members.list_members(ctx.project)


@router.put("/members/{user}", tags=["members"], responses=responses(404, 409))
async def set_member(ctx: AdminProject, user: UserName, body: RoleRequest) -> Member:
    """Add a user to the project, or change their role (project admins). The project's last
    admin is not demoted (409): a project that has admins keeps one; make another admin
    first."""
    await ctx.services.identity.members.add_member(
        ctx.project, user, body.role, actor=ctx.actor, client=ctx.caller.client
    )
    for member in await ctx.services.identity.members.list_members(ctx.project):
        if member.user == user:
            return member
    raise NameUnknown(f"user {user!r} is not a member of project {ctx.project!r}")


@router.delete("/members/{user}", status_code=204, tags=["members"], responses=responses(404, 409))
async def remove_member(ctx: AdminProject, user: UserName) -> Response:
    """Remove a user from the project; their access keys here stop working within a second.
    The project's last admin is not removed (409), as they are not demoted."""
    await ctx.services.identity.members.remove_member(
        ctx.project, user, actor=ctx.actor, client=ctx.caller.client
    )
    return Response(status_code=204)


@router.get(
    "/repositories/{repository}/grants", tags=["repository permissions"], responses=responses(404)
)
async def list_grants(ctx: ReadProject, repository: RepositoryName) -> list[Grant]:
    """Users outside the project with a role on this repository."""
    return await ctx.services.identity.members.list_grants(ctx.project, repository)


@router.put(
    "/repositories/{repository}/grants/{user}",
    tags=["repository permissions"],
    responses=responses(404, 409),
)
async def set_grant(
    ctx: AdminProject, repository: RepositoryName, user: UserName, body: GrantRequest
) -> Grant:
    """Give a user a role on one repository (project admins). 409 when the user's project role
    already gives as much."""
    await ctx.services.identity.members.grant(
        ctx.project, repository, user, body.role, actor=ctx.actor, client=ctx.caller.client
    )
    for grant in await ctx.services.identity.members.list_grants(ctx.project, repository):
        if grant.user == user:
            return grant
    raise NameUnknown(f"user {user!r} has no role on {ctx.project}/{repository}")


@router.delete(
    "/repositories/{repository}/grants/{user}",
    status_code=204,
    tags=["repository permissions"],
    responses=responses(404),
)
async def remove_grant(ctx: AdminProject, repository: RepositoryName, user: UserName) -> Response:
    await ctx.services.identity.members.revoke(
        ctx.project, repository, user, actor=ctx.actor, client=ctx.caller.client
    )
    return Response(status_code=204)


# ---------------------------------------------------------------- audit


class AuditEntry(BaseModel):
    at: dt.datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None
    client: str | None


@router.get("/audit", tags=["audit"], responses=responses(404))
async def audit(ctx: AdminProject, paging: PagingDep) -> Page[AuditEntry]:
    """The project's audit log, newest first: logins, keys, roles, repository changes, image
    and tag deletes and tag restores (project admins)."""
    audit_log = ctx.services.identity.audit
    entries = await audit_log.entries(ctx.project, paging.per_page, paging.offset)
    return Page[AuditEntry].of(
        [AuditEntry.model_validate(e) for e in entries], paging, await audit_log.count(ctx.project)
    )
