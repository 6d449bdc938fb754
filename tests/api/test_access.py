"""Access keys, members, repository permissions and the audit log through the API."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import threading
from typing import Any

import httpx

from berth.state import Services
from tests.api.conftest import (
    PASSWORD,
    Credentials,
    Team,
    api,
    assert_problem,
    ok,
    push_image,
    services,
    until,
)


def keys_of(team: Team, actor: str, **params: Any) -> list[dict[str, Any]]:
    return ok(team[actor].get(team.url("/keys"), params=params))  # type: ignore[no-any-return]


def test_users_manage_their_own_keys(team: Team) -> None:
    member = team.users["member"]
    with api(team.server, (member, PASSWORD)) as person:
        # A person signed in with a password (as the console does) makes a key.
        answer = person.post(team.url("/keys"), json={"expires_at": "2099-01-01T00:00:00Z"})
        created = ok(answer, 201)
        # The secret is shown once: no cache between the browser and Berth keeps the answer.
        assert answer.headers["cache-control"] == "no-store"
        assert created["user"] == member and created["project"] == team.project
        assert created["access_key_id"].startswith("BK")
        assert len(created["secret_access_key"]) >= 40
        assert created["expires_at"].startswith("2099-01-01")
        mine = keys_of(team, "member")
        assert {k["access_key_id"] for k in mine} == {
            team.keys["member"][0],
            created["access_key_id"],
        }
        assert all(k["user"] == member for k in mine)
        assert created["secret_access_key"] not in str(mine)  # shown once, never listed
        # The new key works at once (docker login would say Login Succeeded).
        credentials = (created["access_key_id"], created["secret_access_key"])
        assert httpx.get(f"{team.server.url}/v2/", auth=credentials).status_code == 200

        # At most two keys per user per project.
        body = assert_problem(person.post(team.url("/keys"), json={}), 403, code="DENIED")
        assert "max_access_keys" in body["detail"]

        key_id = created["access_key_id"]
        disabled = ok(person.post(team.url(f"/keys/{key_id}/disable")))
        assert disabled["state"] == "disabled"
        assert until(
            lambda: httpx.get(f"{team.server.url}/v2/", auth=credentials).status_code == 401
        )
        assert ok(person.post(team.url(f"/keys/{key_id}/enable")))["state"] == "active"
        assert person.delete(team.url(f"/keys/{key_id}")).status_code == 204
        assert_problem(person.delete(team.url(f"/keys/{key_id}")), 404)
        assert_problem(person.post(team.url(f"/keys/{key_id}/enable")), 404)


def test_key_validation(shared_team: Team) -> None:
    team = shared_team
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    assert_problem(
        team["reader"].post(team.url("/keys"), json={"expires_at": past}),
        422,
        fields=("expires_at",),
    )
    assert_problem(
        team["reader"].post(team.url("/keys"), json={"expires_at": "next tuesday"}),
        422,
        fields=("expires_at",),
    )
    assert_problem(team["reader"].post(team.url("/keys/BKNOPE/disable")), 404)
    assert_problem(team["reader"].post(team.url("/keys/not-an-id!/disable")), 422)


def test_project_admins_manage_service_account_keys(team: Team) -> None:
    robot = team.users["robot"]
    created = ok(team["project-admin"].post(team.url("/keys"), json={"user": robot}), 201)
    assert created["user"] == robot
    entries = ok(team.admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
    [made] = [
        e
        for e in entries
        if e["action"] == "key.create" and e["target"] == created["access_key_id"]
    ]
    # Audited as who made it, from the address they called from.
    assert made["actor"] == team.users["project-admin"] and made["client"] == "127.0.0.1"
    # People make their own keys: a member cannot make one for the robot, an admin not for a
    # person.
    assert_problem(team["member"].post(team.url("/keys"), json={"user": robot}), 403)
    body = assert_problem(
        team["project-admin"].post(team.url("/keys"), json={"user": team.users["member"]}), 403
    )
    assert "not a service account" in body["detail"]
    assert_problem(
        team["project-admin"].post(team.url("/keys"), json={"user": "nobody-at-all"}), 404
    )
    # A service account that is a server administrator: a key of it would give a project
    # admin rights they lack (the project's quota, say). Only server administrators make one.
    operator_robot = f"ops-{team.project}"
    team.server.create_user(operator_robot, None, service_account=True, is_admin=True)
    body = assert_problem(
        team["project-admin"].post(team.url("/keys"), json={"user": operator_robot}), 403
    )
    assert "is a server administrator" in body["detail"]
    assert ok(team["admin"].post(team.url("/keys"), json={"user": operator_robot}), 201)

    # Admins see and manage every key in the project; others only their own.
    everyone = {k["user"] for k in keys_of(team, "project-admin")}
    assert {robot, team.users["member"], team.users["reader"]} <= everyone
    assert {k["user"] for k in keys_of(team, "project-admin", user=robot)} == {robot}
    assert {k["user"] for k in keys_of(team, "reader")} == {team.users["reader"]}
    assert_problem(team["reader"].get(team.url("/keys"), params={"user": robot}), 403)
    robot_key = created["access_key_id"]
    assert_problem(team["member"].post(team.url(f"/keys/{robot_key}/disable")), 403)
    assert_problem(team["member"].delete(team.url(f"/keys/{robot_key}")), 403)
    assert ok(team["project-admin"].post(team.url(f"/keys/{robot_key}/disable")))["state"] == (
        "disabled"
    )
    assert team["project-admin"].delete(team.url(f"/keys/{robot_key}")).status_code == 204

    # Someone with only a repository role manages their own keys too.
    outsider_keys = keys_of(team, "outsider")
    assert [k["user"] for k in outsider_keys] == [team.users["outsider"]]
    # A key of another project is not found here.
    assert_problem(
        team["project-admin"].post(team.url(f"/keys/{team.keys['stranger'][0]}/disable")), 404
    )


def test_members(team: Team) -> None:
    members = {m["user"]: m["role"] for m in ok(team["reader"].get(team.url("/members")))}
    assert members[team.users["member"]] == "member"
    assert members[team.users["reader"]] == "reader"

    stranger = team.users["stranger"]
    added = ok(team["project-admin"].put(team.url(f"/members/{stranger}"), json={"role": "reader"}))
    assert added["user"] == stranger and added["role"] == "reader"
    changed = ok(
        team["project-admin"].put(team.url(f"/members/{stranger}"), json={"role": "member"})
    )
    assert changed["role"] == "member"
    with api(team.server, (stranger, PASSWORD)) as person:
        assert ok(person.get(team.url()))["role"] == "member"
    assert team["project-admin"].delete(team.url(f"/members/{stranger}")).status_code == 204
    assert stranger not in {m["user"] for m in ok(team["reader"].get(team.url("/members")))}

    # Project admins only; clear errors.
    assert_problem(
        team["member"].put(team.url(f"/members/{stranger}"), json={"role": "admin"}), 403
    )
    assert_problem(team["member"].delete(team.url(f"/members/{team.users['reader']}")), 403)
    assert_problem(
        team["project-admin"].put(team.url(f"/members/{stranger}"), json={"role": "owner"}),
        422,
        fields=("role",),
    )
    assert_problem(
        team["project-admin"].put(team.url("/members/no-such-user"), json={"role": "reader"}),
        404,
    )
    assert_problem(team["project-admin"].delete(team.url(f"/members/{stranger}")), 404)
    assert_problem(team["outsider"].get(team.url("/members")), 403)


LAST_ADMIN = "a project keeps at least one admin; make another member admin first"


def roles_in(team: Team) -> dict[str, str]:
    return {m["user"]: m["role"] for m in ok(team.admin.get(team.url("/members")))}


def test_the_last_admin_is_neither_demoted_nor_removed(team: Team) -> None:
    """A project that has admins keeps one: its last admin demoting or removing themself, or a
    server administrator doing it, is refused (409) saying what to do first, and the role
    stays. Once another member is admin, either may go."""
    last, second = team.users["project-admin"], team.users["member"]
    path = team.url(f"/members/{last}")
    for actor in ("project-admin", "admin"):
        for role in ("member", "reader"):
            refused = assert_problem(team[actor].put(path, json={"role": role}), 409)
            assert LAST_ADMIN in refused["detail"] and last in refused["detail"], refused
        assert LAST_ADMIN in assert_problem(team[actor].delete(path), 409)["detail"]
    assert roles_in(team)[last] == "admin"
    assert ok(team["project-admin"].put(path, json={"role": "admin"}))["role"] == "admin"

    ok(team["project-admin"].put(team.url(f"/members/{second}"), json={"role": "admin"}))
    # Another admin demotes the first; the one left is then the last.
    assert ok(team["member"].put(path, json={"role": "reader"}))["role"] == "reader"
    assert_problem(team["member"].delete(team.url(f"/members/{second}")), 409)
    assert_problem(team.admin.put(team.url(f"/members/{second}"), json={"role": "member"}), 409)
    # With two admins again, an admin removes themself.
    ok(team["member"].put(path, json={"role": "admin"}))
    assert team["member"].delete(team.url(f"/members/{second}")).status_code == 204
    roles = roles_in(team)
    assert roles[last] == "admin" and second not in roles


def demote(team: Team, actor: str, whom: str, together: threading.Barrier) -> int:
    """`actor` makes `whom` a reader once the other party is ready too; the answer's status."""
    client = team[actor]
    together.wait()
    return client.put(team.url(f"/members/{whom}"), json={"role": "reader"}).status_code


