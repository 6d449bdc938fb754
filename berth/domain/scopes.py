"""Docker token scopes: `repository:{name}:{action,...}` and `registry:catalog:*`."""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = frozenset({"pull", "push", "delete", "*"})


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
    """Scopes from query parameters; each may itself hold several space-separated scopes."""
    scopes = []
    for value in values:
        for part in value.split():
            scope = parse_scope(part)
            if scope is not None:
                scopes.append(scope)
    return scopes
