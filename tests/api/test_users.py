"""Users through the API: create, find, reset and change passwords, delete; deleting a
project (SQLite and PostgreSQL, over real HTTP)."""

from __future__ import annotations

import json
import uuid
from contextlib import closing
from functools import partial
from typing import Any

import httpx
from sqlalchemy import select, update

from berth.metadata.tables import blobs, gc_runs, projects, repository_blobs
from berth.services.gc.recovery import lease_name
from berth.state import Services
from tests.api.conftest import (
    PASSWORD,
    Team,
    api,
    assert_problem,
    ok,
    push_image,
    services,
    until,
)
from tests.api.test_access import LAST_ADMIN, roles_in
from tests.api.test_auth import failed_logins_outside_projects
from tests.servers import ADMIN_PASSWORD, BerthServer

NEW_PASSWORD = "a-new-password-for-today"


def administrator(server: BerthServer) -> httpx.Client:
    """The server administrator, signed in with a password (not a project's access key)."""
    return api(server, ("admin", ADMIN_PASSWORD))


def sign_in(server: BerthServer, user: str, password: str) -> tuple[httpx.Client, Any]:
    client = api(server)
    response = client.post("/session", json={"user": user, "password": password})
    return client, response


def server_audit(server: BerthServer, action: str, target: str) -> list[dict[str, Any]]:
    """Audit entries outside any project (user administration, deleted projects)."""
    with administrator(server) as admin:
        entries = ok(admin.get("/audit", params={"per_page": 100}))["items"]
    return [e for e in entries if e["action"] == action and e["target"] == target]


def test_an_administrator_creates_a_user_and_resets_their_password(team: Team) -> None:
    name = "u" + uuid.uuid4().hex[:8]
    with administrator(team.server) as admin:
        created = ok(admin.post("/users", json={"name": name, "password": PASSWORD}), 201)
        assert created["name"] == name and created["admin"] is False
        assert_problem(admin.post("/users", json={"name": name, "password": PASSWORD}), 409)
        assert_problem(admin.post("/users", json={"name": "x" + name}), 422)
        assert_problem(
            admin.post("/users", json={"name": "y" + name, "password": "short"}),
            422,
            fields=("password",),
        )
        robot = ok(admin.post("/users", json={"name": "r" + name, "service_account": True}), 201)
        assert robot["service_account"] is True

        client, response = sign_in(team.server, name, PASSWORD)
        ok(response, 201)
        with closing(client):
            # The reset ends the user's sessions; the old password stops working.
            assert (
                admin.put(f"/users/{name}/password", json={"password": NEW_PASSWORD}).status_code
                == 204
            )
            assert_problem(client.get("/session"), 401)
        assert_problem(sign_in(team.server, name, PASSWORD)[1], 401)
        ok(sign_in(team.server, name, NEW_PASSWORD)[1], 201)
        assert_problem(
            admin.put("/users/nobody-here/password", json={"password": NEW_PASSWORD}), 404
        )
        assert_problem(admin.put(f"/users/r{name}/password", json={"password": NEW_PASSWORD}), 403)
    [reset] = until(lambda: server_audit(team.server, "user.password", name))
    assert reset["actor"] == "admin" and reset["detail"] == {"by": "administrator"}
    assert until(lambda: server_audit(team.server, "user.create", name))
    assert_problem(team.admin.get("/audit"), 403)  # a project's key sees only its project

    # Only server administrators, and not with a project's access key.
    assert_problem(team.admin.post("/users", json={"name": "z" + name, "password": PASSWORD}), 403)
    assert_problem(team["member"].put(f"/users/{name}/password", json={"password": PASSWORD}), 403)
    assert_problem(team["project-admin"].delete(f"/users/{name}"), 403)


