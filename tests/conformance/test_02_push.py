"""Upstream 02_push_test.go: every way to push blobs, mounts and manifests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conformance.checks import (
    ACCEPT_IMAGE,
    DUMMY_DIGEST,
    NONEXISTENT_MANIFEST,
    Classic,
    assert_teardown_blob_delete,
    assert_teardown_manifest_delete,
    check_blob_get,
    check_digest_header,
    check_manifest_get,
    populate,
    populate_manifest,
    verify_location,
)
from tests.oci import (
    OCTET_STREAM,
    assert_status,
    blob_path,
    describe,
    location,
    manifest_path,
    patch_upload,
    path_of,
    push_manifest,
    put_upload,
    start_upload,
    uploads_path,
)

if TYPE_CHECKING:
    from tests.conftest import Repo


class TestPush:
    def test_blob_upload_streamed(self, repo: Repo, classic: Classic) -> None:
        """POST, one PATCH with the whole blob (202), then PUT with the digest (201)."""
        client, blob = repo.client, classic.blob_a
        started = client.post(uploads_path(repo.name))
        patched = client.patch(
            location(started), content=blob.data, headers={"Content-Type": OCTET_STREAM}
        )
        assert_status(patched, 202)
        done = put_upload(client, location(patched), blob.digest)
        assert_status(done, 201)
        location(done)
        check_blob_get(client, repo.name, blob)

    def test_blob_upload_single_post(self, repo: Repo, classic: Classic) -> None:
        """POST with ?digest= and the body: 201 (stored) or 202 (upload session to continue);
        the blob exists afterwards exactly when the answer was 201."""
        client, blob = repo.client, classic.configs[1]
        assert_status(client.get(blob_path(repo.name, DUMMY_DIGEST)), 404)
        response = client.post(
            uploads_path(repo.name),
            params={"digest": blob.digest},
            content=blob.data,
            headers={"Content-Type": OCTET_STREAM, "Content-Length": str(blob.size)},
        )
        location(response)
        assert_status(response, 201, 202)
        fetched = client.get(blob_path(repo.name, blob.digest))
        assert_status(fetched, 404 if response.status_code == 202 else 200)

    def test_blob_upload_post_then_put(self, repo: Repo, classic: Classic) -> None:
        """POST gives a session (202); PUT with body and digest stores the blob (201)."""
        client = repo.client
        for blob in (classic.configs[1], classic.layer):
            started = client.post(uploads_path(repo.name))
            assert_status(started, 202)
            done = put_upload(client, location(started), blob.digest, blob.data)
            location(done)
            assert_status(done, 201)
            assert_status(client.get(blob_path(repo.name, blob.digest)), 200)

    def test_out_of_order_chunk_is_416(self, repo: Repo, classic: Classic) -> None:
        """The second chunk sent first is refused with 416."""
        started = start_upload(repo.client, repo.name)
        session = location(started)
        chunked = classic.chunked.fitted(started)
        response = patch_upload(repo.client, session, chunked.second, chunked.second_range)
        assert_status(response, 416)

    def test_blob_upload_chunked(self, repo: Repo, classic: Classic) -> None:
        """Chunked upload: first chunk 202 with `Range: 0-<end>`; resending it on the first
        session URL is 416; GET of that URL is 204 with Location and Range; the second chunk
        at the GET's Location is 202 covering the whole blob; PUT with the digest is 201."""
        client = repo.client
        started = start_upload(client, repo.name)
        session = location(started)
        chunked = classic.chunked.fitted(started)

        first = patch_upload(client, session, chunked.first, chunked.first_range)
        assert_status(first, 202)
        assert first.headers.get("Range") == chunked.first_range, describe(first)

        retry = patch_upload(client, session, chunked.first, chunked.first_range)
        assert_status(retry, 416)

        status = client.get(session)
        assert_status(status, 204)
        resume = location(status)
        assert status.headers.get("Range") == chunked.first_range, describe(status)

        second = patch_upload(client, resume, chunked.second, chunked.second_range)
        assert_status(second, 202)
        assert second.headers.get("Range") == f"0-{chunked.blob.size - 1}", describe(second)

        done = put_upload(client, location(second), chunked.blob.digest)
        assert_status(done, 201)
        check_digest_header(done, chunked.blob.digest)
        verify_location(client, location(done), chunked.blob.data)

    def test_mount_unknown_blob_without_from(self, repo: Repo, other: str) -> None:
        """`mount` of a blob nobody has, without `from`: 202 and an upload session."""
        response = repo.client.post(uploads_path(other), params={"mount": DUMMY_DIGEST})
        assert_status(response, 202)
        location(response)

    @pytest.mark.parametrize("source", [None, "own"], ids=["without-from", "with-from"])
    def test_mount_of_no_digest_starts_an_upload(
        self, repo: Repo, other: str, source: str | None
    ) -> None:
        """spec: a registry that cannot mount the blob answers 202 and an upload session, as
        Distribution does for a `mount` that is no digest (Berth answered 400)."""
        params = {"mount": "bogus", **({"from": repo.name} if source else {})}
        response = repo.client.post(uploads_path(other), params=params)
        assert_status(response, 202)
        assert path_of(location(response)).startswith(f"/v2/{other}/blobs/uploads/")

    def test_mount_from_other_repository(self, repo: Repo, classic: Classic, other: str) -> None:
        """`mount`+`from`: 201 with Location /v2/<target>/blobs/<digest> that serves the blob,
        or 202 with an upload session in the target repository.

        Then the Ginkgo automatic-mount check: once the blob is in the target, `mount` without
        `from` is 201 (automatic mount enabled) or 202 (disabled); both are accepted, as
        upstream accepts either setting of OCI_AUTOMATIC_CROSSMOUNT."""
        client, blob = repo.client, classic.blob_a
        populate(repo, blob)
        mounted = client.post(uploads_path(other), params={"mount": blob.digest, "from": repo.name})
        assert_status(mounted, 201, 202)
        where = path_of(location(mounted))
        if mounted.status_code == 202:
            assert where.startswith(f"/v2/{other}/blobs/uploads/"), describe(mounted)
            return
        assert where == f"/v2/{other}/blobs/{blob.digest}", describe(mounted)
        check_digest_header(mounted, blob.digest)
        fetched = client.get(location(mounted))
        assert_status(fetched, 200)
        assert fetched.content == blob.data

        again = client.post(uploads_path(other), params={"mount": blob.digest})
        assert_status(again, 201, 202)

    def test_manifest_upload(self, repo: Repo, classic: Classic) -> None:
        """GET of an unknown manifest is 404; PUT of a manifest under four tags is 201 with a
        Location each time; the manifest is then served by digest."""
        client, manifest = repo.client, classic.manifests[1]
        assert_status(client.get(manifest_path(repo.name, NONEXISTENT_MANIFEST)), 404)
        populate(repo, classic.configs[1], classic.layer)
        for number in range(4):
            response = push_manifest(client, repo.name, f"test{number}", manifest, check=False)
            location(response)
            assert_status(response, 201)
        check_manifest_get(client, repo.name, manifest.digest, manifest, ACCEPT_IMAGE)

    def test_manifest_upload_without_layers(self, repo: Repo, classic: Classic) -> None:
        """An image manifest with an empty `layers` list (and no `mediaType` member) is
        accepted: 201 with a Location. The Ginkgo suite only warns here; the redesigned one
        (data set "no-layers") requires it."""
        client, manifest = repo.client, classic.empty_layer_manifest
        populate(repo, classic.configs[1])
        response = push_manifest(client, repo.name, "emptylayer", manifest, check=False)
        assert_status(response, 201)
        location(response)
        check_manifest_get(client, repo.name, "emptylayer", manifest)

    def test_teardown(self, repo: Repo, classic: Classic) -> None:
        client = repo.client
        populate(repo, classic.configs[1], classic.layer)
        populate_manifest(repo, "test0", classic.manifests[1])
        populate_manifest(repo, "emptylayer", classic.empty_layer_manifest)
        for manifest in (classic.manifests[1], classic.empty_layer_manifest):
            assert_teardown_manifest_delete(
                client.delete(manifest_path(repo.name, manifest.digest))
            )
        for blob in (classic.configs[1], classic.layer):
            assert_teardown_blob_delete(client.delete(blob_path(repo.name, blob.digest)))
