"""What every management API router shares: who is calling, what they may do in a project,
path and paging parameters, and the page envelope.

Plugging a router in (`berth/api/gc.py`, `berth/api/usage.py`, ...): the module defines a
module-level `router = APIRouter(...)` whose paths start at the API root (`/api/v1` is the
mount point, so `/projects/{project}/gc` is served at `/api/v1/projects/{project}/gc`), and
its name is listed in `berth/api/app.py:ROUTER_MODULES`. Handlers take a context dependency
and call services; errors are raised as `RegistryError`s (or `FieldError` for one request
field) and become RFC 9457 problems:

    from berth.api.deps import ManageProject, ReadProject

    router = APIRouter(prefix="/projects/{project}/gc", tags=["garbage collection"])

    @router.post("/runs", status_code=202)
    async def start(ctx: ManageProject, body: StartRun) -> Run:
        return Run(**await ctx.services.gc.start(ctx.project, actor=ctx.actor, ...))

Authorization: each route names what it needs in the project of its path by the context it
takes, one per `berth.access.permissions.ProjectAccess` (the rules: `berth.access.policy.
project_access`): `ManageProject` (project members and admins, server administrators),
`ReadProject` (readers too), `AdminProject` (project admins: members and permissions),
`AnyRoleProject` (repository roles too: their own access keys), `ServerAdminProject`. Users
with only repository roles use the registry with their keys. An access key works only in its
own project, through every surface. Authorization is decided before existence: a caller
without a role learns nothing about a project.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Self, TypeVar

from fastapi import Depends, Path, Query, Request
from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from berth.access.credentials import KEY_ID_PATTERN
from berth.access.identify import SignInPath, Surface, Via
from berth.access.permissions import ProjectAccess
from berth.access.policy import Principal, project_access
from berth.access.refusals import api_unauthorized
from berth.auth.guard import client_address, note_principal
from berth.domain.descriptions import TEXT_PATTERN, search_problem
from berth.domain.digests import DIGEST_PATTERN, DIGEST_RULE
from berth.domain.errors import Denied, NameUnknown, Unauthorized
from berth.domain.names import (
    IMAGE_PATH_PATTERN,
    MAX_PROJECT_LENGTH,
    MAX_USER_NAME_LENGTH,
    PROJECT_NAME_PATTERN,
    REPOSITORY_NAME_PATTERN,
    TAG_PATTERN,
    USER_NAME_PATTERN,
)
from berth.domain.references import RepositoryRef
from berth.observability.requests import note
from berth.services.images import Images
from berth.state import Services

# ---------------------------------------------------------------- names in paths and queries

# Names' patterns are their grammars' own (berth.domain.names), as the services check them.


def follows(problem: Callable[[str], str | None]) -> AfterValidator:
    """A check of a text field whose refusal is `problem`'s message (its rule, in words), with
    the other fields' problems (a pattern's refusal cannot say what the field may hold)."""

    def check(value: str) -> str:
        message = problem(value)
        if message is not None:
            raise PydanticCustomError("rule", "{rule}", {"rule": message})
        return value

    return AfterValidator(check)


# A search refuses what a description refuses, saying which character. A route puts it after
# its Query (`Annotated[str, Query(..., json_schema_extra=SEARCH_BOUNDS), SEARCH_CHECK]`), so
# the Query's max_length is checked first, in its own words; the schema states the same rule.
SEARCH_CHECK = follows(search_problem)
SEARCH_BOUNDS: dict[str, Any] = {"pattern": TEXT_PATTERN}


ProjectName = Annotated[
    str,
    Path(pattern=PROJECT_NAME_PATTERN, max_length=MAX_PROJECT_LENGTH, description="project name"),
]
RepositoryName = Annotated[
    str, Path(pattern=REPOSITORY_NAME_PATTERN, max_length=128, description="repository name")
]
UserName = Annotated[
    str,
    Path(pattern=USER_NAME_PATTERN, max_length=MAX_USER_NAME_LENGTH, description="user name"),
]
KeyId = Annotated[str, Path(pattern=KEY_ID_PATTERN, description="access key ID")]
Digest = Annotated[str, Path(pattern=DIGEST_PATTERN, description=f"manifest digest: {DIGEST_RULE}")]
TagName = Annotated[str, Path(pattern=TAG_PATTERN, description="tag")]
ImageFilter = Annotated[
    str | None,
    Query(
        pattern=IMAGE_PATH_PATTERN,
        max_length=255,
        description="image name inside the repository (`` for the repository's own name)",
    ),
]
ImageName = Annotated[
    str,
    Query(
        pattern=IMAGE_PATH_PATTERN,
        max_length=255,
        description="image name inside the repository; empty (the default) when the image is "
        "the repository itself (`{project}/{repository}:tag`)",
    ),
]

# ---------------------------------------------------------------- services


def get_services(request: Request) -> Services:
    """The process's services (set on the API app's state when the server starts)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_images(services: ServicesDep) -> Images:
    return Images(services.db, services.store)


