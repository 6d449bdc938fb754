"""Repositories and projects through the API: create, list (paged, sorted, searched), show,
update, delete; the repository quota; who may do what."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import TypedDict

import httpx
import pytest

from berth.domain.names import hostname_of
from tests.api.conftest import Team, api, assert_problem, ok, push_image
from tests.clients.machine import HostsEntries
from tests.servers import ADMIN_PASSWORD, BerthServer


class Listed(TypedDict):
    """What the paging test reads of a repository in a listing."""

    name: str
    images: int


class RepositoryPage(TypedDict):
    """A page of GET /projects/{project}/repositories."""

    items: list[Listed]
    total: int
    page: int
    per_page: int


def test_create_show_update_delete(team: Team) -> None:
    created = ok(
        team["member"].post(
            team.url("/repositories"),
            json={
                "name": "web",
                "visibility": "public",
                "description": "the web tier",
                "tag_overwrite": False,
                "scan_mode": "auto",
            },
        ),
        201,
    )
    assert created == {
        **created,
        "project": team.project,
        "name": "web",
        "visibility": "public",
        "description": "the web tier",
        "tag_overwrite": False,
        "scan_mode": "auto",
        "images": 0,
    }
    shown = ok(team["reader"].get(team.repo_url(repository="web")))
    assert shown == created

    updated = ok(
        team["member"].patch(
            team.repo_url(repository="web"),
            json={"visibility": "private", "description": "", "tag_overwrite": True},
        )
    )
    assert updated["visibility"] == "private" and updated["description"] == ""
    assert updated["tag_overwrite"] is True and updated["scan_mode"] == "auto"
    assert updated["updated_at"] >= created["updated_at"]
    # The name is fixed once created; the same name is accepted.
    assert_problem(
        team["member"].patch(team.repo_url(repository="web"), json={"name": "other"}),
        422,
        fields=("name",),
    )
    ok(team["member"].patch(team.repo_url(repository="web"), json={"name": "web"}))

    # Delete takes the images with it.
    registry = team.registry()
    push_image(registry, team.oci_name(repository="web"), "v1")
    assert ok(team.admin.get(team.repo_url(repository="web")))["images"] == 1
    response = team["member"].delete(team.repo_url(repository="web"))
    assert response.status_code == 204
    assert_problem(team.admin.get(team.repo_url(repository="web")), 404, code="NAME_UNKNOWN")
    assert_problem(team.admin.delete(team.repo_url(repository="web")), 404)
    assert registry.get(f"/v2/{team.oci_name(repository='web')}/manifests/v1").status_code == 404


def test_defaults_and_location(team: Team) -> None:
    response = team.admin.post(team.url("/repositories"), json={"name": "plain"})
    created = ok(response, 201)
    assert response.headers["location"].endswith(f"/projects/{team.project}/repositories/plain")
    assert created["visibility"] == "private" and created["tag_overwrite"] is True
    assert created["scan_mode"] == "manual" and created["description"] == ""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "-leading"}, "name"),
        ({"name": "x" * 129}, "name"),
        ({}, "name"),
        ({"name": "ok", "description": "x" * 101}, "description"),
        ({"name": "ok", "description": "line\nbreak"}, "description"),
        ({"name": "ok", "visibility": "secret"}, "visibility"),
        ({"name": "ok", "scan_mode": "sometimes"}, "scan_mode"),
        ({"name": "ok", "tag_overwrite": "maybe"}, "tag_overwrite"),
        ({"name": "ok", "colour": "blue"}, "colour"),
    ],
)
def test_create_validation_names_the_field(
    shared_team: Team, body: dict[str, object], field: str
) -> None:
    team = shared_team
    body_ = assert_problem(
        team.admin.post(team.url("/repositories"), json=body), 422, fields=(field,)
    )
    assert body_["code"] == "VALIDATION_FAILED"


RULE = "a description is at most 100 characters, with no line breaks or control characters"


def test_a_refused_description_is_told_the_rule_with_the_other_fields(shared_team: Team) -> None:
    """API users learn what a description may hold, as the console says it, together with
    what else is wrong."""
    team = shared_team
    body = {"name": "Bad_Name", "description": "ring \u0007 the bell"}
    refused = assert_problem(team.admin.post(team.url("/repositories"), json=body), 422)
    assert {e["field"]: e["message"] for e in refused["errors"]} == {
        "name": "use lowercase letters and digits, with '.', '_', '__' or '-' between them",
        "description": f"{RULE}; this one has '\\x07'",
    }
    changes = {"description": "two\nlines"}
    refused = assert_problem(team.admin.patch(team.repo_url(), json=changes), 422)
    assert refused["errors"] == [{"field": "description", "message": f"{RULE}; this one has '\\n'"}]
    refused = assert_problem(
        team.admin.patch(team.repo_url(), json={"description": "é" * 101}), 422
    )
    assert refused["detail"] == f"description: {RULE}; this one has 101 characters"


def test_a_search_refuses_what_a_description_refuses_and_says_which(shared_team: Team) -> None:
    """Searching repositories or users for a control character or a line break (U+0085 and
    U+2028 too, and the bidirectional controls, as descriptions refuse them) is refused with
    the rule and the character; other text people type (a non-breaking space) is searched for."""
    team = shared_team
    rule = "a search has no line breaks or control characters"
    for text, quoted in [
        ("a\tb", "'\\t'"),
        ("a\u0085b", "'\\x85'"),
        ("a\u2028b", "'\\u2028'"),
        ("a\u2066b", "'\\u2066'"),  # a bidirectional isolate
    ]:
        repositories = team.admin.get(team.url("/repositories"), params={"q": text})
        users = team["project-admin"].get("/users", params={"query": text})
        for answer, field in ((repositories, "query.q"), (users, "query.query")):
            assert assert_problem(answer, 422)["errors"] == [
                {"field": field, "message": f"{rule}; this one has {quoted}"}
            ]
    assert ok(team.admin.get(team.url("/repositories"), params={"q": "a\u00a0b"}))["items"] == []
    too_long = team.admin.get(team.url("/repositories"), params={"q": "a" * 129})
    assert assert_problem(too_long, 422)["errors"] == [
        {"field": "query.q", "message": "String should have at most 128 characters"}
    ]


def test_malformed_bodies_and_parameters(team: Team) -> None:
    response = team.admin.post(
        team.url("/repositories"),
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 422, fields=("body",))
    assert_problem(
        team.admin.get(team.url("/repositories"), params={"per_page": 0}),
        422,
        fields=("query.per_page",),
    )
    assert_problem(
        team.admin.get(team.url("/repositories"), params={"sort": "colour"}),
        422,
        fields=("query.sort",),
    )
    assert_problem(team.admin.get("/projects/Not_A_Project"), 422, fields=("path.project",))
    assert_problem(
        team.admin.patch(team.repo_url(), json={"description": "x" * 101}),
        422,
        fields=("description",),
    )


def test_conflicts_and_unknowns(team: Team) -> None:
    body = assert_problem(
        team.admin.post(team.url("/repositories"), json={"name": team.repository}),
        409,
        code="CONFLICT",
    )
    assert "already exists" in body["detail"]
    assert_problem(team.admin.get(team.repo_url(repository="missing")), 404)
    assert_problem(team.admin.patch(team.repo_url(repository="missing"), json={}), 404)


def test_roles(team: Team) -> None:
    new = {"name": "by-reader"}
    for actor in ("reader",):
        body = assert_problem(team[actor].post(team.url("/repositories"), json=new), 403)
        assert "reader" in body["detail"]
        assert_problem(team[actor].patch(team.repo_url(), json={"description": "x"}), 403)
        assert_problem(team[actor].delete(team.repo_url()), 403)
        ok(team[actor].get(team.url("/repositories")))
    # A repository role gives registry access only.
    body = assert_problem(team["outsider"].get(team.url("/repositories")), 403)
    assert "repository roles" in body["detail"]
    assert_problem(team["outsider"].post(team.url("/repositories"), json=new), 403)
    assert_problem(team["stranger"].get(team.url("/repositories")), 403)
    ok(team["project-admin"].post(team.url("/repositories"), json={"name": "by-admin"}), 201)
    ok(team["robot"].post(team.url("/repositories"), json={"name": "by-robot"}), 201)


def test_paging_sorting_and_search(team: Team) -> None:
    names = ["alpha", "bravo", "charlie", "delta", "echo-1", "echo-2", "fox_trot"]
    for name in names:
        ok(team.admin.post(team.url("/repositories"), json={"name": name}), 201)
    everything = sorted([*names, team.repository])
    registry = team.registry()
    for count, name in enumerate(("charlie", "alpha", "alpha", "alpha", "charlie")):
        push_image(registry, team.oci_name(repository=name), f"t{count}")
        time.sleep(0.01)

    def page(**params: str | int) -> RepositoryPage:
        listed: RepositoryPage = ok(team["reader"].get(team.url("/repositories"), params=params))
        return listed

    first = page(per_page=3)
    assert [r["name"] for r in first["items"]] == everything[:3]
    assert first["total"] == len(everything) and first["page"] == 1 and first["per_page"] == 3
    third = page(per_page=3, page=3)
    assert [r["name"] for r in third["items"]] == everything[6:]
    assert page(per_page=3, page=9)["items"] == []
    assert [r["name"] for r in page(order="desc")["items"]] == everything[::-1]

    by_images = page(sort="images", order="desc", per_page=2)["items"]
    assert [(r["name"], r["images"]) for r in by_images] == [("alpha", 3), ("charlie", 2)]
    # Last modified: the latest push comes first.
    recent = page(sort="updated_at", order="desc", per_page=1)["items"][0]
    assert recent["name"] == "charlie"

    assert [r["name"] for r in page(q="echo")["items"]] == ["echo-1", "echo-2"]
    assert page(q="echo")["total"] == 2
    assert [r["name"] for r in page(q="_")["items"]] == ["fox_trot"]  # not a wildcard
    assert [r["name"] for r in page(q="%")["items"]] == []


def test_quota(team: Team, server: BerthServer) -> None:
    project = ok(team.admin.get(team.url()))
    assert project["repository_quota"] == 100 and project["quota_is_default"]
    assert project["repositories"] == 1

    # Only server administrators set quotas.
    assert_problem(team["project-admin"].put(team.url("/quota"), json={"repository_quota": 5}), 403)
    assert_problem(
        team.admin.put(team.url("/quota"), json={"repository_quota": -1}),
        422,
        fields=("repository_quota",),
    )
    updated = ok(team.admin.put(team.url("/quota"), json={"repository_quota": 2}))
    assert updated["repository_quota"] == 2 and not updated["quota_is_default"]

    ok(team["member"].post(team.url("/repositories"), json={"name": "second"}), 201)
    body = assert_problem(
        team["member"].post(team.url("/repositories"), json={"name": "third"}),
        403,
        code="QUOTA_EXCEEDED",
    )
    assert "quota" in body["detail"] and "2" in body["detail"]
    assert ok(team.admin.get(team.url()))["repositories"] == 2

    restored = ok(team.admin.put(team.url("/quota"), json={"repository_quota": None}))
    assert restored["quota_is_default"] and restored["repository_quota"] == 100
    ok(team["member"].post(team.url("/repositories"), json={"name": "third"}), 201)

    # Each change is in the project's log: who, from where, the quota before and after.
    entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
    changes = [e for e in entries["items"] if e["action"] == "project.quota"]
    assert [e["detail"] for e in changes] == [
        {"old": 2, "old_is_default": False, "new": 100, "new_is_default": True},
        {"old": 100, "old_is_default": True, "new": 2, "new_is_default": False},
    ]
    assert {(e["actor"], e["target"]) for e in changes} == {("admin", team.project)}
    assert all(e["client"] for e in changes)


@contextlib.contextmanager
def resolving(hostnames: list[str]) -> Iterator[None]:
    """These names resolve to 127.0.0.1 on this machine (an /etc/hosts line) meanwhile."""
    entries = HostsEntries(hostnames)
    entries.add()
    try:
        yield
    finally:
        entries.remove()


def test_a_localhost_project_host_this_machine_does_not_resolve_is_printed_as_localhost(
    team: Team,
) -> None:
    """A browser resolves every `*.localhost` name itself, docker and skopeo ask the system: a
    console opened on a project's `.localhost` host this machine does not resolve is given
    path style on `localhost` with the same port (the same loopback listener), which docker
    resolves; a name it does resolve keeps the project's own host."""
    port = team.server.port
    own_host = f"{team.project}.local.localhost:{port}"
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(hostname_of(own_host), None)
    for reached_at in (own_host, f"local.localhost:{port}"):
        shown = ok(team["reader"].get(team.url(), headers={"Host": reached_at}))
        assert (shown["registry_address"], shown["image_prefix"]) == (
            f"localhost:{port}",
            f"localhost:{port}/{team.project}",
        )
        [listed] = ok(team["reader"].get("/projects", headers={"Host": reached_at}))
        assert listed["registry_address"] == f"localhost:{port}"
    # The address printed works as printed: docker's resolver finds localhost, and the
    # registry serves path style on it.
    with httpx.Client(base_url=f"http://localhost:{port}") as registry:
        answer = registry.get(
            f"/v2/{team.project}/{team.repository}/tags/list", auth=team.keys["reader"]
        )
    assert answer.status_code == 200, answer.text


