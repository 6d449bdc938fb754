"""What the Management and Monitoring pages read agrees: one storage sample, one GC state."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

from berth.metadata.tables import utcnow
from tests.api.conftest import Team, new_team, ok, push_image, until
from tests.oci import Blob, push_blob


def test_summary_and_storage_series_show_one_sample(team: Team) -> None:
    push_image(team.registry(), team.oci_name(), "v1")
    # Unless the schedule's first collection reached this new project already, Management
    # (the summary) takes the first sample; either way Monitoring shows that same one.
    summary = ok(team["reader"].get(team.url("/summary")))["storage"]
    assert summary["collected_at"] is not None
    series = ok(team["reader"].get(team.url("/storage")))
    assert series["last"] == summary and series["samples"] == [summary]
    assert series["collected_at"] == summary["collected_at"]
    # Monitoring first: Management then shows Monitoring's sample.
    other = new_team(team.server)
    try:
        push_image(other.registry(), other.oci_name(), "v1")
        first = ok(other["reader"].get(other.url("/storage")))
        assert first["last"] is not None and first["samples"] == [first["last"]]
        assert ok(other["reader"].get(other.url("/summary")))["storage"] == first["last"]
    finally:
        other.close()


def audit_of(team: Team, action: str) -> list[dict[str, Any]]:
    entries = ok(team.admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
    return [e for e in entries if e["action"] == action]


def finished_run(team: Team, run_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (run := ok(team.admin.get(team.url(f"/gc/runs/{run_id}"))))["state"] == "running":
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    return run  # type: ignore[no-any-return]


def test_gc_says_what_it_kept_for_being_young_and_is_audited(team: Team) -> None:
    """The server's default grace period (an hour): what was just pushed is kept, and the
    result says how much and from when it can go."""
    registry = team.registry()
    push_image(registry, team.oci_name(), "v1")
    first = push_image(registry, team.oci_name(), None)
    second = push_image(registry, team.oci_name(), None)
    junk = Blob(os.urandom(64))
    push_blob(registry, team.oci_name(), junk)
    started_at = utcnow()

    started = team.admin.post(team.url("/gc"), json={"dry_run": True, "delete_untagged": True})
    run = finished_run(team, ok(started, 202)["id"])

    assert run["state"] == "succeeded" and run["images_deleted"] == 0
    assert run["young_images_kept"] == 2  # the two untagged images
    assert run["young_blobs_kept"] == 1  # the junk blob nothing references
    assert run["grace_period_seconds"] == 3600
    collectable = dt.datetime.fromisoformat(run["young_collectable_at"])
    assert started_at + dt.timedelta(seconds=3590) < collectable
    assert collectable <= utcnow() + dt.timedelta(seconds=3600)
    listed = ok(team["reader"].get(team.url("/gc/runs")))["items"]
    assert listed[0]["id"] == run["id"] and listed[0]["delete_untagged"] is True
    images = {i["digest"] for i in ok(team["reader"].get(team.repo_url("/images")))["items"]}
    assert {first.digest, second.digest} <= images

    # Who started it, from where, with which options: written with the run itself.
    [entry] = audit_of(team, "gc.dry_run")
    assert entry["actor"] == "admin" and entry["client"] == "127.0.0.1"
    assert entry["target"] == f"run {run['id']}"
    assert entry["detail"] == {"run": run["id"], "dry_run": True, "delete_untagged": True}

    if team.server.database_url is not None:
        return  # the CLI calls the same services: once, on SQLite
    shown = team.server.cli("gc", "run", team.project, "--dry-run", "--delete-untagged")
    flat = " ".join(shown.stdout.replace("│", " ").split())
    assert "2 images and 1 blob" in flat and "collectable from" in flat, shown.stdout
    cli_run = json.loads(team.server.cli("gc", "run", team.project, "--yes", "--json").stdout)
    assert cli_run["young_blobs_kept"] == 1 and cli_run["delete_untagged"] is False
    by_cli = audit_of(team, "gc.run")
    assert by_cli[0]["detail"] == {"run": cli_run["id"], "dry_run": False, "delete_untagged": False}
    assert by_cli[0]["actor"].startswith("cli:") and by_cli[0]["client"].startswith("cli on ")


def test_deleting_a_tag_changes_last_modified_and_every_delete_is_audited(team: Team) -> None:
    registry = team.registry("member")
    image = push_image(registry, team.oci_name(), "v1")
    push_image(registry, team.oci_name(), "v2")
    before = ok(team["reader"].get(team.repo_url()))["updated_at"]

    ok(team["member"].delete(team.repo_url("/tags/v1")), 204)
    after = ok(team["reader"].get(team.repo_url()))["updated_at"]
    assert dt.datetime.fromisoformat(after) > dt.datetime.fromisoformat(before)
    [listed] = ok(team["reader"].get(team.url("/repositories")))["items"]
    assert listed["updated_at"] == after

    # A blob deleted through /v2 is audited like an image or tag.
    junk = Blob(os.urandom(64))
    push_blob(registry, team.oci_name(), junk)
    deleted = registry.delete(f"/v2/{team.oci_name()}/blobs/{junk.digest}")
    assert deleted.status_code == 202, deleted.text
    [entry] = until(lambda: audit_of(team, "blob.delete"))
    assert entry["target"] == f"{team.repository}@{junk.digest}"
    assert entry["actor"] == team.users["member"] and entry["client"] == "127.0.0.1"

    if team.server.database_url is not None:
        return  # the CLI calls the same services: once, on SQLite
    team.server.cli("tag", "restore", f"{team.project}/{team.repository}", "v1")
    [restored] = audit_of(team, "tag.restore")
    assert restored["target"] == f"{team.repository}:v1"
    assert restored["actor"].startswith("cli:") and restored["client"].startswith("cli on ")
    assert ok(team["reader"].get(team.repo_url("/tags")))["total"] == 2
    team.server.create_repository(team.project, "old")
    team.server.cli("repo", "delete", f"{team.project}/old", "--yes")
    [removed] = audit_of(team, "repository.delete")
    assert removed["target"] == "old" and removed["client"].startswith("cli on ")
    assert image.digest
