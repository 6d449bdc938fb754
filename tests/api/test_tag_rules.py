"""Immutable tag rules over HTTP against a running server (SQLite and PostgreSQL): the rules'
API, and every way a tag can move or vanish (/v2 push and deletes, API deletes and restore)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from berth.metadata.tables import immutable_tag_rules, projects
from tests.api.conftest import Team, assert_problem, ok, push_image, services, until
from tests.oci import image_index, manifest_path


def add_rule(team: Team, tag_pattern: str, repository_pattern: str | None = None) -> Any:
    body: dict[str, str] = {"tag_pattern": tag_pattern}
    if repository_pattern is not None:
        body["repository_pattern"] = repository_pattern
    return ok(team["project-admin"].post(team.url("/immutable-tag-rules"), json=body), 201)


def digest_of_tag(registry: httpx.Client, name: str, tag: str) -> str:
    response = registry.head(manifest_path(name, tag))
    assert response.status_code == 200, response.text
    return response.headers["docker-content-digest"]


def oci_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    (error,) = response.json()["errors"]
    assert error["code"] == code, error
    message: str = error["message"]
    return message


def test_project_admins_make_and_remove_rules_that_readers_see(team: Team) -> None:
    created = add_rule(team, "v*", team.repository)
    assert created["tag_pattern"] == "v*"
    assert created["repository_pattern"] == team.repository
    assert created["created_by"] == team.users["project-admin"]
    everywhere = add_rule(team, "release-*")
    assert everywhere["repository_pattern"] is None

    listed = ok(team["reader"].get(team.url("/immutable-tag-rules")))
    assert [(r["id"], r["tag_pattern"]) for r in listed] == [
        (created["id"], "v*"),
        (everywhere["id"], "release-*"),
    ]
    rules = team.url("/immutable-tag-rules")
    for actor in ("member", "reader"):
        assert_problem(team[actor].post(rules, json={"tag_pattern": "x*"}), 403)
        assert_problem(team[actor].delete(f"{rules}/{created['id']}"), 403)
    assert_problem(team["stranger"].get(rules), 403)

    body = assert_problem(
        team["project-admin"].post(
            rules, json={"tag_pattern": "v*", "repository_pattern": team.repository}
        ),
        409,
        code="CONFLICT",
    )
    assert f"id {created['id']}" in body["detail"]
    for bad in ("", "v 1", "v/1", "[v", "v]*", "x" * 129):
        assert_problem(
            team["project-admin"].post(rules, json={"tag_pattern": bad}),
            422,
            fields=("tag_pattern",),
        )
    assert_problem(
        team["project-admin"].post(rules, json={"tag_pattern": "v*", "repository_pattern": "App"}),
        422,
        fields=("repository_pattern",),
    )

    assert ok(team["project-admin"].delete(f"{rules}/{everywhere['id']}"), 204) is None
    assert_problem(team["project-admin"].delete(f"{rules}/{everywhere['id']}"), 404)
    assert [r["id"] for r in ok(team["member"].get(rules))] == [created["id"]]

    def audited() -> bool:
        entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
        found = {(e["action"], e["target"]) for e in entries["items"]}
        return {
            ("immutable_tag_rule.create", "v*"),
            ("immutable_tag_rule.create", "release-*"),
            ("immutable_tag_rule.delete", "release-*"),
        } <= found

    assert until(audited)


def test_patterns_no_name_or_tag_can_match_are_refused_naming_the_field(team: Team) -> None:
    """No repository name starts with '/' or holds '..': such a rule would protect nothing."""
    rules = team.url("/immutable-tag-rules")
    admin = team["project-admin"]
    for pattern, why in (
        ("../beta/app", "what '.' matches"),
        ("/beta/app", "what '/' matches"),
        ("*/../../*", "what '*/.' matches"),
        ("app/", "no repository name ends as 'app/' does"),
    ):
        body = assert_problem(
            admin.post(rules, json={"tag_pattern": "v*", "repository_pattern": pattern}),
            422,
            fields=("repository_pattern",),
        )
        assert why in body["detail"] and "so it can match nothing" in body["detail"], body
    body = assert_problem(
        admin.post(rules, json={"tag_pattern": "-rc*"}), 422, fields=("tag_pattern",)
    )
    assert "no tag begins with what '-' matches" in body["detail"], body
    assert ok(team["reader"].get(rules)) == []


def test_a_rule_stored_before_the_check_still_loads(team: Team) -> None:
    """A rule saved before patterns no name can match were refused lists, and tags move
    around it as before (it covers nothing)."""

    async def store(s: Any) -> None:
        async with s.db.write() as conn:
            project_id = (
                await conn.execute(select(projects.c.id).where(projects.c.name == team.project))
            ).scalar_one()
            await conn.execute(
                immutable_tag_rules.insert().values(
                    project_id=project_id, tag_pattern="v*", repository_pattern="../beta/app"
                )
            )

    services(team.server, store)
    listed = ok(team["reader"].get(team.url("/immutable-tag-rules")))
    assert [(r["tag_pattern"], r["repository_pattern"]) for r in listed] == [("v*", "../beta/app")]
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "v1")
        assert registry.delete(manifest_path(team.oci_name(), "v1")).status_code == 202


def test_the_rules_are_in_the_openapi_document(team: Team) -> None:
    document = ok(team["reader"].get("/openapi.json"))
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/projects/{project}/immutable-tag-rules"])
    assert "delete" in paths["/projects/{project}/immutable-tag-rules/{rule_id}"]
    schemas = document["components"]["schemas"]
    assert {"tag_pattern", "repository_pattern"} <= set(schemas["TagRule"]["properties"])
    assert "tag_pattern" in schemas["NewTagRule"]["required"]


def test_a_protected_tag_cannot_move_or_go_through_v2(team: Team) -> None:
    name = team.oci_name()
    with team.registry("member") as registry:
        first = push_image(registry, name, "v1")
        add_rule(team, "v*", team.repository)
        message = f"tag v1 is immutable: rule 'v*' (repositories '{team.repository}')"

        # The same image again under the tag: nothing moves, so it is accepted.
        again = registry.put(
            manifest_path(name, "v1"),
            content=first.data,
            headers={"Content-Type": first.media_type},
        )
        assert again.status_code == 201, again.text

        other = push_image(registry, name, None)
        moved = registry.put(
            manifest_path(name, "v1"),
            content=other.data,
            headers={"Content-Type": other.media_type},
        )
        refusal = oci_error(moved, 403, "DENIED")
        assert refusal.startswith(message) and "moved to another image" in refusal

        refusal = oci_error(registry.delete(manifest_path(name, "v1")), 403, "DENIED")
        assert refusal.startswith(message) and "cannot be deleted" in refusal
        refusal = oci_error(registry.delete(manifest_path(name, first.digest)), 403, "DENIED")
        assert refusal.startswith(message)
        assert digest_of_tag(registry, name, "v1") == first.digest

        # Tags no rule matches move and go as before; a new protected tag is just a new tag.
        push_image(registry, name, "latest")
        push_manifest_as(registry, name, "latest", other)
        assert registry.delete(manifest_path(name, "latest")).status_code == 202
        push_manifest_as(registry, name, "v2", other)
        assert oci_error(registry.delete(manifest_path(name, "v2")), 403, "DENIED")


def push_manifest_as(registry: httpx.Client, name: str, tag: str, manifest: Any) -> None:
    response = registry.put(
        manifest_path(name, tag),
        content=manifest.data,
        headers={"Content-Type": manifest.media_type},
    )
    assert response.status_code == 201, response.text


def test_repository_patterns_pick_the_repositories_and_images(team: Team) -> None:
    add_rule(team, "release-*", f"{team.repository}/web*")
    with team.registry() as registry:
        web = team.oci_name("webapp")
        push_image(registry, web, "release-1")
        assert oci_error(registry.delete(manifest_path(web, "release-1")), 403, "DENIED")
        # Another image of the repository, and the repository's own name, are not covered.
        api_name = team.oci_name("api")
        push_image(registry, api_name, "release-1")
        assert registry.delete(manifest_path(api_name, "release-1")).status_code == 202
        push_image(registry, team.oci_name(), "release-1")
        assert registry.delete(manifest_path(team.oci_name(), "release-1")).status_code == 202


def test_api_deletes_are_refused_with_a_conflict_naming_the_rule(team: Team) -> None:
    with team.registry() as registry:
        kept = push_image(registry, team.oci_name(), "v1")
        removed = push_image(registry, team.oci_name(), "v2")
    member = team["member"]
    assert ok(member.delete(team.repo_url("/tags/v2")), 204) is None
    rule = add_rule(team, "v*")

    body = assert_problem(member.delete(team.repo_url("/tags/v1")), 409, code="DENIED")
    assert body["detail"].startswith("tag v1 is immutable: rule 'v*';")
    body = assert_problem(member.delete(team.repo_url(f"/images/{kept.digest}")), 409)
    assert "rule 'v*'" in body["detail"]

    # Restoring a removed tag puts it back where it was: it moves nothing, so it is allowed,
    # and from then on the rule holds it.
    restored = ok(member.post(team.repo_url("/tags/restore"), json={"tag": "v2"}))
    assert restored["digest"] == removed.digest
    assert_problem(member.delete(team.repo_url("/tags/v2")), 409)

    ok(team["project-admin"].delete(team.url(f"/immutable-tag-rules/{rule['id']}")), 204)
    assert ok(member.delete(team.repo_url("/tags/v1")), 204) is None
    assert ok(member.delete(team.repo_url(f"/images/{removed.digest}")), 204) is None


def test_listings_say_which_tags_a_rule_protects(team: Team) -> None:
    """The tag and image listings name the rule that keeps a tag, so a client (the console)
    offers no delete the server would refuse; the first matching rule, as refusals name it."""
    with team.registry() as registry:
        release = push_image(registry, team.oci_name(), "v1")
        push_manifest_as(registry, team.oci_name(), "latest", release)
        web = push_image(registry, team.oci_name("web"), "v1")
        loose = push_image(registry, team.oci_name(), "dev")
    rule = add_rule(team, "v*", team.repository)
    add_rule(team, "v1")  # matches the same tags: the first rule is the one named
    reader = team["reader"]
    first = {"id": rule["id"], "tag_pattern": "v*", "repository_pattern": team.repository}

    tags = ok(reader.get(team.repo_url("/tags")))["items"]
    assert {(t["image"], t["tag"]): t["protected_by"] for t in tags} == {
        ("", "dev"): None,
        ("", "latest"): None,
        ("", "v1"): first,
        ("web", "v1"): first,
    }
    images = ok(reader.get(team.repo_url("/images")))["items"]
    protected = {i["digest"]: i["protected_tags"] for i in images}
    assert protected == {
        release.digest: [{"tag": "v1", "protected_by": first}],
        web.digest: [{"tag": "v1", "protected_by": first}],
        loose.digest: [],
    }
    detail = ok(reader.get(team.repo_url(f"/images/{release.digest}")))
    assert detail["protected_tags"] == [{"tag": "v1", "protected_by": first}]

    # Without the rules nothing is protected any more.
    for made in ok(team["project-admin"].get(team.url("/immutable-tag-rules"))):
        ok(team["project-admin"].delete(team.url(f"/immutable-tag-rules/{made['id']}")), 204)
    tags = ok(reader.get(team.repo_url("/tags")))["items"]
    assert [t["protected_by"] for t in tags] == [None] * 4
    images = ok(reader.get(team.repo_url("/images")))["items"]
    assert [i["protected_tags"] for i in images] == [[]] * 3


def test_the_protection_fields_are_in_the_openapi_document(team: Team) -> None:
    schemas = ok(team["reader"].get("/openapi.json"))["components"]["schemas"]
    assert "protected_by" in schemas["Tag"]["properties"]
    assert "protected_tags" in schemas["Image"]["properties"]
    assert {"id", "tag_pattern", "repository_pattern"} <= set(
        schemas["ProtectingRule"]["properties"]
    )


def test_the_tag_overwrite_switch_still_fixes_every_tag(team: Team) -> None:
    """The switch and the rules sit side by side: off, every tag of the repository is fixed."""
    admin = team["project-admin"]
    ok(admin.patch(team.repo_url(), json={"tag_overwrite": False}))
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "anything")
        other = push_image(registry, team.oci_name(), None)
        moved = registry.put(
            manifest_path(team.oci_name(), "anything"),
            content=other.data,
            headers={"Content-Type": other.media_type},
        )
        assert "tag overwrite is disabled" in oci_error(moved, 403, "DENIED")


def test_with_tag_overwrite_off_no_tag_is_deleted_and_pushed_elsewhere(team: Team) -> None:
    """Off, the switch fixes every tag as a rule would: a delete and a push must not move it
    either, on /v2 or the API. Untagged images go; so does the repository, switch and all."""
    name = team.oci_name()
    with team.registry("member") as registry:
        release = push_image(registry, name, "rel1")
        push_manifest_as(registry, name, "rel2", release)
        untagged = push_image(registry, name, None)
    ok(team["member"].patch(team.repo_url(), json={"tag_overwrite": False}))
    message = (
        f"tag rel1 is immutable: tag overwrite is disabled for repository {name}; "
        "it cannot be deleted (turn tag overwrite on first to let it be deleted)"
    )
    with team.registry("member") as registry:
        assert oci_error(registry.delete(manifest_path(name, "rel1")), 403, "DENIED") == message
        assert oci_error(registry.delete(manifest_path(name, release.digest)), 403, "DENIED") == (
            message
        )
        moved = registry.put(
            manifest_path(name, "rel1"),
            content=untagged.data,
            headers={"Content-Type": untagged.media_type},
        )
        assert "tag overwrite is disabled" in oci_error(moved, 403, "DENIED")
        assert digest_of_tag(registry, name, "rel1") == release.digest

    member = team["member"]
    body = assert_problem(member.delete(team.repo_url("/tags/rel2")), 409, code="DENIED")
    assert body["detail"].startswith("tag rel2 is immutable: tag overwrite is disabled")
    body = assert_problem(member.delete(team.repo_url(f"/images/{release.digest}")), 409)
    assert body["detail"] == message
    assert ok(member.delete(team.repo_url(f"/images/{untagged.digest}")), 204) is None

    ok(member.patch(team.repo_url(), json={"tag_overwrite": True}))
    assert ok(member.delete(team.repo_url("/tags/rel2")), 204) is None
    ok(member.patch(team.repo_url(), json={"tag_overwrite": False}))
    assert ok(member.delete(team.repo_url()), 204) is None
    assert_problem(member.get(team.repo_url()), 404)


def test_a_repository_holding_a_protected_tag_is_not_deleted(team: Team) -> None:
    with team.registry() as registry:
        push_image(registry, team.oci_name("web"), "v3")
    rule = add_rule(team, "v*")
    body = assert_problem(team["member"].delete(team.repo_url()), 409, code="DENIED")
    assert body["detail"] == (
        f"tag {team.repository}/web:v3 is immutable: rule 'v*'; it cannot be deleted with "
        f"repository {team.repository}; remove the rule first to delete it"
    )
    ok(team["member"].get(team.repo_url()))
    ok(team["project-admin"].delete(team.url(f"/immutable-tag-rules/{rule['id']}")), 204)
    assert ok(team["member"].delete(team.repo_url()), 204) is None


def test_shared_digests_and_indexes(team: Team) -> None:
    """One image under a protected and an unprotected tag (Harbor #9215): the unprotected tag
    moves and goes, the image stays while the protected tag names it. A multi-architecture
    index under a protected tag keeps its platform manifests too."""
    name = team.oci_name()
    add_rule(team, "v*")
    with team.registry() as registry:
        shared = push_image(registry, name, "v1")
        push_manifest_as(registry, name, "latest", shared)
        other = push_image(registry, name, None)
        push_manifest_as(registry, name, "latest", other)  # moves: not protected
        push_manifest_as(registry, name, "latest", shared)
        assert registry.delete(manifest_path(name, "latest")).status_code == 202
        assert oci_error(registry.delete(manifest_path(name, shared.digest)), 403, "DENIED")
        assert digest_of_tag(registry, name, "v1") == shared.digest

        amd64 = push_image(registry, name, None, architecture="amd64")
        arm64 = push_image(registry, name, None, architecture="arm64")
        index = image_index(
            [
                amd64.descriptor(platform={"os": "linux", "architecture": "amd64"}),
                arm64.descriptor(platform={"os": "linux", "architecture": "arm64"}),
            ]
        )
        push_manifest_as(registry, name, "v2", index)
        refusal = oci_error(registry.delete(manifest_path(name, index.digest)), 403, "DENIED")
        assert refusal.startswith("tag v2 is immutable: rule 'v*'")
        # A platform manifest goes only with its index, which the rule holds.
        child = registry.delete(manifest_path(name, amd64.digest))
        assert child.status_code == 409, child.text
        moved = registry.put(
            manifest_path(name, "v2"),
            content=other.data,
            headers={"Content-Type": other.media_type},
        )
        assert "moved to another image" in oci_error(moved, 403, "DENIED")
        assert digest_of_tag(registry, name, "v2") == index.digest
