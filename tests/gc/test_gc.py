"""What garbage collection deletes and what it keeps, through the API, on SQLite and PostgreSQL,
and on S3 (SeaweedFS, with PostgreSQL, as nodes sharing a bucket run)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.gc.conftest import GcProject, age_past_grace, gc_env, new_project
from tests.oci import (
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_LAYER,
    Blob,
    image_index,
    image_manifest,
    referrers_path,
    start_upload,
)
from tests.servers import BACKENDS, BerthServer, running_server

SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


@pytest.fixture(scope="module", params=[*BACKENDS, "postgres-s3"])
def gc_server(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    """The package's GC registry (tests/gc/conftest.py), here also with blobs in S3."""
    backend, _, storage = request.param.partition("-")
    env = gc_env()
    if storage == "s3":
        env.update(request.getfixturevalue("seaweedfs").settings_environ())
    with running_server(request, f"gc-{storage or 'fs'}", backend, extra_env=env) as server:
        yield server


def layer_blob(label: str = "") -> Blob:
    return Blob(f"{label}{uuid.uuid4()}".encode() + os.urandom(64), OCI_LAYER)


def config_blob(**extra: str) -> Blob:
    document = {"architecture": "amd64", "os": "linux", "id": uuid.uuid4().hex, **extra}
    return Blob(json.dumps(document).encode(), OCI_CONFIG)


def push_image(
    project: GcProject, *layers: Blob, reference: str | None = None, **extra: str
) -> Blob:
    """Push a config, the layers and an image manifest (by tag, or by digest when None)."""
    config = config_blob(**extra)
    for blob in (config, *layers):
        project.push(blob)
    manifest = image_manifest(config.descriptor(), [b.descriptor() for b in layers])
    response = project.put_manifest(manifest, reference)
    assert response.status_code == 201, response.text
    return manifest


def push_signature(project: GcProject, subject: Blob) -> Blob:
    """A cosign-style signature: an artifact manifest whose subject is the image."""
    project.push_blob(EMPTY_JSON)
    payload = layer_blob("signature")
    project.push(payload)
    manifest = image_manifest(
        Blob(EMPTY_JSON, OCI_EMPTY).descriptor(),
        [payload.descriptor()],
        artifact_type=SIGNATURE,
        subject=subject.descriptor(),
    )
    response = project.put_manifest(manifest)
    assert response.status_code == 201, response.text
    return manifest


def test_unreferenced_blobs_go_and_referenced_or_shared_ones_stay(
    gc_server: BerthServer, gc_project: GcProject
) -> None:
    base, top = layer_blob("base"), layer_blob("top")
    image = push_image(gc_project, base, top, reference="v1")
    config = json.loads(image.data)["config"]["digest"]
    junk = gc_project.push_blob(b"nobody references this " + os.urandom(16))
    # The same bytes in another project: they must stay on disk for it.
    shared_data = b"shared between projects " + os.urandom(16)
    shared = gc_project.push_blob(shared_data)
    other = new_project(gc_server)
    try:
        other.push_blob(shared_data)
        age_past_grace(gc_project.server)
        fresh = gc_project.push_blob(b"uploaded just now " + os.urandom(16))

        run = gc_project.gc()

        assert not gc_project.has_blob(junk)
        assert not gc_project.stored(junk)
        assert not gc_project.blob_row(junk)
        assert not gc_project.has_blob(shared)
        assert other.has_blob(shared), "another project's blob was lost"
        assert gc_project.stored(shared)
        assert gc_project.blob_row(shared)
        assert other.blob_bytes(shared) == shared_data
        assert gc_project.has_blob(fresh), "a blob within the grace period was deleted"
        for blob in (base, top):
            assert gc_project.blob_bytes(blob.digest) == blob.data
        assert gc_project.has_blob(config)
        assert gc_project.has_manifest("v1")

        assert run["dry_run"] is False
        assert run["blobs_deleted"] == 2  # junk and shared: the project holds neither now
        assert run["bytes_freed"] == 39 + len(shared_data)
        assert run["storage_blobs_deleted"] >= 1  # junk (others' orphans may go too)
        assert run["progress_done"] == run["progress_total"] >= 1
        assert run["finished_at"] is not None
        # Writes were refused for part of the run (not its queueing, not after it ended); how
        # short that part is depends on the machine's load, not on Berth: tests/gc/
        # test_progress.py holds a run in it for a known time.
        assert 0 < run["restricted_seconds"] <= run["duration_seconds"]
        settings = gc_project.settings_row()
        assert settings.gc_restricted_by is None
        assert settings.last_gc_at is not None
    finally:
        other.close()


