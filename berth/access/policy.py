"""The access policy, pure: what a caller may do, from their roles. Every surface asks here.

Repositories: project admins and members (and server administrators) have every action;
project readers and repository viewers pull; repository members push and pull. Public
repositories can be pulled by anyone, signed in or not. An access key grants nothing outside
its own project. The catalog lists only what a caller's own roles reach (`CatalogReach`),
not other projects' public repositories.

Projects (the management API): readers, members and admins read a project, members and
admins manage it, admins also manage its members and permissions; server administrators do
everything. Users with only repository roles use the registry and manage their own keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from berth.access.permissions import (
    EVERY_ACTION,
    NO_ACTION,
    PULL_ONLY,
    PULL_PUSH,
    WILDCARD,
    Action,
    ProjectAccess,
    ProjectRole,
    RepositoryRole,
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user acting through one of their access keys (or anonymous = None)."""

    user_id: int
    user: str
    is_admin: bool
    key_id: str | None
    key_project_id: int | None  # an access key works only in its own project


def key_works_in(principal: Principal, project_id: int | None) -> bool:
    """An access key works only in its own project; a password or session works everywhere."""
    return principal.key_project_id is None or principal.key_project_id == project_id


def repository_actions(
    principal: Principal | None,
    *,
    project_id: int,
    public: bool,
    project_role: str | None,
    repository_role: str | None,
) -> frozenset[Action]:
    """Actions `principal` may take on a repository of project `project_id`."""
    anyone = PULL_ONLY if public else NO_ACTION
    if principal is None or not key_works_in(principal, project_id):
        return anyone
    if principal.is_admin:
        return EVERY_ACTION
    return roles_actions(project_role, repository_role) or anyone


def roles_actions(project_role: str | None, repository_role: str | None) -> frozenset[Action]:
    """What a project role and a role on the repository give together (a user's own roles)."""
    if project_role in (ProjectRole.ADMIN, ProjectRole.MEMBER):
        return EVERY_ACTION
    if repository_role == RepositoryRole.MEMBER:
        return PULL_PUSH
    if project_role == ProjectRole.READER or repository_role == RepositoryRole.VIEWER:
        return PULL_ONLY
    return NO_ACTION


def sees_whole_project(principal: Principal | None, project_id: int, role: str | None) -> bool:
    """Project-wide standing (a project role, or a server administrator, with credentials
    valid in this project), as opposed to roles on single repositories: whether blobs of the
    whole project may be mounted and referenced."""
    if principal is None or not key_works_in(principal, project_id):
        return False
    return principal.is_admin or role is not None


def project_access(principal: Principal, role: str | None) -> frozenset[ProjectAccess]:
    """What a caller with some role in a project (`role`: their project role, None for a
    server administrator or for repository roles only) may do there through the API."""
    if principal.is_admin:
        return frozenset(ProjectAccess)
    granted = {ProjectAccess.ANY_ROLE}
    if role in (ProjectRole.ADMIN, ProjectRole.MEMBER, ProjectRole.READER):
        granted.add(ProjectAccess.READ)
    if role in (ProjectRole.ADMIN, ProjectRole.MEMBER):
        granted.add(ProjectAccess.MANAGE)
    if role == ProjectRole.ADMIN:
        granted.add(ProjectAccess.ADMINISTER)
    return frozenset(granted)


def can_manage_key(actor: str, key_owner: str, is_project_admin: bool) -> bool:
    """Users manage their own access keys; project admins every key in their project."""
    return key_owner == actor or is_project_admin


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """The user an access key is asked for, as the key policy sees them."""

    name: str
    service_account: bool
    server_admin: bool


def key_creation_refusal(
    actor: str, owner: KeyOwner, *, is_project_admin: bool, is_server_admin: bool
) -> str | None:
    """Why `actor` may not create an access key for `owner` in a project, or None. People
    make their own keys; project admins also service accounts' (their robots), but not a
    server administrator's: its key would act in the project with rights the admin lacks
    (the project's quota, say). Server administrators make anyone's."""
    if owner.name == actor or is_server_admin:
        return None
    if not is_project_admin:
        return "users create their own access keys; project admins also service accounts'"
    if not owner.service_account:
        return f"user {owner.name!r} is not a service account: people create their own access keys"
    if owner.server_admin:
        return (
            f"user {owner.name!r} is a server administrator: only server administrators create "
            "its access keys"
        )
    return None


def lists_every_user(principal: Principal) -> bool:
    """Server administrators list every user, signed in with a password or the console. An
    access key (or a token for one) works only in its own project, a server administrator's
    too: with it they find users as an admin of that project does (`finds_users_to_add`)."""
    return principal.is_admin and principal.key_project_id is None


def finds_users_to_add(principal: Principal, admin_of: set[int]) -> bool:
    """Whether a caller who does not list every user may find users to make members: an admin
    of a project (`admin_of`: where they are), of the access key's own project with a key,
    which a server administrator's key administers."""
    if principal.key_project_id is not None:
        return principal.is_admin or principal.key_project_id in admin_of
    return bool(admin_of)


def can_list_catalog(principal: Principal | None) -> bool:
    """The catalog is for signed-in callers (it then lists what `catalog_reach` says)."""
    return principal is not None


@dataclass(frozen=True, slots=True)
class CatalogReach:
    """The repositories the catalog lists to a signed-in caller: what their own standing
    reaches. A server administrator: every repository; anyone else: every repository of the
    projects they are a member of, and the repositories they have a role on. An access key
    narrows it to the key's project. Other projects' public repositories are pulled by name
    but not listed: one tenant's catalog does not enumerate another's."""

    user_id: int
    every_project: bool
    key_project_id: int | None  # set: nothing outside this project


def catalog_reach(principal: Principal) -> CatalogReach:
    return CatalogReach(principal.user_id, principal.is_admin, principal.key_project_id)


def requested_actions(actions: frozenset[str]) -> frozenset[str]:
    """What a scope's actions ask for: `*` is every action."""
    return EVERY_ACTION if WILDCARD in actions else actions