def test_two_admins_demoting_each_other_at_once_leave_one(team: Team) -> None:
    """Each of two admins demotes the other at the same moment: one change is made, the other
    refused, never both (on PostgreSQL both counted two admins, and the project had none)."""
    first, second = team.users["project-admin"], team.users["member"]
    for _ in range(10):
        for person in (first, second):
            ok(team.admin.put(team.url(f"/members/{person}"), json={"role": "admin"}))
        together = threading.Barrier(2)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = [
                pool.submit(demote, team, "project-admin", second, together),
                pool.submit(demote, team, "member", first, together),
            ]
            statuses = sorted(answer.result() for answer in answers)
        roles = roles_in(team)
        assert statuses[0] == 200 and statuses[1] in (403, 409), statuses
        assert sorted([roles[first], roles[second]]) == ["admin", "reader"], roles


def test_a_project_without_admins_changes_members_freely(team: Team) -> None:
    """A project made by a server administrator has no admin until one is named: the rule
    that keeps one does not stop its members' changes."""
    project, person = f"{team.project}-bare", team.users["reader"]

    async def change(s: Services) -> list[str]:
        await s.repositories.create_project(project, actor="test")
        await s.identity.members.add_member(project, person, "member", actor="test")
        await s.identity.members.add_member(project, person, "reader", actor="test")
        await s.identity.members.remove_member(project, person, actor="test")
        return [m.user for m in await s.identity.members.list_members(project)]

    assert services(team.server, change) == []


