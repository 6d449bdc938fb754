"""Projects: the ones the caller may see, one project, and its repository quota."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from berth.api.bodies import RequestBody
from berth.api.deps import (
    AdminProject,
    CallerDep,
    ProjectContext,
    ReadProject,
    ServerAdminProject,
    ServerManager,
    ServerManagerProject,
    ServicesDep,
)
from berth.api.problems import FieldError, responses
from berth.domain.errors import ConfirmationRequired
from berth.domain.names import PROJECT_NAME_PATTERN, PROJECT_NAME_RULE, project_name_problem
from berth.services.repository_listings import ProjectDetails
from berth.services.repository_quota import MAX_REPOSITORY_QUOTA
from berth.services.scanning.policy import POLICY_SEVERITIES, PullPolicySettings
from berth.state import Services

router = APIRouter(prefix="/projects", tags=["projects"])


class Project(BaseModel):
    name: str
    created_at: dt.datetime
    role: str | None = Field(
        description="the caller's project role (admin, member, reader); null for a server "
        "administrator who is not a member"
    )
    server_admin: bool = Field(description="the caller administers the whole server")
    can_manage: bool = Field(description="the caller may manage repositories and images")
    repositories: int = Field(description="repositories stored")
    repository_quota: int = Field(description="the most repositories the project may hold")
    quota_is_default: bool = Field(description="the quota is the server's default")
    registry_host: str = Field(
        description="the project's own host name, `{project}.{region}.{domain}` (without port)"
    )
    registry_address: str = Field(
        description="what `docker login` takes to reach this project's registry, with port: the "
        "project's host when the request came through a host under `{region}.{domain}`, else "
        "the host the request came to (path style); a project host under `.localhost` that "
        "the server's machine does not resolve (browsers resolve every `*.localhost` name, "
        "docker does not): `localhost` with that port (path style)"
    )
    image_prefix: str = Field(
        description="what this project's image names start with: `{registry_address}` (host "
        "style) or `{registry_address}/{project}` (path style), then `/{repository}/{image}:{tag}`"
    )


class NewProject(RequestBody):
    # Checked by the one project name grammar (berth.domain.names), which says what is wrong.
    # The document states the grammar too, for clients that check before they send.
    name: str = Field(
        max_length=255,
        description=PROJECT_NAME_RULE,
        json_schema_extra={"pattern": PROJECT_NAME_PATTERN},
    )


class QuotaUpdate(RequestBody):
    repository_quota: int | None = Field(
        ge=0,
        le=MAX_REPOSITORY_QUOTA,
        description="the most repositories the project may hold; null for the server default",
    )


async def _project(
    services: Services,
    request: Request,
    details: ProjectDetails,
    role: str | None,
    server_admin: bool,
) -> Project:
    address = await services.pasted_registry_address(details.name, request.headers.get("host"))
    return Project(
        name=details.name,
        created_at=details.created_at,
        role=role,
        server_admin=server_admin,
        can_manage=server_admin or role in ("admin", "member"),
        repositories=details.repositories,
        repository_quota=details.repository_quota,
        quota_is_default=details.quota_is_default,
        registry_host=details.name + services.settings.project_host_suffix,
        registry_address=address.login,
        image_prefix=address.prefix,
    )


async def _describe(ctx: ProjectContext, request: Request) -> Project:
    [details] = await ctx.services.repositories.project_details([ctx.project_id])
    return await _project(ctx.services, request, details, ctx.role, ctx.is_server_admin)


@router.get("")
async def list_projects(
    caller: CallerDep, services: ServicesDep, request: Request
) -> list[Project]:
    """Projects where the caller has a project role (every project for a server
    administrator); an access key (or a token for one) sees only its own project."""
    principal = caller.principal
    roles = await services.identity.roles.project_roles(principal.user_id)
    if principal.key_project_id is not None:
        ids: list[int] | None = [principal.key_project_id]
    elif principal.is_admin:
        ids = None
    else:
        ids = list(roles)
    found = await services.repositories.project_details(ids)
    return [
        await _project(services, request, details, roles.get(details.id), principal.is_admin)
        for details in found
        if principal.is_admin or details.id in roles
    ]


@router.get("/{project}", responses=responses(404))
async def show_project(ctx: ReadProject, request: Request) -> Project:
    """A project with the caller's role, its repository count and quota, and the address of
    its registry."""
    return await _describe(ctx, request)


@router.put("/{project}/quota", responses=responses(404))
async def set_quota(ctx: ServerAdminProject, body: QuotaUpdate, request: Request) -> Project:
    """Set the project's repository quota (server administrators); audited in the project's
    log as `project.quota`, with the quota before and after."""
    await ctx.services.repositories.set_quota(
        ctx.project, body.repository_quota, actor=ctx.actor, client=ctx.caller.client
    )
    return await _describe(ctx, request)


class PullPolicyUpdate(RequestBody):
    refuse_severity: Literal[POLICY_SEVERITIES] | None = Field(  # type: ignore[valid-type]
        description="refuse pulls (DENIED) of images whose scan found vulnerabilities of this "
        "severity or above (`unknown`: any finding at all); null turns the policy off"
    )


@router.get("/{project}/pull-policy", responses=responses(404))
async def pull_policy(ctx: ReadProject) -> PullPolicySettings:
    """The project's pull policy: `refuse_severity` null when it is off (the default). Images
    not scanned yet, being scanned, or whose scan failed are let through; an index is refused
    when its own scan or one of its platforms' has findings at or above the severity."""
    return await ctx.services.pull_policy.settings(ctx.project)


@router.put("/{project}/pull-policy", responses=responses(404))
async def set_pull_policy(ctx: AdminProject, body: PullPolicyUpdate) -> PullPolicySettings:
    """Turn the pull policy on at a severity, or off (project admins); audited as
    `project.pull_policy`. Pulls through this server see it at once, other servers within a
    second."""
    settings = await ctx.services.pull_policy.set(
        ctx.project, body.refuse_severity, ctx.actor, client=ctx.caller.client
    )
    ctx.services.repositories.forget_project(ctx.project)
    return settings


@router.post("", status_code=201, responses=responses(409))
async def create_project(
    caller: ServerManager, services: ServicesDep, body: NewProject, request: Request
) -> Project:
    """Create a project (server administrators); audited in the log outside projects as
    `project.create`."""
    problem = project_name_problem(body.name)
    if problem is not None:
        raise FieldError("name", problem)
    await services.repositories.create_project(body.name, actor=caller.user, client=caller.client)
    project_id = await services.repositories.project_id(body.name)
    [details] = await services.repositories.project_details([project_id or 0])
    return await _project(services, request, details, None, True)


@router.delete("/{project}", status_code=204, responses=responses(404, 409))
async def delete_project(
    ctx: ServerManagerProject,
    confirm: Annotated[
        str | None,
        Query(
            max_length=63,
            description="the project's name, required while it holds repositories",
        ),
    ] = None,
) -> Response:
    """Delete a project with its repositories, images, access keys, roles and audit log
    (server administrators). Refused while it holds repositories unless `confirm` repeats its
    name; blobs no other project uses are removed by the next garbage collection."""
    try:
        await ctx.services.repositories.delete_project(
            ctx.project,
            confirm=confirm,
            actor=ctx.actor,
            client=ctx.caller.client,
        )
    except ConfirmationRequired as refused:
        raise ConfirmationRequired(
            f"{refused.message} (here: ?confirm={ctx.project})", refused.detail
        ) from None
    return Response(status_code=204)
