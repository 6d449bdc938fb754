"""What a client is told when it may not do something: the Bearer challenge that sends it to
the token endpoint, and a refusal that says why and what would help."""

from __future__ import annotations

from dataclasses import dataclass

from berth.access.permissions import Action
from berth.access.policy import Principal
from berth.domain.errors import Denied, RegistryError, Unauthorized

TOKEN_PATH = "/auth/token"
# The management API's challenges: it takes Basic credentials (an access key, or a user's
# password) or an API token, and has no token endpoint to send a client to.
API_BASIC_CHALLENGE = 'Basic realm="berth-api", charset="UTF-8"'
API_BEARER_CHALLENGE = 'Bearer realm="berth-api"'
API_REALM = f"{API_BASIC_CHALLENGE}, {API_BEARER_CHALLENGE}"


@dataclass(frozen=True, slots=True)
class Realm:
    """Where a client addressed the registry (the request's scheme and Host header): its
    token endpoint, and the token service (audience) it must ask for."""

    scheme: str
    host: str | None

    @property
    def service(self) -> str:
        """The token `service`: the host the client addressed, so a token issued for one
        project's host is worthless on another."""
        return self.host or "berth"

    def challenge(self, scope: str | None = None, error: str | None = None) -> str:
        realm = f"{self.scheme}://{self.host or 'localhost'}{TOKEN_PATH}"
        parts = [f'realm="{realm}"', f'service="{self.service}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def unauthorized(self, message: str, scope: str | None = None) -> RegistryError:
        """UNAUTHORIZED with the challenge that tells the client how to authenticate."""
        error = Unauthorized(message)
        error.headers["WWW-Authenticate"] = self.challenge(scope)
        return error


def api_unauthorized(message: str, *, offer_basic: bool = True) -> Unauthorized:
    """UNAUTHORIZED from the management API, offering both ways in; without Basic for a
    browser's script (the console, the API's documentation), on which a browser would put
    up its own password dialog."""
    error = Unauthorized(message)
    error.headers["WWW-Authenticate"] = API_REALM if offer_basic else API_BEARER_CHALLENGE
    return error


def refusal(
    realm: Realm,
    principal: Principal | None,
    has_token: bool,
    scope: str,
    needed: frozenset[str],
    allowed: frozenset[str],
    project_id: int | None = None,
    key_project: str | None = None,
    role: str | None = None,
) -> RegistryError:
    """The error for a caller who lacks `needed` on `scope`'s repository (`allowed`: what
    they may do there now); `role` says which role the caller has there (e.g. `reader in
    project 'demo'`)."""
    name = scope.split(":")[1]
    if principal is None:
        return realm.unauthorized(
            f"authentication required to {'/'.join(sorted(needed))} {name}", scope
        )
    if has_token and needed <= allowed:
        # The user may do this, but the token was not issued for it: ask for a fitting token.
        error = realm.unauthorized("the token does not grant this; request a new token", scope)
        error.headers["WWW-Authenticate"] += ',error="insufficient_scope"'
        return error
    wanted = (
        "push to" if Action.PUSH in needed else "delete from" if Action.DELETE in needed else "pull"
    )
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