def test_removing_a_member_ends_their_keys(team: Team) -> None:
    key = team.keys["reader"]
    assert httpx.get(f"{team.server.url}/v2/", auth=key).status_code == 200
    response = team["project-admin"].delete(team.url(f"/members/{team.users['reader']}"))
    assert response.status_code == 204
    assert until(lambda: httpx.get(f"{team.server.url}/v2/", auth=key).status_code == 401)


def test_repository_permissions(team: Team) -> None:
    grants = ok(team["reader"].get(team.repo_url("/grants")))
    assert [(g["user"], g["role"]) for g in grants] == [(team.users["outsider"], "member")]
    stranger = team.users["stranger"]
    granted = ok(
        team["project-admin"].put(team.repo_url(f"/grants/{stranger}"), json={"role": "viewer"})
    )
    assert granted == {**granted, "user": stranger, "role": "viewer"}
    assert {g["user"] for g in ok(team["reader"].get(team.repo_url("/grants")))} == {
        team.users["outsider"],
        stranger,
    }
    # The outsider (repository member) pushes with their key, but cannot manage.
    push_image(team.registry("outsider"), team.oci_name(), "from-outsider")
    assert_problem(
        team["outsider"].put(team.repo_url(f"/grants/{stranger}"), json={"role": "member"}), 403
    )
    assert_problem(
        team["member"].put(team.repo_url(f"/grants/{stranger}"), json={"role": "member"}), 403
    )
    assert_problem(
        team["project-admin"].put(team.repo_url(f"/grants/{stranger}"), json={"role": "admin"}),
        422,
        fields=("role",),
    )
    assert_problem(
        team["project-admin"].put(
            team.repo_url(f"/grants/{stranger}", "missing"), json={"role": "viewer"}
        ),
        404,
    )
    response = team["project-admin"].delete(team.repo_url(f"/grants/{stranger}"))
    assert response.status_code == 204
    assert_problem(team["project-admin"].delete(team.repo_url(f"/grants/{stranger}")), 404)


def test_a_repository_role_the_project_role_already_covers_is_refused(team: Team) -> None:
    """Granting a project member a repository role, or a project reader pull, would change
    nothing: 409 saying what they have. A reader may be given push on one repository."""
    admin = team["project-admin"]
    for actor, role in (("member", "member"), ("member", "viewer"), ("reader", "viewer")):
        refused = assert_problem(
            admin.put(team.repo_url(f"/grants/{team.users[actor]}"), json={"role": role}), 409
        )
        project_role = "reader" if actor == "reader" else "member"
        assert f"is {project_role} of project {team.project!r}" in refused["detail"], refused
    granted = ok(
        admin.put(team.repo_url(f"/grants/{team.users['reader']}"), json={"role": "member"})
    )
    assert granted["role"] == "member"
    push_image(team.registry("reader"), team.oci_name(), "from-a-reader-with-push")
    listed = {(g["user"], g["role"]) for g in ok(admin.get(team.repo_url("/grants")))}
    assert listed == {(team.users["outsider"], "member"), (team.users["reader"], "member")}