ImagesDep = Annotated[Images, Depends(get_images)]

# ---------------------------------------------------------------- who is calling

# The console's session plugs in here: the middleware in front of the API
# (`berth/api/session.py:ConsoleSessions`) that has checked the session cookie (and, for unsafe
# methods, the CSRF token) stores the signed-in user's Principal (key_id and key_project_id
# None) under this key of the ASGI scope.
SESSION_SCOPE_KEY = "berth.session_principal"


@dataclass(frozen=True, slots=True)
class ApiCaller:
    """An authenticated caller of the management API."""

    principal: Principal
    via: Via  # access_key | api_token | password | session
    client: str | None = None  # the address it came from, for the audit log

    @property
    def user(self) -> str:
        """The user name: what audit entries and image history record as the actor."""
        return self.principal.user


def unauthorized(request: Request, message: str) -> Unauthorized:
    """401 with the API's challenges; a request a browser's script sent (`Sec-Fetch-Mode`
    other than a navigation's) is not offered Basic, which would bring up the browser's own
    password dialog over the console."""
    from_script = request.headers.get("sec-fetch-mode", "navigate") != "navigate"
    return api_unauthorized(message, offer_basic=not from_script)


async def password_principal(
    services: Services, request: Request, user: str, password: str, through: SignInPath
) -> Principal:
    """The user with this name and password (401 when wrong, 429 while throttled)."""
    client = client_address(request)
    try:
        return await services.authenticator.login_password(user, password, client, through)
    except Unauthorized as exc:
        raise unauthorized(request, exc.message) from None


async def authenticate(request: Request, services: Services) -> ApiCaller | None:
    """The caller of an API request, or None when the request carries no credentials.

    In order: `Authorization: Bearer` with an API token; `Authorization: Basic` with an access
    key ID and secret, or with a user name and password; the console's session (see
    SESSION_SCOPE_KEY). Wrong credentials are UNAUTHORIZED (never silently anonymous).
    """
    client = client_address(request)
    session = request.scope.get(SESSION_SCOPE_KEY)
    try:
        identified = await services.authenticator.identify(
            request.headers.get("authorization"),
            surface=Surface.API,
            client=client,
            session=session if isinstance(session, Principal) else None,
        )
    except Unauthorized as exc:
        raise unauthorized(request, exc.message) from None
    if identified.principal is None:
        return None
    note_principal(request, identified.principal)
    return ApiCaller(identified.principal, identified.via, client)


async def current_caller(request: Request, services: ServicesDep) -> ApiCaller:
    """The authenticated caller; 401 without credentials."""
    caller = await authenticate(request, services)
    if caller is None:
        raise unauthorized(
            request,
            "authentication required: send an access key (Basic), an API token (Bearer) or "
            "sign in to the console",
        )
    return caller


CallerDep = Annotated[ApiCaller, Depends(current_caller)]


async def server_admin(caller: CallerDep) -> ApiCaller:
    if not caller.principal.is_admin:
        raise Denied(f"user {caller.user!r} is not a server administrator")
    return caller


ServerAdmin = Annotated[ApiCaller, Depends(server_admin)]


def _refuse_access_key(caller: ApiCaller) -> None:
    if caller.principal.key_project_id is not None:
        raise Denied(
            f"access key {caller.principal.key_id} works only in its own project; do this "
            "signed in with your password (or the web console), or with the CLI on the server"
        )


async def signed_in_caller(caller: CallerDep) -> ApiCaller:
    """A caller who signed in with a password or the console: server-wide things (users,
    projects, one's own password) are not for an access key, which works only in its own
    project."""
    _refuse_access_key(caller)
    return caller


SignedIn = Annotated[ApiCaller, Depends(signed_in_caller)]


async def server_manager(caller: ServerAdmin) -> ApiCaller:
    """A server administrator, signed in with a password or the console."""
    _refuse_access_key(caller)
    return caller


ServerManager = Annotated[ApiCaller, Depends(server_manager)]

# ---------------------------------------------------------------- what they may do in a project