def test_delete_untagged_keeps_index_children_and_referrers_of_kept_images(
    gc_project: GcProject,
) -> None:
    shared = layer_blob("shared")
    tagged = push_image(gc_project, shared, layer_blob(), reference="v1")
    signature = push_signature(gc_project, tagged)
    # A multi-architecture index, tagged; its platform images are pushed by digest only.
    children = [
        push_image(gc_project, layer_blob(arch), architecture=arch) for arch in ("amd64", "arm64")
    ]
    index = image_index(
        [
            child.descriptor(platform={"os": "linux", "architecture": arch})
            for child, arch in zip(children, ("amd64", "arm64"), strict=True)
        ]
    )
    assert gc_project.put_manifest(index, "multi").status_code == 201
    # Garbage: an untagged image (sharing a layer with the tagged one) and its signature; an
    # untagged index and its child; an image whose only tag was deleted.
    only_layer = layer_blob("untagged")
    untagged = push_image(gc_project, shared, only_layer)
    orphan_signature = push_signature(gc_project, untagged)
    lone_child = push_image(gc_project, layer_blob("lone"))
    lone_index = image_index([lone_child.descriptor()])
    assert gc_project.put_manifest(lone_index).status_code == 201
    untagged_later = push_image(gc_project, layer_blob("was tagged"), reference="old")
    deleted = gc_project.registry.delete(f"/v2/{gc_project.name()}/manifests/old")
    assert deleted.status_code == 202
    age_past_grace(gc_project.server)
    fresh = push_image(gc_project, layer_blob("fresh"))  # untagged, but within the grace

    plain = gc_project.gc()
    assert plain["images_deleted"] == 0
    assert gc_project.has_manifest(untagged.digest)
    assert gc_project.has_blob(only_layer.digest), "a blob an image references was deleted"

    run = gc_project.gc(delete_untagged=True)

    kept = [tagged, signature, index, *children, fresh]
    for manifest in kept:
        assert gc_project.has_manifest(manifest.digest), json.loads(manifest.data)
    gone = [untagged, orphan_signature, lone_index, lone_child, untagged_later]
    for manifest in gone:
        assert not gc_project.has_manifest(manifest.digest), json.loads(manifest.data)
    # An index and its children count once, and a signature is no image of its own (as every
    # count has it): three images went.
    assert run["images_deleted"] == 3
    assert run["delete_untagged"] is True
    # Their blobs went with them in the same run, except those a kept image still uses.
    assert not gc_project.has_blob(only_layer.digest)
    assert gc_project.has_blob(shared.digest)
    referrers = gc_project.registry.get(referrers_path(gc_project.name(), tagged.digest))
    assert [d["digest"] for d in referrers.json()["manifests"]] == [signature.digest]
    # The image history says what garbage collection removed.
    history = gc_project.api.get(
        f"/projects/{gc_project.project}/repositories/{gc_project.repository}/history",
        params={"digest": untagged.digest},
    )
    assert history.status_code == 200, history.text
    assert {(e["action"], e["actor"]) for e in history.json()["items"]} >= {("delete", "gc")}


