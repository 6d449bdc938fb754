"""Docker token scopes: parsing what a client asks for (`repository:{name}:{action,...}`,
`registry:catalog:*`), granting the part the caller may have, and narrowing a token to its
holder's current rights when it is used."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from berth.access.permissions import EVERY_ACTION, Action
from berth.access.policy import Principal, can_list_catalog, requested_actions
from berth.domain.errors import Unsupported

CATALOG = ("registry", "catalog")
CATALOG_SCOPE = "registry:catalog:*"  # what a client asks a token for, to list the catalog
# Scopes one token request may name: docker asks for one to a few, buildx for a few more.
# Every scope granted is a claim in the token, so without a bound one request could have
# a token of hundreds of KB signed (and then sent with every request).
MAX_SCOPES_PER_REQUEST = 100
# The scope a refusal's challenge asks for, by the action that was missing.
_CHALLENGE_ACTIONS = {Action.PULL: "pull", Action.PUSH: "pull,push", Action.DELETE: "delete"}


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


def parse_scope(value: str) -> Scope | None:
    """Parse one scope; None for anything malformed (it is then simply not granted)."""
    kind, _, rest = value.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name or not actions:
        return None
    if kind == "repository(plugin)":
        kind = "repository"
    return Scope(kind, name, frozenset(a for a in actions.split(",") if a))


def parse_scopes(values: list[str]) -> list[Scope]:
    """Scopes from query parameters; each may itself hold several space-separated scopes.
    Scopes naming the same resource are merged into one (their actions together), in the
    order first named. More than MAX_SCOPES_PER_REQUEST named is refused."""
    parts = [part for value in values for part in value.split()]
    if len(parts) > MAX_SCOPES_PER_REQUEST:
        raise Unsupported(
            f"a token request may name at most {MAX_SCOPES_PER_REQUEST} scopes, not {len(parts)}",
            {"max": MAX_SCOPES_PER_REQUEST},
            status=400,
        )
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for part in parts:
        scope = parse_scope(part)
        if scope is not None:
            key = (scope.type, scope.name)
            merged[key] = merged.get(key, frozenset()) | scope.actions
    return [Scope(kind, name, actions) for (kind, name), actions in merged.items()]


# What the caller may do on the repository a scope names; None when there is no such
# repository (or project) to grant anything on.
ActionsOn = Callable[[str], Awaitable[frozenset[str] | None]]


async def grant(
    principal: Principal | None, scopes: list[Scope], actions_on: ActionsOn
) -> list[dict[str, Any]]:
    """A token's `access` claim: for each scope, the intersection of what was asked for and
    what the caller may do; scopes that grant nothing are left out."""
    access: list[dict[str, Any]] = []
    for scope in scopes:
        if (scope.type, scope.name) == CATALOG:
            if can_list_catalog(principal):
                access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
            continue
        if scope.type != "repository":
            continue
        allowed = await actions_on(scope.name)
        if allowed is None:
            continue
        granted = requested_actions(scope.actions) & allowed
        if granted:
            access.append({"type": "repository", "name": scope.name, "actions": sorted(granted)})
    return access


def scope_string(access: list[dict[str, Any]]) -> str:
    """The OAuth2 answer's `scope`: what was granted, space-separated."""
    return " ".join(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access)


def downscope(
    current: frozenset[str],
    token_access: Mapping[tuple[str, str], frozenset[str]] | None,
    repository: str,
) -> frozenset[str]:
    """What a request may do on `repository`: the caller's current rights, and with a token
    no more than it grants (a demotion applies to tokens already issued)."""
    if token_access is None:
        return current
    granted = token_access.get(("repository", repository), frozenset())
    if "*" in granted:
        granted = EVERY_ACTION
    return granted & current


def challenge_scope(repository: str, needed: frozenset[str]) -> str:
    """The scope a refusal tells the client to ask a token for."""
    return f"repository:{repository}:{_CHALLENGE_ACTIONS[Action(min(needed))]}"
