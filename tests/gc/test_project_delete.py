"""A deleted project's data goes at the next garbage collection (of any project), and what
another project still uses stays."""

from __future__ import annotations

import os

import httpx

from tests.gc.conftest import GcProject, age_past_grace, new_project
from tests.gc.test_gc import layer_blob, push_image
from tests.servers import ADMIN_PASSWORD, BerthServer


def test_a_deleted_projects_blobs_go_at_the_next_collection(
    gc_server: BerthServer, gc_project: GcProject
) -> None:
    own = gc_project.push_blob(b"only the deleted project has this " + os.urandom(16))
    shared = layer_blob("shared")
    gc_project.push(shared)
    upload = gc_project.registry.post(f"/v2/{gc_project.name()}/blobs/uploads/")
    assert upload.status_code == 202, upload.text
    written = gc_project.registry.patch(
        upload.headers["Location"],
        content=b"half an upload",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert written.status_code == 202, written.text
    scratch = gc_server.data_dir / "blobs" / "_uploads" / upload.headers["Docker-Upload-UUID"]
    assert scratch.exists()
    other = new_project(gc_server)
    try:
        push_image(other, shared, reference="v1")  # the other project's tagged image uses it
        with httpx.Client(
            base_url=f"{gc_server.url}/api/v1", auth=("admin", ADMIN_PASSWORD), timeout=30
        ) as admin:
            deleted = admin.delete(
                f"/projects/{gc_project.project}", params={"confirm": gc_project.project}
            )
            assert deleted.status_code == 204, deleted.text
        assert gc_project.blob_file(own).exists()  # until a collection runs
        assert not scratch.exists()  # an upload in progress went with the project
        age_past_grace(gc_project.server)

        run = other.gc()

        assert run["storage_blobs_deleted"] >= 1
        assert not gc_project.blob_file(own).exists() and not gc_project.blob_row(own)
        assert gc_project.blob_file(shared.digest).exists()
        assert other.blob_bytes(shared.digest) == shared.data
    finally:
        other.close()
