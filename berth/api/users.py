"""Users: finding them (the member picker), creating them, resetting and changing passwords,
deleting them.

Server administrators manage users; project admins may search them to add members. Anyone
who signs in with a password changes their own (`PUT /account/password`); anyone lists their
own roles on single repositories (`GET /account/repository-roles`), which is all a user with
only such roles in a project may read of it. Server-wide changes
need the caller's password or console session: an access key (or an API token for one) works
only in its own project.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, model_validator

from berth.access.identify import SignInPath
from berth.access.permissions import RepositoryRole
from berth.access.policy import finds_users_to_add, lists_every_user
from berth.api.access import AuditEntry
from berth.api.bodies import RequestBody
from berth.api.deps import (
    SEARCH_BOUNDS,
    SEARCH_CHECK,
    CallerDep,
    Page,
    PagingDep,
    ServerManager,
    ServicesDep,
    SignedIn,
    UserName,
    password_principal,
)
from berth.api.problems import FieldError, responses
from berth.api.session import SESSION_RECORD_KEY
from berth.domain.errors import Denied, Unauthorized
from berth.domain.names import MAX_USER_NAME_LENGTH, USER_NAME_PATTERN, USER_NAME_RULE
from berth.services.members import HeldRepositoryRole
from berth.services.sessions import ConsoleSession
from berth.services.users import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from berth.state import Services

router = APIRouter(tags=["users"])

Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)]


class User(BaseModel):
    name: str
    admin: bool = Field(description="administers every project")
    service_account: bool = Field(description="a robot user: access keys only, no password")
    created_at: dt.datetime


class UserMatch(BaseModel):
    """What a project admin sees of a user they may add: not whether they administer the
    server."""

    name: str
    service_account: bool = Field(description="a robot user: access keys only, no password")


class NewUser(RequestBody):
    name: str = Field(
        pattern=USER_NAME_PATTERN,
        max_length=MAX_USER_NAME_LENGTH,
        description=USER_NAME_RULE,
    )
    password: Password | None = Field(None, description="required unless a service account")
    admin: bool = False
    service_account: bool = False

    @model_validator(mode="after")
    def _password_or_robot(self) -> NewUser:
        if self.service_account and self.password is not None:
            raise ValueError("a service account has no password: it uses access keys")
        if not self.service_account and self.password is None:
            raise ValueError("a user who signs in needs a password")
        return self


class PasswordReset(RequestBody):
    password: Password


class PasswordChange(RequestBody):
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: Password


@router.get("/users")
async def search_users(
    caller: CallerDep,
    services: ServicesDep,
    paging: PagingDep,
    query: Annotated[
        str,
        Query(max_length=64, description="part of the user name", json_schema_extra=SEARCH_BOUNDS),
        SEARCH_CHECK,
    ] = "",
) -> Page[User] | Page[UserMatch]:
    """A page of the users whose name contains `query`, by name, and how many match in all
    (`total`), as every listing is paged. Server administrators signed in with a password or
    the console may list every user; project admins choosing new members (and a server
    administrator's access key, which works only in its own project) name at least 3
    characters of a name (fewer find only the user of exactly that name) and see names and
    whether each is a service account."""
    principal = caller.principal
    if lists_every_user(principal):
        found, total = await services.identity.users.search_users(
            query, page=paging.page, per_page=paging.per_page
        )
        return Page[User].of([User.model_validate(u) for u in found], paging, total)
    roles = await services.identity.roles.project_roles(principal.user_id)
    admin_of = {p for p, role in roles.items() if role == "admin"}
    if not finds_users_to_add(principal, admin_of):
        raise Denied("finding users is for server administrators and project admins")
    matches, total = await services.identity.users.find_for_membership(
        query, page=paging.page, per_page=paging.per_page
    )
    return Page[UserMatch].of([UserMatch.model_validate(u) for u in matches], paging, total)


@router.post("/users", status_code=201, responses=responses(409))
async def create_user(caller: ServerManager, services: ServicesDep, body: NewUser) -> User:
    """Create a user or a service account (server administrators)."""
    created = await services.identity.users.create_user(
        body.name,
        body.password,
        is_admin=body.admin,
        service_account=body.service_account,
        actor=caller.user,
        client=caller.client,
    )
    return User.model_validate(created)


@router.put("/users/{user}/password", status_code=204, responses=responses(404))
async def reset_password(
    caller: ServerManager, services: ServicesDep, user: UserName, body: PasswordReset
) -> Response:
    """Set a user's password (server administrators): their console sessions end."""
    await services.identity.users.set_password(
        user, body.password, actor=caller.user, client=caller.client
    )
    return Response(status_code=204)


@router.delete("/users/{user}", status_code=204, responses=responses(404, 409))
async def delete_user(caller: ServerManager, services: ServicesDep, user: UserName) -> Response:
    """Delete a user (server administrators): their access keys and console sessions stop
    working within a second, their roles go; each project they were in audits it."""
    await services.identity.users.delete_user(user, actor=caller.user, client=caller.client)
    return Response(status_code=204)


@router.put("/account/password", status_code=204, responses=responses(429))
async def change_own_password(
    request: Request, caller: SignedIn, services: ServicesDep, body: PasswordChange
) -> Response:
    """Change your own password, giving the current one. Your other console sessions end;
    the one that made the change stays signed in."""
    user = caller.user
    try:
        await password_principal(
            services, request, user, body.current_password, SignInPath.PASSWORD_CHANGE
        )
    except Unauthorized:
        raise FieldError("current_password", "this is not your current password") from None
    session = request.scope.get(SESSION_RECORD_KEY)
    await services.identity.users.set_password(
        user,
        body.new_password,
        actor=user,
        keep_session=session.id if isinstance(session, ConsoleSession) else None,
        client=caller.client,
    )
    return Response(status_code=204)


class RepositoryRoleHeld(BaseModel):
    project: str
    repository: str
    role: RepositoryRole = Field(description="member: push and pull; viewer: pull")
    registry_address: str = Field(
        description="what `docker login` takes to reach the project's registry, as for projects"
    )
    image_prefix: str = Field(
        description="what the project's image names start with, as for projects"
    )
    address: str = Field(
        description="what the repository's images are named as in docker push and pull: "
        "`{address}[/{image}]:{tag}`"
    )
    newest_tagged_image: str | None = Field(
        description="the tag set most recently, as `docker pull` takes it "
        "(`{address}[/{image}]:{tag}`); null while the repository has no tag"
    )


async def _role_held(
    services: Services, request: Request, held: HeldRepositoryRole
) -> RepositoryRoleHeld:
    where = await services.pasted_registry_address(held.project, request.headers.get("host"))
    address = f"{where.prefix}/{held.repository}"
    newest = None
    if held.newest_tag is not None:
        image = f"{address}/{held.newest_tag_image}" if held.newest_tag_image else address
        newest = f"{image}:{held.newest_tag}"
    return RepositoryRoleHeld(
        project=held.project,
        repository=held.repository,
        role=held.role,
        registry_address=where.login,
        image_prefix=where.prefix,
        address=address,
        newest_tagged_image=newest,
    )


@router.get("/account/repository-roles", tags=["repository permissions"])
async def own_repository_roles(
    caller: CallerDep, services: ServicesDep, request: Request
) -> list[RepositoryRoleHeld]:
    """Your roles on single repositories, by project and repository, with the addresses docker
    names them by (project roles are in `GET /projects`); an access key (or a token for one)
    lists only those of its own project."""
    principal = caller.principal
    held = await services.identity.members.repository_roles_of(
        principal.user_id, project_id=principal.key_project_id
    )
    return [await _role_held(services, request, h) for h in held]


@router.get("/audit", tags=["audit"])
async def server_audit(
    caller: ServerManager, services: ServicesDep, paging: PagingDep
) -> Page[AuditEntry]:
    """The audit log outside any project, newest first: users created and deleted, passwords
    set, projects created and deleted (server administrators)."""
    entries, total = await services.identity.audit.server_entries(paging.per_page, paging.offset)
    return Page[AuditEntry].of([AuditEntry.model_validate(e) for e in entries], paging, total)