def test_projects(team: Team) -> None:
    listed = ok(team["reader"].get("/projects"))
    assert [(p["name"], p["role"], p["can_manage"]) for p in listed] == [
        (team.project, "reader", False)
    ]
    shown = ok(team["project-admin"].get(team.url()))
    assert shown["role"] == "admin" and shown["registry_host"] == f"{team.project}.local.localhost"
    # Where clients reach it, as the server routes it: path style on the address used here,
    # the project's own host (with the port) when reached under the region's domain.
    address = team.server.address
    assert (shown["registry_address"], shown["image_prefix"]) == (
        address,
        f"{address}/{team.project}",
    )
    # The project's host resolves here (as a domain's names do for its clients): its own.
    own_host = f"{team.project}.local.localhost:{team.server.port}"
    with resolving([hostname_of(own_host)]):
        for reached_at in (f"local.localhost:{team.server.port}", own_host.upper()):
            via_domain = ok(team["reader"].get(team.url(), headers={"Host": reached_at}))
            assert (via_domain["registry_address"], via_domain["image_prefix"]) == (
                own_host,
                own_host,
            )
    # Project creation is for server administrators signed in without a project key.
    assert_problem(team["project-admin"].post("/projects", json={"name": "nope"}), 403)
    assert_problem(team.admin.post("/projects", json={"name": "nope"}), 403)

    with api(team.server, ("admin", ADMIN_PASSWORD)) as admin:
        name = f"{team.project}-new"
        created = ok(admin.post("/projects", json={"name": name}), 201)
        assert created["name"] == name and created["repositories"] == 0
        assert created["server_admin"] and created["role"] is None
        assert_problem(admin.post("/projects", json={"name": name}), 409, code="CONFLICT")
        # Audited outside projects, once (the refused second create is not).
        audit = ok(admin.get("/audit", params={"per_page": 100}))["items"]
        [entry] = [e for e in audit if (e["action"], e["target"]) == ("project.create", name)]
        assert entry["actor"] == "admin" and entry["client"]
        assert_problem(admin.post("/projects", json={"name": "Bad"}), 422, fields=("name",))
        # A project name becomes a host name label: one readable message, never a pattern.
        for bad, why in [("my_proj", "'_'"), ("a.b", "'.'"), ("-x", "'-'"), ("a" * 64, "64")]:
            body = assert_problem(
                admin.post("/projects", json={"name": bad}), 422, fields=("name",)
            )
            [field_problem] = body["errors"]
            assert why in field_problem["message"]
            assert (
                "lowercase letters, digits and '-' (not first or last), at most 63"
                in (field_problem["message"])
            )
            assert "pattern" not in body["detail"] and "^" not in body["detail"]
        assert name in {p["name"] for p in ok(admin.get("/projects"))}
    # Nor any other name in a path or body: the rule in words, not the pattern.
    for response in (
        team.admin.get("/projects/Bad_Name"),
        team["member"].post(team.url("/repositories"), json={"name": "Bad Name"}),
    ):
        body = assert_problem(response, 422)
        assert "lowercase letters" in body["detail"], body
        assert "pattern" not in body["detail"] and "[a-z0-9]" not in body["detail"]