def test_dry_run_reports_what_a_run_deletes_and_changes_nothing(gc_project: GcProject) -> None:
    push_image(gc_project, layer_blob(), reference="v1")
    untagged = push_image(gc_project, layer_blob("untagged"))
    junk = gc_project.push_blob(b"junk " + os.urandom(32))
    upload = start_upload(gc_project.registry, gc_project.name())
    assert upload.status_code == 202
    # Older than the grace period (once aged), but within upload_expiry (a day): kept, and
    # finishes.
    paused = start_upload(gc_project.registry, gc_project.name())
    assert paused.status_code == 202
    age_past_grace(gc_project.server)
    gc_project.age_upload(upload.headers["Docker-Upload-UUID"], 2 * 86_400)
    fresh_upload = start_upload(gc_project.registry, gc_project.name())

    dry = gc_project.gc(delete_untagged=True, dry_run=True)

    assert dry["dry_run"] is True
    assert dry["images_deleted"] == 1
    assert dry["blobs_deleted"] == 3  # the untagged image's config and layer, and the junk
    assert dry["uploads_deleted"] == 1
    assert dry["restricted_seconds"] == 0
    assert gc_project.has_manifest(untagged.digest)
    assert gc_project.has_blob(junk)
    assert gc_project.stored(junk)
    assert gc_project.registry.get(upload.headers["Location"]).status_code == 204
    assert gc_project.settings_row() is None or gc_project.settings_row().last_gc_at is None

    # The upload started after the others aged gets a chunk between the runs, the rest after.
    data = b"finished after garbage collection"
    touched = gc_project.registry.patch(
        fresh_upload.headers["Location"],
        content=data[:8],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert touched.status_code == 202, touched.text
    real = gc_project.gc(delete_untagged=True)

    for figure in ("images_deleted", "blobs_deleted", "bytes_freed", "uploads_deleted"):
        assert real[figure] == dry[figure], figure
    assert not gc_project.has_manifest(untagged.digest)
    assert not gc_project.has_blob(junk)
    assert gc_project.registry.get(upload.headers["Location"]).status_code == 404
    paused_data = b"paused between chunks for longer than the grace period"
    resumed = gc_project.registry.put(
        paused.headers["Location"],
        params={"digest": Blob(paused_data).digest},
        content=paused_data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resumed.status_code == 201, resumed.text
    assert gc_project.blob_bytes(Blob(paused_data).digest) == paused_data
    # An upload started within the grace period finishes as usual.
    finished = gc_project.registry.put(
        touched.headers["Location"],
        params={"digest": Blob(data).digest},
        content=data[8:],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert finished.status_code == 201, finished.text
    assert gc_project.blob_bytes(Blob(data).digest) == data


def test_history_current_and_one_run_through_the_api(gc_project: GcProject) -> None:
    first = gc_project.gc(dry_run=True)
    second = gc_project.gc()
    base = f"/projects/{gc_project.project}/gc"

    listed = gc_project.api.get(f"{base}/runs").json()
    assert [r["id"] for r in listed["items"]] == [second["id"], first["id"]]
    assert listed["total"] == 2
    assert gc_project.api.get(f"{base}/current").json() is None
    assert gc_project.api.get(f"{base}/runs/{first['id']}").json()["dry_run"] is True
    missing = gc_project.api.get(f"{base}/runs/2000000000")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    bad = gc_project.api.post(base, json={"dry_run": "sometimes"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "dry_run"
    assert gc_project.api.post(base, json={"delete": True}).status_code == 422


def test_only_project_admins_and_members_may_run_it(
    gc_server: BerthServer, gc_project: GcProject
) -> None:
    base = f"{gc_server.url}/api/v1/projects/{gc_project.project}/gc"
    for role, allowed in (("admin", True), ("member", True), ("reader", False)):
        user = f"{role}-{uuid.uuid4().hex[:8]}"
        gc_server.create_user(user, None, service_account=True)
        gc_server.add_member(gc_project.project, user, role)
        with httpx.Client(auth=gc_server.access_key(gc_project.project, user)) as client:
            started = client.post(base, json={"dry_run": True})
            assert started.status_code == (202 if allowed else 403), (role, started.text)
            if allowed:
                gc_project.wait_for_run(started.json()["id"])
            assert client.get(f"{base}/runs").status_code == 200  # readers see the history
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    gc_server.create_user(stranger, None, service_account=True)
    other = new_project(gc_server)
    try:
        gc_server.add_member(other.project, stranger, "admin")
        with httpx.Client(auth=gc_server.access_key(other.project, stranger)) as client:
            assert client.post(base, json={}).status_code == 403
    finally:
        other.close()
    assert httpx.post(base, json={}).status_code == 401


def test_cli_runs_it_with_json_output(gc_server: BerthServer, gc_project: GcProject) -> None:
    if gc_server.database_url is not None:
        pytest.skip("the CLI calls the same service as the API: once, on SQLite, is enough")
    push_image(gc_project, layer_blob("cli"))
    age_past_grace(gc_project.server)

    dry = gc_server.cli_json("gc", "run", gc_project.project, "--dry-run", "--delete-untagged")
    assert dry["dry_run"] is True and dry["images_deleted"] == 1
    run = gc_server.cli_json("gc", "run", gc_project.project, "--delete-untagged", "--yes")
    assert run["state"] == "succeeded"
    assert run["images_deleted"] == 1 and run["actor"].startswith("cli:")
    history = gc_server.cli_items("gc", "history", gc_project.project)
    assert [r["id"] for r in history] == [run["id"], dry["id"]]
    shown = gc_server.cli("gc", "status", gc_project.project).stdout
    assert f"Garbage collection run {run['id']}" in shown
    assert "Images deleted" in shown


def test_an_empty_project_collects_nothing(gc_project: GcProject) -> None:
    started = time.monotonic()
    run = gc_project.gc(delete_untagged=True)
    assert run["images_deleted"] == run["blobs_deleted"] == run["progress_total"] == 0
    assert time.monotonic() - started < 10
