"""The access policy as a table: every role, visibility and key → exactly which actions."""

from __future__ import annotations

import pytest

from berth.access.permissions import Action, ProjectAccess, ProjectRole, RepositoryRole
from berth.access.policy import (
    KeyOwner,
    Principal,
    can_list_catalog,
    can_manage_key,
    key_creation_refusal,
    project_access,
    repository_actions,
    sees_whole_project,
)

PROJECT = 1
OTHER_PROJECT = 2

# who: (server admin?, project role, repository role); a user may hold a project role and
# a role on one repository at once, so every pair is a row.
WHO = {
    "server-admin": (True, None, None),
    "project-admin": (False, "admin", None),
    "project-admin+repository-member": (False, "admin", "member"),
    "project-admin+repository-viewer": (False, "admin", "viewer"),
    "project-member": (False, "member", None),
    "project-member+repository-member": (False, "member", "member"),
    "project-member+repository-viewer": (False, "member", "viewer"),
    "project-reader": (False, "reader", None),
    "project-reader+repository-member": (False, "reader", "member"),
    "project-reader+repository-viewer": (False, "reader", "viewer"),
    "no-role": (False, None, None),
    "repository-member": (False, None, "member"),
    "repository-viewer": (False, None, "viewer"),
}

# who                             credentials  private repository   public repository
MATRIX = """
server-admin                      password     pull,push,delete     pull,push,delete
server-admin                      own-key      pull,push,delete     pull,push,delete
server-admin                      other-key    -                    pull
project-admin                     password     pull,push,delete     pull,push,delete
project-admin                     own-key      pull,push,delete     pull,push,delete
project-admin                     other-key    -                    pull
project-admin+repository-member   password     pull,push,delete     pull,push,delete
project-admin+repository-member   own-key      pull,push,delete     pull,push,delete
project-admin+repository-member   other-key    -                    pull
project-admin+repository-viewer   password     pull,push,delete     pull,push,delete
project-admin+repository-viewer   own-key      pull,push,delete     pull,push,delete
project-admin+repository-viewer   other-key    -                    pull
project-member                    password     pull,push,delete     pull,push,delete
project-member                    own-key      pull,push,delete     pull,push,delete
project-member                    other-key    -                    pull
project-member+repository-member  password     pull,push,delete     pull,push,delete
project-member+repository-member  own-key      pull,push,delete     pull,push,delete
project-member+repository-member  other-key    -                    pull
project-member+repository-viewer  password     pull,push,delete     pull,push,delete
project-member+repository-viewer  own-key      pull,push,delete     pull,push,delete
project-member+repository-viewer  other-key    -                    pull
project-reader                    password     pull                 pull
project-reader                    own-key      pull                 pull
project-reader                    other-key    -                    pull
project-reader+repository-member  password     pull,push            pull,push
project-reader+repository-member  own-key      pull,push            pull,push
project-reader+repository-member  other-key    -                    pull
project-reader+repository-viewer  password     pull                 pull
project-reader+repository-viewer  own-key      pull                 pull
project-reader+repository-viewer  other-key    -                    pull
no-role                           password     -                    pull
no-role                           own-key      -                    pull
no-role                           other-key    -                    pull
repository-member                 password     pull,push            pull,push
repository-member                 own-key      pull,push            pull,push
repository-member                 other-key    -                    pull
repository-viewer                 password     pull                 pull
repository-viewer                 own-key      pull                 pull
repository-viewer                 other-key    -                    pull
anonymous                         -            -                    pull
"""


def _actions(cell: str) -> frozenset[Action]:
    return frozenset() if cell == "-" else frozenset(Action(a) for a in cell.split(","))


def _principal(who: str, credentials: str) -> Principal | None:
    if who == "anonymous":
        return None
    is_admin = WHO[who][0]
    key_project = {"password": None, "own-key": PROJECT, "other-key": OTHER_PROJECT}[credentials]
    key_id = None if key_project is None else "BKTESTKEY"
    return Principal(7, who, is_admin, key_id, key_project)


ROWS = [line.split() for line in MATRIX.strip().splitlines()]


def test_the_matrix_covers_every_role_and_credential() -> None:
    covered = {(who, credentials) for who, credentials, _private, _public in ROWS}
    expected = {(w, c) for w in WHO for c in ("password", "own-key", "other-key")}
    assert covered == expected | {("anonymous", "-")}
    held = {(project, repository) for admin, project, repository in WHO.values() if not admin}
    assert held == {
        (project, repository)
        for project in (None, *ProjectRole)
        for repository in (None, *RepositoryRole)
    }


