"""The actions a caller may take on a repository and the roles that grant them: one spelling,
used by the policy, the token endpoint, the registry routes and the management API."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """A registry action, as Docker token scopes name it (a `str`: `Action.PULL == "pull"`)."""

    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"


# What a role grants on a repository (pushing implies pulling, as clients expect).
PULL_ONLY = frozenset({Action.PULL})
PULL_PUSH = frozenset({Action.PULL, Action.PUSH})
EVERY_ACTION = frozenset(Action)
NO_ACTION: frozenset[Action] = frozenset()

# What a scope's `*` asks for.
WILDCARD = "*"


class ProjectRole(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    READER = "reader"


class RepositoryRole(StrEnum):
    MEMBER = "member"  # push and pull
    VIEWER = "viewer"  # pull


PROJECT_ROLES = tuple(role.value for role in ProjectRole)
REPOSITORY_ROLES = tuple(role.value for role in RepositoryRole)


class ProjectAccess(StrEnum):
    """What a management API route needs in the project named in its path."""

    ANY_ROLE = "any role"  # a project role or a role on one of its repositories
    READ = "read"  # project readers, members, admins; server administrators
    MANAGE = "manage"  # project members, admins; server administrators
    ADMINISTER = "administer"  # project admins; server administrators
    SERVER_ADMIN = "server admin"  # server administrators only