def test_a_user_changes_their_own_password(team: Team) -> None:
    name = "c" + uuid.uuid4().hex[:8]
    team.server.create_user(name, PASSWORD)
    first, response = sign_in(team.server, name, PASSWORD)
    csrf = ok(response, 201)["csrf_token"]
    other, response = sign_in(team.server, name, PASSWORD)
    ok(response, 201)
    with closing(first), closing(other):
        wrong = first.put(
            "/account/password",
            json={"current_password": "not-my-password", "new_password": NEW_PASSWORD},
            headers={"X-CSRF-Token": csrf},
        )
        assert_problem(wrong, 422, fields=("current_password",))
        # Audited as a failed sign-in, saying where it was tried.
        failed = until(partial(failed_logins_outside_projects, team.server, name))
        assert [e["detail"]["through"] for e in failed] == ["password change"]
        changed = first.put(
            "/account/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers={"X-CSRF-Token": csrf},
        )
        assert changed.status_code == 204, changed.text
        # The session that changed it stays; the user's other session ends.
        assert ok(first.get("/session"))["user"] == name
        assert_problem(other.get("/session"), 401)
    assert_problem(sign_in(team.server, name, PASSWORD)[1], 401)
    ok(sign_in(team.server, name, NEW_PASSWORD)[1], 201)
    # With a password over Basic too; an access key cannot change it.
    with api(team.server, (name, NEW_PASSWORD)) as basic:
        back = basic.put(
            "/account/password",
            json={"current_password": NEW_PASSWORD, "new_password": PASSWORD},
        )
        assert back.status_code == 204, back.text
    refused = team["member"].put(
        "/account/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )
    assert_problem(refused, 403)


def test_deleting_a_user_stops_their_keys_and_sessions_at_once(team: Team) -> None:
    name = "d" + uuid.uuid4().hex[:8]
    team.server.create_user(name, PASSWORD)
    team.server.add_member(team.project, name, "member")
    key = team.server.access_key(team.project, name)
    session, response = sign_in(team.server, name, PASSWORD)
    ok(response, 201)
    with closing(session), api(team.server, key) as keyed, team.registry() as registry:
        ok(keyed.get(team.url()))
        ok(session.get(team.url()))
        scope = f"repository:{team.oci_name()}:pull"
        token = ok(registry.get("/auth/token", auth=key, params={"scope": scope}))["token"]
        pulled = httpx.get(
            team.server.url + f"/v2/{team.oci_name()}/tags/list",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert pulled.status_code == 200
        with administrator(team.server) as admin:
            assert admin.delete(f"/users/{name}").status_code == 204
            assert_problem(admin.delete(f"/users/{name}"), 404)
            assert_problem(admin.delete("/users/admin"), 403)  # not yourself
        assert_problem(session.get(team.url()), 401)
        assert_problem(keyed.get(team.url()), 401)
        tags = f"/v2/{team.oci_name()}/tags/list"
        assert registry.get(tags, auth=key).status_code == 401
        bearer = httpx.get(team.server.url + tags, headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 401
    assert name not in {m["user"] for m in ok(team.admin.get(team.url("/members")))}

    def audited() -> set[tuple[str, str]]:
        entries = ok(team.admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
        return {(e["action"], e["target"]) for e in entries if e["actor"] == "admin"}

    assert until(lambda: {("user.delete", name), ("key.delete", key[0])} <= audited())
    # Where it came from, as for every change an administrator makes over HTTP.
    [deleted] = server_audit(team.server, "user.delete", name)
    assert deleted["client"] == "127.0.0.1", deleted


def test_project_admins_find_users_to_add(team: Team) -> None:
    member = team.users["member"]
    found = ok(team["project-admin"].get("/users", params={"query": member[:-2]}))["items"]
    assert member in {u["name"] for u in found}
    nobody = ok(team["project-admin"].get("/users", params={"query": "no-such-user-x"}))
    assert nobody == {"items": [], "page": 1, "per_page": 20, "total": 0}
    assert_problem(team["member"].get("/users"), 403)
    assert_problem(team["reader"].get("/users", params={"query": "a"}), 403)


def test_a_project_admin_cannot_list_the_servers_users(team: Team) -> None:
    """Only server administrators list every user and see who administers the server; a
    project admin names 3 characters of a name, or all of a shorter one, and sees what adding
    a member needs: the name and whether it is a service account."""
    name = "bo"  # shorter than a search: found by its whole name only
    with administrator(team.server) as admin:
        created = admin.post("/users", json={"name": name, "password": PASSWORD})
        assert created.status_code in (201, 409), created.text
        [found] = ok(admin.get("/users", params={"query": team.users["member"]}))["items"]
        assert found["name"] == team.users["member"]
        assert {"name", "admin", "service_account", "created_at"} <= set(found)
        assert ok(admin.get("/users", params={"query": name}))["items"] != []
        assert ok(admin.get("/users", params={"query": "o"}))["total"] > 0
    project_admin = team["project-admin"]
    for query in ({}, {"query": ""}):
        problem = assert_problem(project_admin.get("/users", params=query), 422, fields=("query",))
        assert "at least 3 characters" in problem["detail"]
    assert ok(project_admin.get("/users", params={"query": "o"}))["items"] == []
    assert ok(project_admin.get("/users", params={"query": name})) == {
        "items": [{"name": name, "service_account": False}],
        "page": 1,
        "per_page": 20,
        "total": 1,
    }
    member = team.users["member"]
    assert {"name": member, "service_account": False} in ok(
        project_admin.get("/users", params={"query": member[:3].upper(), "per_page": 100})
    )["items"]


def test_a_server_administrators_access_key_does_not_list_the_servers_users(team: Team) -> None:
    """An access key works only in its own project, a server administrator's too: with it (or
    an API token for it) users are found as a project admin finds them, not listed with who
    administers the server (a key handed to CI listed every user of every tenant)."""
    member = team.users["member"]
    token = ok(team.admin.post("/auth/tokens"), 201)["token"]
    bearer = api(team.server, headers={"Authorization": f"Bearer {token}"})
    for keyed in (team.admin, bearer):
        for query in ({}, {"query": ""}):
            problem = assert_problem(keyed.get("/users", params=query), 422, fields=("query",))
            assert "at least 3 characters" in problem["detail"]
        found = ok(keyed.get("/users", params={"query": member, "per_page": 100}))["items"]
        assert found == [{"name": member, "service_account": False}]
        admins = ok(keyed.get("/users", params={"query": "admin", "per_page": 100}))["items"]
        assert {"name": "admin", "service_account": False} in admins
        assert all(set(user) == {"name", "service_account"} for user in admins)
    bearer.close()
    with administrator(team.server) as admin:  # signed in with the password: every user
        assert ok(admin.get("/users"))["total"] > 1
        [found] = ok(admin.get("/users", params={"query": member}))["items"]
        assert "admin" in found


def test_past_100_users_every_one_is_listed_a_page_at_a_time(team: Team) -> None:
    """`GET /users` is paged as every listing is (`items`, `page`, `per_page` up to 100,
    `total`): past 100 users, the next page holds the rest, and a search is paged too."""
    prefix = f"many-{uuid.uuid4().hex[:6]}-"
    names = [f"{prefix}{n:03}" for n in range(105)]

    async def create(s: Services) -> None:
        for name in names:
            await s.identity.users.create_user(name, None, service_account=True, actor="test")

    services(team.server, create)
    with administrator(team.server) as admin:
        first = ok(admin.get("/users"))
        total = first["total"]
        assert total > len(names)
        assert (first["page"], first["per_page"], len(first["items"])) == (1, 20, 20)
        listed: list[str] = []
        for page in range(1, (total + 99) // 100 + 1):
            answer = ok(admin.get("/users", params={"page": page, "per_page": 100}))
            assert (answer["page"], answer["per_page"], answer["total"]) == (page, 100, total)
            listed += [u["name"] for u in answer["items"]]
        assert len(set(listed)) == len(listed) == total  # none twice, none left out
        assert set(names) <= set(listed)

        def found(page: int, actor: httpx.Client = admin) -> list[str]:
            params: dict[str, str | int] = {"query": prefix, "page": page, "per_page": 100}
            answer = ok(actor.get("/users", params=params))
            assert answer["total"] == len(names), answer
            return [u["name"] for u in answer["items"]]

        assert found(1) == names[:100] and found(2) == names[100:] and found(3) == []
        # A project admin adding members pages through what a search finds the same way.
        assert found(2, team["project-admin"]) == names[100:]
        for refused in ({"per_page": 101}, {"per_page": 0}, {"page": 0}):
            field = f"query.{next(iter(refused))}"
            assert_problem(admin.get("/users", params=refused), 422, fields=(field,))


def test_deleting_a_project_needs_its_name_while_it_holds_repositories(team: Team) -> None:
    manifest = push_image(team.registry(), team.oci_name(), "v1")
    layer = json.loads(manifest.data)["layers"][0]["digest"]
    with administrator(team.server) as admin:
        refused = assert_problem(admin.delete(team.url()), 409)
        assert "confirm by typing the project's name" in refused["detail"]
        assert f"(here: ?confirm={team.project})" in refused["detail"]  # how, on the API
        assert_problem(admin.delete(team.url(), params={"confirm": "other"}), 409)
        assert_problem(team.admin.delete(team.url(), params={"confirm": team.project}), 403)
        assert_problem(team["project-admin"].delete(team.url()), 403)
        assert admin.delete(team.url(), params={"confirm": team.project}).status_code == 204
        assert_problem(admin.get(team.url()), 404)
        assert team.project not in {p["name"] for p in ok(admin.get("/projects"))}
        assert_problem(admin.delete(team.url()), 404)
    # Its keys stop; its blobs are left to garbage collection (no repository links them).
    assert_problem(team["member"].get(team.url()), 401)

    async def links(s: Services) -> tuple[int, int]:
        async with s.db.read() as conn:
            linked = await conn.execute(
                select(repository_blobs).where(repository_blobs.c.digest == layer)
            )
            stored = await conn.execute(select(blobs).where(blobs.c.digest == layer))
            return len(linked.all()), len(stored.all())

    assert services(team.server, links) == (0, 1)
    [deleted] = until(lambda: server_audit(team.server, "project.delete", team.project))
    assert deleted["actor"] == "admin" and deleted["detail"] == {"repositories": 1}


def test_an_empty_project_is_deleted_without_confirmation(server: BerthServer) -> None:
    project = "e" + uuid.uuid4().hex[:8]
    server.create_project(project)
    with administrator(server) as admin:
        assert admin.delete(f"/projects/{project}").status_code == 204
        assert_problem(admin.get(f"/projects/{project}"), 404)


def test_a_project_is_not_deleted_while_a_garbage_collection_runs_in_it(
    server: BerthServer,
) -> None:
    project = "g" + uuid.uuid4().hex[:8]
    server.create_project(project)

    async def collecting(s: Services, running: bool) -> None:
        async with s.db.write() as conn:
            project_id = (
                await conn.execute(select(projects.c.id).where(projects.c.name == project))
            ).scalar_one()
            if running:
                await conn.execute(
                    gc_runs.insert().values(project_id=project_id, state="running", actor="test")
                )
                # Held by this (live) process, as a real run's lease is, so the server's
                # recovery loop leaves the run alone however slowly the test goes on.
                await s.gc.recovery.leases.lock_in(conn, lease_name(project_id))
                await s.gc.recovery.leases.hold_in(conn, lease_name(project_id), 600)
            else:
                await conn.execute(
                    update(gc_runs)
                    .where(gc_runs.c.project_id == project_id)
                    .values(state="succeeded")
                )

    services(server, lambda s: collecting(s, True))
    with administrator(server) as admin:
        refused = assert_problem(admin.delete(f"/projects/{project}"), 409)
        assert "a garbage collection is running" in refused["detail"]
        # A refusal of the project's state, not something that exists: the CLI exits 1.
        cli = server.cli("project", "delete", project, "--yes", check=False)
        assert cli.returncode == 1, cli.stderr
        assert cli.stderr.startswith("error: a garbage collection is running"), cli.stderr
        ok(admin.get(f"/projects/{project}"))
        assert not server_audit(server, "project.delete", project)
        services(server, lambda s: collecting(s, False))
        assert admin.delete(f"/projects/{project}").status_code == 204
    [deleted] = server_audit(server, "project.delete", project)
    assert deleted["client"] == "127.0.0.1" and deleted["detail"] == {"repositories": 0}


def test_a_projects_last_admin_is_not_deleted_as_a_user(team: Team) -> None:
    """Deleting the user who is a project's last admin would leave it with none, as removing
    them from it would: refused (409) until another member is admin; nothing is deleted."""
    last, second = team.users["project-admin"], team.users["member"]
    with administrator(team.server) as admin:
        refused = assert_problem(admin.delete(f"/users/{last}"), 409)
        assert LAST_ADMIN in refused["detail"] and team.project in refused["detail"], refused
        assert roles_in(team)[last] == "admin"
        ok(team["project-admin"].put(team.url(f"/members/{second}"), json={"role": "admin"}))
        assert admin.delete(f"/users/{last}").status_code == 204
    roles = roles_in(team)
    assert last not in roles and roles[second] == "admin"