@pytest.mark.parametrize(("who", "credentials", "private", "public"), ROWS)
def test_repository_actions(who: str, credentials: str, private: str, public: str) -> None:
    principal = _principal(who, credentials)
    _admin, project_role, repository_role = WHO.get(who, (False, None, None))
    for is_public, expected in ((False, private), (True, public)):
        granted = repository_actions(
            principal,
            project_id=PROJECT,
            public=is_public,
            project_role=project_role,
            repository_role=repository_role,
        )
        assert granted == _actions(expected), (who, credentials, is_public)


# role in the project   what the management API lets them do there
LADDER = [
    (None, {ProjectAccess.ANY_ROLE}),  # repository roles only
    ("reader", {ProjectAccess.ANY_ROLE, ProjectAccess.READ}),
    ("member", {ProjectAccess.ANY_ROLE, ProjectAccess.READ, ProjectAccess.MANAGE}),
    (
        "admin",
        {
            ProjectAccess.ANY_ROLE,
            ProjectAccess.READ,
            ProjectAccess.MANAGE,
            ProjectAccess.ADMINISTER,
        },
    ),
]


@pytest.mark.parametrize(("role", "expected"), LADDER)
def test_project_access_ladder(role: str | None, expected: set[ProjectAccess]) -> None:
    assert project_access(Principal(1, "u", False, None, None), role) == expected


@pytest.mark.parametrize("role", [None, "reader", "member", "admin"])
def test_a_server_administrator_may_do_everything_in_a_project(role: str | None) -> None:
    assert project_access(Principal(1, "root", True, None, None), role) == set(ProjectAccess)


@pytest.mark.parametrize(
    ("actor", "owner", "is_project_admin", "allowed"),
    [
        ("alice", "alice", False, True),  # one's own key
        ("alice", "bob", False, False),  # someone else's
        ("alice", "bob", True, True),  # a project admin: any key in the project
        ("alice", "alice", True, True),
    ],
)
def test_who_may_manage_a_key(
    actor: str, owner: str, is_project_admin: bool, allowed: bool
) -> None:
    assert can_manage_key(actor, owner, is_project_admin) is allowed


ROBOT = KeyOwner("robot", service_account=True, server_admin=False)
OPERATOR_ROBOT = KeyOwner("ops", service_account=True, server_admin=True)
PERSON = KeyOwner("bob", service_account=False, server_admin=False)


@pytest.mark.parametrize(
    ("owner", "is_project_admin", "is_server_admin", "refused_because"),
    [
        (KeyOwner("alice", False, False), False, False, None),  # one's own
        (ROBOT, False, False, "users create their own access keys"),
        (ROBOT, True, False, None),  # a project admin: the project's robots
        (PERSON, True, False, "is not a service account"),
        # Its key would act in the project with rights the project admin lacks.
        (OPERATOR_ROBOT, True, False, "only server administrators create its access keys"),
        (OPERATOR_ROBOT, True, True, None),
        (PERSON, True, True, None),  # server administrators: anyone's
    ],
)
def test_who_may_create_a_key_for_whom(
    owner: KeyOwner, is_project_admin: bool, is_server_admin: bool, refused_because: str | None
) -> None:
    refusal = key_creation_refusal(
        "alice", owner, is_project_admin=is_project_admin, is_server_admin=is_server_admin
    )
    if refused_because is None:
        assert refusal is None
    else:
        assert refusal is not None and refused_because in refusal


def test_the_catalog_is_for_signed_in_callers() -> None:
    assert can_list_catalog(Principal(1, "u", False, None, None))
    assert not can_list_catalog(None)


@pytest.mark.parametrize(
    ("principal", "role", "sees"),
    [
        (None, None, False),
        (Principal(1, "u", False, None, None), "reader", True),
        (Principal(1, "u", False, None, None), None, False),  # repository roles only
        (Principal(1, "u", True, None, None), None, True),
        (Principal(1, "u", False, "BK", PROJECT), "member", True),
        (Principal(1, "u", True, "BK", OTHER_PROJECT), None, False),
    ],
)
def test_project_wide_standing(principal: Principal | None, role: str | None, sees: bool) -> None:
    assert sees_whole_project(principal, PROJECT, role) is sees