def test_audit_names_the_calling_user(team: Team) -> None:
    ok(
        team["project-admin"].put(
            team.url(f"/members/{team.users['stranger']}"), json={"role": "reader"}
        )
    )
    ok(team["member"].post(team.url("/repositories"), json={"name": "audited"}), 201)
    ok(team["member"].patch(team.repo_url(repository="audited"), json={"description": "d"}))
    assert team["member"].delete(team.repo_url(repository="audited")).status_code == 204
    key_id = team.keys["reader"][0]
    ok(team["reader"].post(team.url(f"/keys/{key_id}/disable")))

    wanted = {
        ("member.add", team.users["project-admin"]),
        ("repository.create", team.users["member"]),
        ("repository.update", team.users["member"]),
        ("repository.delete", team.users["member"]),
        ("key.disable", team.users["reader"]),
    }

    def seen() -> bool:
        entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
        return wanted <= {(e["action"], e["actor"]) for e in entries["items"]}

    assert until(seen)
    page = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 2}))
    assert len(page["items"]) == 2 and page["total"] >= 5
    # The audit log is for project admins.
    assert_problem(team["member"].get(team.url("/audit")), 403)
    assert_problem(team["reader"].get(team.url("/audit")), 401)  # their key is disabled now


def test_a_user_lists_only_their_own_repository_roles(team: Team) -> None:
    """A user with only repository roles reads their roles and where docker finds each
    repository, in every project, and nothing of the repositories they have no role on."""
    person = f"guest-{team.project[1:]}"
    other = team.project.replace("p", "q", 1)  # the team's second project

    async def give_roles(s: Services) -> Credentials:
        await s.identity.users.create_user(person, PASSWORD, actor="test")
        for project, repository, role in (
            (team.project, team.repository, "member"),
            (team.project, "lib", "viewer"),
            (other, "tools", "viewer"),
        ):
            if repository != team.repository:
                await s.repositories.create(project, repository, actor="test")
            await s.identity.members.grant(project, repository, person, role, actor="test")
        await s.repositories.create(team.project, "hidden", actor="test")
        created = await s.identity.keys.create_key(person, team.project, actor="test")
        return created.key_id, created.secret

    key = services(team.server, give_roles)
    registry = team.registry()
    push_image(registry, team.oci_name(), "v1")
    push_image(registry, team.oci_name("frontend"), "v2")  # the newest tag
    push_image(registry, team.oci_name(repository="hidden"), "secret-tag")

    address = team.server.address
    app = f"{address}/{team.project}/{team.repository}"
    with api(team.server, (person, PASSWORD)) as signed_in:
        held = ok(signed_in.get("/account/repository-roles"))
    assert held == [
        {
            "project": team.project,
            "repository": team.repository,
            "role": "member",
            "registry_address": address,
            "image_prefix": f"{address}/{team.project}",
            "address": app,
            "newest_tagged_image": f"{app}/frontend:v2",
        },
        {
            "project": team.project,
            "repository": "lib",
            "role": "viewer",
            "registry_address": address,
            "image_prefix": f"{address}/{team.project}",
            "address": f"{address}/{team.project}/lib",
            "newest_tagged_image": None,
        },
        {
            "project": other,
            "repository": "tools",
            "role": "viewer",
            "registry_address": address,
            "image_prefix": f"{address}/{other}",
            "address": f"{address}/{other}/tools",
            "newest_tagged_image": None,
        },
    ]
    assert "hidden" not in str(held) and "secret-tag" not in str(held)

    # An access key lists its own project's roles; the newest image pulls with it as named.
    with api(team.server, key) as with_key:
        assert [r["repository"] for r in ok(with_key.get("/account/repository-roles"))] == [
            team.repository,
            "lib",
        ]
    reference = held[0]["newest_tagged_image"].removeprefix(f"{address}/")
    name, tag = reference.rsplit(":", 1)
    pulled = httpx.get(f"{team.server.url}/v2/{name}/manifests/{tag}", auth=key)
    assert pulled.status_code == 200, pulled.text

    # Someone with no repository role lists none; nobody unsigned-in lists anything.
    assert ok(team["reader"].get("/account/repository-roles")) == []
    assert_problem(api(team.server).get("/account/repository-roles"), 401)
