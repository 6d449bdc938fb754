"""The access policy: what a role allows on a repository. One function decides."""

from __future__ import annotations

from dataclasses import dataclass

PROJECT_ROLES = ("admin", "member", "reader")
REPOSITORY_ROLES = ("member", "viewer")

PULL = frozenset({"pull"})
PUSH = frozenset({"pull", "push"})
FULL = frozenset({"pull", "push", "delete"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user acting through one of their access keys (or anonymous = None)."""

    user_id: int
    user: str
    is_admin: bool
    key_id: str | None
    key_project_id: int | None  # an access key works only in its own project


def repository_actions(
    principal: Principal | None,
    *,
    project_id: int,
    public: bool,
    project_role: str | None,
    repository_role: str | None,
) -> frozenset[str]:
    """Actions `principal` may take on a repository of project `project_id`.

    Project admins and members (and server administrators) have every action; project readers
    and repository viewers pull; repository members push and pull. Public repositories can be
    pulled by anyone, signed in or not. An access key grants nothing outside its own project.
    """
    anyone = PULL if public else frozenset()
    if principal is None:
        return anyone
    if principal.key_project_id is not None and principal.key_project_id != project_id:
        return anyone
    if principal.is_admin or project_role in ("admin", "member"):
        return FULL
    if repository_role == "member":
        return PUSH
    if project_role == "reader" or repository_role == "viewer":
        return PULL
    return anyone


def can_manage_project(principal: Principal | None, project_role: str | None) -> bool:
    return principal is not None and (principal.is_admin or project_role in ("admin", "member"))
