"""The registry's door (`/v2` and the token endpoint): who is calling, from the request, and
whether they may do what a route needs. The rules are `berth.access`; this reads them off
Starlette requests and answers with the registry's challenge."""

from __future__ import annotations

from starlette.requests import Request

from berth.access.identify import Identified, Surface
from berth.access.permissions import Action
from berth.access.policy import Principal
from berth.access.refusals import TOKEN_PATH, Realm, refusal
from berth.access.scopes import CATALOG_SCOPE, challenge_scope, downscope
from berth.domain.errors import RegistryError, Unauthorized
from berth.domain.names import ImageName, hostname_of
from berth.domain.references import RepositoryRef
from berth.observability.requests import note
from berth.state import Services

__all__ = ["TOKEN_PATH", "Caller", "client_address", "identify", "service_name"]

# A registry caller: `token` is set for bearer callers, whose rights are what the token grants.
Caller = Identified


def realm(request: Request) -> Realm:
    # The scheme as `request.url` has it, without building the URL on every pull.
    return Realm(request.scope.get("scheme", "http"), request.headers.get("host"))


def service_name(request: Request) -> str:
    """The token `service` (audience): the host the client addressed."""
    return realm(request).service


def client_address(request: Request) -> str | None:
    client = request.scope.get("client")  # what `request.client` wraps
    return str(client[0]) if client else None


def challenge(request: Request, scope: str | None = None, error: str | None = None) -> str:
    return realm(request).challenge(scope, error)


async def identify(services: Services, request: Request) -> Caller:
    """The caller from the Authorization header; no header is an anonymous caller."""
    try:
        caller = await services.authenticator.identify(
            request.headers.get("authorization"),
            surface=Surface.REGISTRY,
            client=client_address(request),
            service=service_name(request),
        )
    except Unauthorized as exc:
        raise realm(request).unauthorized(exc.message) from None
    note_principal(request, caller.principal)
    return caller


def note_principal(request: Request, principal: Principal | None) -> None:
    """Name the caller in the request's log line: its access key ID, else its user name."""
    if principal is not None:
        note(request.scope, caller=principal.key_id or principal.user)


async def check_login_host(services: Services, request: Request, principal: Principal) -> None:
    """A sign-in on a project's host works only for that project: on a host that names no
    project, or with an access key of another project, it fails now, saying why, rather than
    at the first push or pull."""
    project = services.host_project(request.headers.get("host"))
    if project is None:
        return  # path style: the project is in each name
    project_id = await services.repositories.project_id(project)
    if project_id is None:
        raise Unauthorized(
            f"there is no project {project!r}: {hostname_of(request.headers['host'])} names a "
            "project that does not exist; check the host name"
        )
    if principal.key_project_id not in (None, project_id):
        key_project = await services.repositories.project_name(principal.key_project_id)
        raise Unauthorized(
            f"access key {principal.key_id} belongs to project {key_project!r}, not "
            f"{project!r}: sign in to "
            f"{services.registry_address(key_project or '', request.headers['host']).login} "
            f"with it, or create an access key in project {project!r}"
        )


def require_authenticated(request: Request, caller: Caller, scope: str | None = None) -> None:
    """Refuse an anonymous caller, with a challenge naming `scope` (what a token for this
    request must grant) when there is one."""
    if caller.principal is None:
        raise realm(request).unauthorized(
            "authentication required: docker login with an access key", scope
        )


async def allowed_actions(
    services: Services,
    caller: Caller,
    name: ImageName,
    project_id: int | None,
    repo: RepositoryRef | None,
) -> tuple[frozenset[str], frozenset[str]]:
    """(what the caller may do now, what this request's credentials allow): a token allows
    what it grants, but never more than its holder's current rights (role lookups are cached
    for a second)."""
    if project_id is None:
        return frozenset(), frozenset()
    current = await services.identity.roles.actions(caller.principal, project_id, repo)
    token_access = caller.token.access if caller.token is not None else None
    return current, downscope(current, token_access, name.display)


async def authorize(
    services: Services,
    request: Request,
    caller: Caller,
    name: ImageName,
    project_id: int | None,
    repo: RepositoryRef | None,
    needed: frozenset[Action],
) -> None:
    """Refuse a caller who may not do `needed` on the repository `name`, saying why."""
    current, allowed = await allowed_actions(services, caller, name, project_id, repo)
    if needed <= allowed:
        return
    key_project = role = None
    principal = caller.principal
    if principal is not None and principal.key_project_id not in (None, project_id):
        key_project = await services.repositories.project_name(principal.key_project_id)
    elif principal is not None and project_id is not None and current:
        role = await services.identity.roles.describe(
            principal, project_id, name.project, name.repository, repo
        )
    raise refusal(
        realm(request),
        principal,
        caller.token is not None,
        challenge_scope(name.display, needed),
        needed,
        current,
        project_id,
        key_project,
        role,
    )


def refuse_catalog(request: Request, caller: Caller) -> RegistryError:
    """A token not issued for the catalog: ask for one that is."""
    needed = frozenset({Action.PULL})
    return refusal(
        realm(request),
        caller.principal,
        caller.token is not None,
        CATALOG_SCOPE,
        needed,
        needed,
    )
