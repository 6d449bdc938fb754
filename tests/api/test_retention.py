"""Retention over HTTP against a running server (SQLite and PostgreSQL): the policy, who may
change and run it, a dry run compared item for item with the run, and keeping by pull time."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import select

from berth.domain.retention import Keep, Rule
from berth.metadata.tables import projects, retention_policies, utcnow
from tests.api.conftest import Team, assert_problem, ok, push_image, services, until
from tests.oci import OCI_MANIFEST, push_manifest
from tests.servers import BACKENDS, server_fixture

server = server_fixture("retention", backends=BACKENDS, env={"BERTH_TRAFFIC_FLUSH_INTERVAL": "0.2"})


def tags_of(team: Team) -> list[str]:
    with team.registry() as registry:
        listed = ok(registry.get(f"/v2/{team.oci_name()}/tags/list"))
    return sorted(listed.get("tags") or [])


def test_policy_is_read_by_readers_and_changed_by_admins(team: Team) -> None:
    empty = ok(team["reader"].get(team.url("/retention")))
    assert empty["rules"] == [] and empty["schedule"] is None
    assert empty["combination"].startswith("A rule keeps; an image is kept when any rule keeps")
    policy = {"rules": [{"keep": "last", "count": 2}], "schedule": "daily 3:30"}
    assert_problem(team["member"].put(team.url("/retention"), json=policy), 403)
    saved = ok(team["project-admin"].put(team.url("/retention"), json=policy))
    assert saved["schedule"] == "daily 03:30" and saved["next_run_at"]
    assert saved["rules"] == [
        {
            "keep": "last",
            "repositories": "*",
            "tags": None,
            "count": 2,
            "days": None,
            "pattern": None,
        }
    ]
    assert (
        ok(team["reader"].get(team.url("/retention")))["updated_by"] == team.users["project-admin"]
    )
    assert_problem(team["member"].post(team.url("/retention/runs")), 403)
    assert_problem(team["reader"].post(team.url("/retention/dry-run")), 403)


def test_bad_rules_and_schedules_are_refused_naming_the_field(team: Team) -> None:
    admin = team["project-admin"]
    assert_problem(
        admin.put(team.url("/retention"), json={"rules": [{"keep": "last"}]}),
        422,
        fields=("rules",),
    )
    assert_problem(
        admin.put(team.url("/retention"), json={"rules": [{"keep": "sometimes", "count": 1}]}),
        422,
    )
    body = assert_problem(
        admin.put(team.url("/retention"), json={"rules": [], "schedule": "every day"}),
        422,
        fields=("schedule",),
    )
    assert "daily HH:MM" in body["detail"]


def test_patterns_no_name_or_tag_can_match_are_refused(team: Team) -> None:
    """No repository name starts with '/' or holds '..', no tag starts with '-': a rule for
    them would keep (or cover) nothing."""
    admin = team["project-admin"]
    for rule, said in (
        ({"keep": "last", "count": 1, "repositories": "../beta/app"}, "what '.' matches"),
        ({"keep": "last", "count": 1, "repositories": "/beta/app"}, "what '/' matches"),
        ({"keep": "last", "count": 1, "repositories": "*/../../*"}, "what '*/.' matches"),
        ({"keep": "last", "count": 1, "tags": "-rc*"}, "tags: invalid tag pattern '-rc*'"),
        ({"keep": "tagged", "pattern": ".x"}, "pattern: invalid tag pattern '.x'"),
    ):
        body = assert_problem(
            admin.put(team.url("/retention"), json={"rules": [rule]}), 422, fields=("rules",)
        )
        assert said in body["detail"] and "so it can match nothing" in body["detail"], body
    assert ok(admin.get(team.url("/retention")))["rules"] == []


def test_dry_run_and_run_agree_item_for_item(team: Team) -> None:
    with team.registry() as registry:
        pushed = [push_image(registry, team.oci_name(), f"build-{i}") for i in range(4)]
        # Untagged and just pushed (a platform manifest whose index may follow): outside
        # every rule until gc_grace_period has passed, not the newest of the `last` two.
        push_image(registry, team.oci_name(), None)
    admin = team["project-admin"]
    ok(admin.put(team.url("/retention"), json={"rules": [{"keep": "last", "count": 2}]}))
    dry = ok(team["member"].post(team.url("/retention/dry-run")))
    assert dry["dry_run"] and dry["actor"] == team.users["member"]
    assert (dry["images_kept"], dry["images_outside_rules"]) == (2, 1)
    listed = [(i["repository"], i["digest"], i["tags"]) for i in dry["images"]]
    assert listed == [
        (team.repository, pushed[0].digest, ["build-0"]),
        (team.repository, pushed[1].digest, ["build-1"]),
    ]
    assert tags_of(team) == ["build-0", "build-1", "build-2", "build-3"]  # nothing deleted
    real = ok(admin.post(team.url("/retention/runs")))
    assert [(i["repository"], i["digest"], i["tags"]) for i in real["images"]] == listed
    # The request it names frees the storage, as printed.
    gc_request = f"POST /api/v1/projects/{team.project}/gc"
    assert f"next garbage collection ({gc_request}, or the console's Management" in real["note"]
    method, path = gc_request.split()
    started = admin.request(method, f"{team.server.url}{path}")
    assert started.status_code == 202, started.text
    assert tags_of(team) == ["build-2", "build-3"]
    history = ok(team["reader"].get(team.url("/retention/runs")))
    assert [(r["dry_run"], r["images_deleted"]) for r in history["items"]] == [
        (False, 2),
        (True, 2),
    ]
    # What each past run kept stays with it, in the listing and the run alike.
    kept = [(r["images_kept"], r["images_outside_rules"]) for r in history["items"]]
    assert kept == [(real["images_kept"], real["images_outside_rules"]), (2, 1)]
    one = ok(team["reader"].get(team.url(f"/retention/runs/{real['id']}")))
    assert one["images"] == real["images"]
    assert (one["images_kept"], one["images_outside_rules"]) == (2, 1)
    past_dry_run = ok(team["reader"].get(team.url(f"/retention/runs/{dry['id']}")))
    assert (past_dry_run["images_kept"], past_dry_run["images_outside_rules"]) == (2, 1)
    assert_problem(team["reader"].get(team.url("/retention/runs/999999")), 404)

    def audited() -> Any:
        entries = ok(admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
        return [e["action"] for e in entries if e["action"].startswith(("retention", "image."))]

    actions = until(audited)
    assert "retention.run" in actions and "retention.dry_run" in actions
    assert actions.count("image.delete") == 2


def test_keep_pulled_within_keeps_what_clients_pulled(team: Team) -> None:
    with team.registry() as registry:
        pushed = [push_image(registry, team.oci_name(), f"t{i}") for i in range(3)]
        pulled = registry.get(
            f"/v2/{team.oci_name()}/manifests/t1",
            headers={"Accept": pushed[1].media_type},
        )
        assert pulled.status_code == 200
    admin = team["project-admin"]
    ok(admin.put(team.url("/retention"), json={"rules": [{"keep": "pulled_within", "days": 1}]}))

    def planned() -> list[str] | None:
        dry = ok(admin.post(team.url("/retention/dry-run")))
        digests = [i["digest"] for i in dry["images"]]
        return digests if len(digests) == 2 else None

    time.sleep(0.3)  # the pull time is written by the next flush, after the answer
    assert until(planned) == [pushed[0].digest, pushed[2].digest]


def test_retag_and_push_during_a_run_are_kept(team: Team) -> None:
    """Between a run's snapshot and its deletes, a client re-tags a planned image and pushes
    a new one over /v2: the run deletes only what did not change (both databases)."""
    name = team.oci_name()
    with team.registry() as registry:
        pushed = [push_image(registry, name, f"build-{i}") for i in range(3)]
    rules = [Rule(Keep.LAST, count=0, repositories=team.repository)]
    prepared = services(team.server, lambda s: s.retention.prepare(team.project, rules))
    assert [d.image.digest for d in prepared.plan.deletions] == [m.digest for m in pushed]
    with team.registry() as registry:
        push_manifest(registry, name, "latest", pushed[0])  # re-tagged since the snapshot
        fresh = push_image(registry, name, "fresh")  # pushed since the snapshot
    result = services(
        team.server, lambda s: s.retention.carry_out(prepared, dry_run=False, actor="test")
    )
    assert [i.digest for i in result.deleted] == [pushed[1].digest, pushed[2].digest]
    assert result.images_skipped == 1
    assert tags_of(team) == ["build-0", "fresh", "latest"]
    assert fresh.digest not in {i.digest for i in result.deleted}


def test_a_pattern_with_many_stars_plans_at_once(team: Team) -> None:
    # A matcher that backtracks took minutes over this pattern and a 128-character tag, in the
    # event loop of the node that answers (and again in every scheduled run).
    long_tag = "a" * 128
    with team.registry() as registry:
        push_image(registry, team.oci_name(), long_tag)
        ending_in_b = push_image(registry, team.oci_name(), "a" * 127 + "b")
        push_image(registry, team.oci_name(), "a" * 126 + "bb")  # newer: kept
    pattern = "*a" * 10 + "*b"
    policy = {"rules": [{"keep": "last", "count": 1, "tags": pattern}]}
    ok(team["project-admin"].put(team.url("/retention"), json=policy))
    started = time.monotonic()
    dry = ok(team["project-admin"].post(team.url("/retention/dry-run")))
    assert time.monotonic() - started < 10
    assert [i["digest"] for i in dry["images"]] == [ending_in_b.digest]
    assert dry["images_outside_rules"] == 1


def test_a_rule_for_ci_tags_leaves_a_build_promoted_with_a_release_tag(team: Team) -> None:
    """The usual promotion adds a release tag to a CI build: a rule scoped to `ci-*` covers
    only images whose every tag is a ci- tag, so the release stays, in the dry run and the run."""
    name = team.oci_name()
    with team.registry() as registry:
        promoted = push_image(registry, name, "ci-1")
        push_manifest(registry, name, "rel-1", promoted)
        older = push_image(registry, name, "ci-2")
        push_image(registry, name, "ci-3")
    admin = team["project-admin"]
    rule = {"keep": "last", "count": 1, "repositories": team.repository, "tags": "ci-*"}
    ok(admin.put(team.url("/retention"), json={"rules": [rule]}))
    dry = ok(admin.post(team.url("/retention/dry-run")))
    assert [(i["digest"], i["tags"]) for i in dry["images"]] == [(older.digest, ["ci-2"])]
    assert (dry["images_kept"], dry["images_outside_rules"]) == (1, 1)
    real = ok(admin.post(team.url("/retention/runs")))
    assert real["images"] == dry["images"]
    assert tags_of(team) == ["ci-1", "ci-3", "rel-1"]
    with team.registry() as registry:
        release = registry.get(f"/v2/{name}/manifests/rel-1", headers={"Accept": OCI_MANIFEST})
    assert release.status_code == 200 and release.content == promoted.data


def test_retention_and_immutability_read_a_repository_pattern_alike(team: Team) -> None:
    """`repositories=app` covers the images app/appa and app/appb, as an immutable tag rule
    for `app` protects their tags; both take the same classes (`[a]`)."""
    admin = team["project-admin"]
    with team.registry() as registry:
        for image in ("appa", "appb"):
            for tag in ("1", "2"):
                push_image(registry, team.oci_name(image), tag)
    rule = {"keep": "last", "count": 1, "repositories": team.repository}
    ok(admin.put(team.url("/retention"), json={"rules": [rule]}))
    dry = ok(admin.post(team.url("/retention/dry-run")))
    assert sorted((i["repository"], i["tags"]) for i in dry["images"]) == [
        (f"{team.repository}/appa", ["1"]),
        (f"{team.repository}/appb", ["1"]),
    ]
    protect = {"tag_pattern": "[1]", "repository_pattern": f"{team.repository}/app[a]"}
    assert admin.post(team.url("/immutable-tag-rules"), json=protect).status_code == 201
    dry = ok(admin.post(team.url("/retention/dry-run")))
    assert [(i["repository"], i["tags"]) for i in dry["images"]] == [
        (f"{team.repository}/appb", ["1"])
    ]
    classes = {**rule, "repositories": f"{team.repository}/app[b]"}
    ok(admin.put(team.url("/retention"), json={"rules": [classes]}))
    dry = ok(admin.post(team.url("/retention/dry-run")))
    assert [(i["repository"], i["tags"]) for i in dry["images"]] == [
        (f"{team.repository}/appb", ["1"])
    ]


def test_a_rule_that_would_keep_nothing_is_refused(team: Team) -> None:
    admin = team["project-admin"]
    for rule, said in (
        ({"keep": "last", "count": 0}, "last=0 would keep no image"),
        ({"keep": "pushed_within", "days": 0}, "pushed_within=0 would keep no image"),
        ({"keep": "untagged_within", "days": 0}, "untagged_within=0 would delete"),
    ):
        body = assert_problem(
            admin.put(team.url("/retention"), json={"rules": [rule]}), 422, fields=("rules",)
        )
        assert said in body["detail"], body
    assert ok(admin.get(team.url("/retention")))["rules"] == []


def test_rules_stored_under_the_older_syntax_still_load_and_run(team: Team) -> None:
    """Rules saved before the syntax was narrowed (count 0, a capital in a repository
    pattern, a slash in a tag pattern, a pattern no name can match) still show and run; only
    saving new ones checks."""
    old = [
        {"keep": "last", "count": 0, "repositories": "Old"},
        {"keep": "tagged", "pattern": "x/y", "repositories": "*"},
        {"keep": "last", "count": 1, "repositories": "../beta/app"},
    ]

    async def store(s: Any) -> None:
        async with s.db.write() as conn:
            project_id = (
                await conn.execute(select(projects.c.id).where(projects.c.name == team.project))
            ).scalar_one()
            await conn.execute(
                retention_policies.insert().values(
                    project_id=project_id,
                    rules=json.dumps(old),
                    updated_at=utcnow(),
                    updated_by="then",
                )
            )

    services(team.server, store)
    shown = ok(team["reader"].get(team.url("/retention")))
    assert [(r["keep"], r["count"], r["repositories"]) for r in shown["rules"]] == [
        ("last", 0, "Old"),
        ("tagged", None, "*"),
        ("last", 1, "../beta/app"),
    ]
    dry = ok(team["project-admin"].post(team.url("/retention/dry-run")))
    assert dry["images"] == [] and len(dry["rules"]) == 3
