"""Who is calling and may they: credentials from the Authorization header, checked against
the policy. The registry and the token endpoint both go through here."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from starlette.requests import Request

from berth.auth.policy import Principal
from berth.auth.tokens import InvalidToken, TokenClaims
from berth.domain.errors import Denied, RegistryError, Unauthorized
from berth.domain.names import hostname_of
from berth.services.identity import NOT_A_KEY, KeyNotUsable, may_be_key_id
from berth.state import Services

TOKEN_PATH = "/auth/token"


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal | None
    token: TokenClaims | None  # set for bearer callers: their rights are what the token grants


def service_name(request: Request) -> str:
    """The token `service` (audience): the host the client addressed, so a token issued for
    one project's host is worthless on another."""
    return request.headers.get("host") or "berth"


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def challenge(request: Request, scope: str | None = None, error: str | None = None) -> str:
    host = request.headers.get("host") or "localhost"
    realm = f"{request.url.scheme}://{host}{TOKEN_PATH}"
    parts = [f'realm="{realm}"', f'service="{service_name(request)}"']
    if scope:
        parts.append(f'scope="{scope}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


def basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep else None


async def authenticate_basic(
    services: Services, request: Request, key_id: str, secret: str
) -> Principal:
    """Check an access key, throttling failures per key and per client address."""
    client = client_address(request)
    if not may_be_key_id(key_id):
        # No key has this ID: refused at once, remembering nothing (not even in the throttle),
        # so a stream of made-up IDs costs no memory.
        services.throttle.check(None, client)
        raise Unauthorized(NOT_A_KEY)
    services.throttle.check(key_id, client)
    try:
        return await services.identity.authenticate_key(key_id, secret)
    except KeyNotUsable:
        raise
    except Unauthorized:
        services.throttle.failed(key_id, client)
        raise


async def identify(services: Services, request: Request) -> Caller:
    """The caller from the Authorization header; no header is an anonymous caller."""
    header = request.headers.get("authorization")
    if not header:
        return Caller(None, None)
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        try:
            claims = services.tokens.verify(value.strip(), service_name(request))
        except InvalidToken:
            raise _unauthorized(request, "the token is invalid or expired; log in again") from None
        if claims.key_id is None:
            return Caller(None, claims)  # an anonymous token: public pulls only
        if not await services.identity.key_is_active(claims.key_id):
            raise _unauthorized(request, "the access key behind this token no longer works")
        principal = await services.identity.principal_for_token(
            claims.user_id, claims.user, claims.key_id
        )
        return Caller(principal, claims)
    credentials = basic_credentials(header)
    if credentials is None:
        raise _unauthorized(request, "unsupported Authorization header; use Basic or Bearer")
    try:
        principal = await authenticate_basic(services, request, *credentials)
    except Unauthorized as exc:
        raise _unauthorized(request, exc.message) from None
    return Caller(principal, None)


def _unauthorized(request: Request, message: str, scope: str | None = None) -> RegistryError:
    error = Unauthorized(message)
    error.headers["WWW-Authenticate"] = challenge(request, scope)
    return error


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


def require_authenticated(request: Request, caller: Caller) -> None:
    if caller.principal is None:
        raise _unauthorized(request, "authentication required: docker login with an access key")


def refuse(
    request: Request,
    caller: Caller,
    scope: str,
    needed: frozenset[str],
    allowed: frozenset[str],
    project_id: int | None = None,
    key_project: str | None = None,
    role: str | None = None,
) -> RegistryError:
    """The error for a caller who lacks `needed` on `scope`'s repository; `role` says which
    role the caller has there (e.g. `reader in project 'demo'`)."""
    if caller.principal is None:
        return _unauthorized(
            request,
            f"authentication required to {'/'.join(sorted(needed))} {scope.split(':')[1]}",
            scope,
        )
    if caller.token is not None and needed <= allowed:
        # The user may do this, but the token was not issued for it: ask for a fitting token.
        error = _unauthorized(request, "the token does not grant this; request a new token", scope)
        error.headers["WWW-Authenticate"] += ',error="insufficient_scope"'
        return error
    name = scope.split(":")[1]
    principal = caller.principal
    wanted = "push to" if "push" in needed else "delete from" if "delete" in needed else "pull"
    if principal.key_id and principal.key_project_id != project_id:
        hint = (
            f": access key {principal.key_id} works only in project {key_project!r}; "
            "create an access key for this project"
        )
    elif role and allowed:
        may = " and ".join(sorted(allowed))
        hint = f": their role {role} may only {may}; ask a project admin for a role that may"
        hint += f" {wanted.split()[0]}"
    else:
        hint = "" if allowed else "; ask a project admin for a role"
    return Denied(
        f"user {principal.user!r} may not {wanted} {name}{hint}", {"granted": sorted(allowed)}
    )