@dataclass(frozen=True, slots=True)
class ProjectContext:
    """The caller's standing in the project named in the path."""

    caller: ApiCaller
    services: Services
    project: str
    project_id: int
    role: str | None  # admin | member | reader; None: a server admin, or repository roles only

    @property
    def actor(self) -> str:
        return self.caller.user

    @property
    def is_server_admin(self) -> bool:
        return self.caller.principal.is_admin

    @property
    def access(self) -> frozenset[ProjectAccess]:
        return project_access(self.caller.principal, self.role)

    @property
    def is_project_admin(self) -> bool:
        return ProjectAccess.ADMINISTER in self.access

    async def repository(self, name: str) -> RepositoryRef:
        """A repository of this project, or NAME_UNKNOWN (404)."""
        return await self.services.repositories.require(self.project, name)


async def project_context(
    request: Request, project: ProjectName, caller: CallerDep, services: ServicesDep
) -> ProjectContext:
    """Any role in the project (a project role or a role on one of its repositories)."""
    principal = caller.principal
    note(request.scope, project=project)
    project_id = await services.repositories.project_id(project)
    if principal.key_project_id is not None and principal.key_project_id != project_id:
        key_project = await services.repositories.project_name(principal.key_project_id)
        raise Denied(
            f"access key {principal.key_id} works only in project {key_project!r}; "
            f"use an access key for project {project!r}"
        )
    if project_id is None:
        if principal.is_admin:
            raise NameUnknown(f"project {project!r} does not exist")
        raise Denied(f"user {principal.user!r} has no role in project {project!r}")
    roles = services.identity.roles
    role = await roles.project_role(principal.user_id, project_id)
    if (
        role is None
        and not principal.is_admin
        and not await roles.has_any_role(principal.user_id, project_id)
    ):
        raise Denied(f"user {principal.user!r} has no role in project {project!r}")
    return ProjectContext(caller, services, project, project_id, role)


AnyRoleProject = Annotated[ProjectContext, Depends(project_context)]


def _requiring(ctx: ProjectContext, needed: ProjectAccess, refusal: str) -> ProjectContext:
    """The context when the caller has `needed` in its project; otherwise `refusal` (403)."""
    if needed not in ctx.access:
        raise Denied(refusal)
    return ctx


async def readable_project(ctx: AnyRoleProject) -> ProjectContext:
    """Project readers, members and admins, and server administrators."""
    return _requiring(
        ctx,
        ProjectAccess.READ,
        f"user {ctx.actor!r} has only repository roles in project {ctx.project!r}: they "
        "give registry access (docker, podman, ...), not the management API",
    )


ReadProject = Annotated[ProjectContext, Depends(readable_project)]


async def managed_project(ctx: ReadProject) -> ProjectContext:
    """Project members and admins, and server administrators."""
    return _requiring(
        ctx,
        ProjectAccess.MANAGE,
        f"user {ctx.actor!r} is a reader of project {ctx.project!r}; managing it needs "
        "the admin or member role",
    )


ManageProject = Annotated[ProjectContext, Depends(managed_project)]


async def administered_project(ctx: ReadProject) -> ProjectContext:
    """Project admins and server administrators."""
    return _requiring(
        ctx,
        ProjectAccess.ADMINISTER,
        f"user {ctx.actor!r} is a {ctx.role} of project {ctx.project!r}; this needs the "
        "project admin role",
    )


AdminProject = Annotated[ProjectContext, Depends(administered_project)]


async def server_admin_project(ctx: AnyRoleProject) -> ProjectContext:
    """Server administrators (with credentials valid in this project)."""
    return _requiring(
        ctx, ProjectAccess.SERVER_ADMIN, f"user {ctx.actor!r} is not a server administrator"
    )


ServerAdminProject = Annotated[ProjectContext, Depends(server_admin_project)]


async def server_managed_project(ctx: ServerAdminProject) -> ProjectContext:
    """Server administrators signed in with a password or the console (not an access key,
    even one of this project): for what reaches beyond the project, such as deleting it."""
    _refuse_access_key(ctx.caller)
    return ctx


ServerManagerProject = Annotated[ProjectContext, Depends(server_managed_project)]

# ---------------------------------------------------------------- paging

T = TypeVar("T")
MAX_PER_PAGE = 100


@dataclass(frozen=True, slots=True)
class Paging:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def paging(
    page: Annotated[int, Query(ge=1, le=100_000, description="page number, from 1")] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE, description="items per page")] = 20,
) -> Paging:
    return Paging(page, per_page)


PagingDep = Annotated[Paging, Depends(paging)]


class Page(BaseModel, Generic[T]):
    """One page of a listing."""

    items: list[T]
    page: int = Field(description="this page's number, from 1")
    per_page: int
    total: int = Field(description="items on every page together")

    @classmethod
    def of(cls, items: Sequence[T], paging: Paging, total: int) -> Self:
        """The page `paging` asked for, holding `items`, of `total` in all."""
        return cls(items=list(items), page=paging.page, per_page=paging.per_page, total=total)
