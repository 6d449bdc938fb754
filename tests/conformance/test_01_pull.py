"""Upstream 01_pull_test.go: pulling blobs and manifests, by tag and by digest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conformance.checks import (
    ACCEPT_ANY_MANIFEST,
    ACCEPT_IMAGE,
    DUMMY_DIGEST,
    NONEXISTENT_MANIFEST,
    PULL_TAG,
    Classic,
    assert_teardown_blob_delete,
    assert_teardown_manifest_delete,
    check_blob_get,
    check_blob_head,
    check_error,
    check_manifest_get,
    check_manifest_head,
    populate,
    populate_manifest,
)
from tests.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    assert_status,
    blob_path,
    manifest_path,
)

if TYPE_CHECKING:
    from tests.conftest import Repo


@pytest.fixture
def pulled(repo: Repo, classic: Classic) -> Classic:
    """Pull setup: two configs and the layer; manifests[0] under a tag, manifests[1] by digest."""
    populate(repo, classic.configs[0], classic.configs[1], classic.layer)
    populate_manifest(repo, PULL_TAG, classic.manifests[0])
    populate_manifest(repo, classic.manifests[1].digest, classic.manifests[1])
    return classic


class TestPull:
    def test_head_blob(self, repo: Repo, pulled: Classic) -> None:
        """HEAD of an unknown blob is 404; of a pushed blob 200, with its length and digest."""
        client = repo.client
        assert_status(client.head(blob_path(repo.name, DUMMY_DIGEST)), 404)
        check_blob_head(client, repo.name, pulled.configs[0])

    def test_get_blob(self, repo: Repo, pulled: Classic) -> None:
        """GET of an unknown blob is 404; of a pushed blob 200 with its exact bytes."""
        client = repo.client
        missing = client.get(blob_path(repo.name, DUMMY_DIGEST))
        assert_status(missing, 404)
        check_error(missing)
        check_blob_get(client, repo.name, pulled.configs[0])
        check_blob_get(client, repo.name, pulled.layer)

    def test_head_manifest(self, repo: Repo, pulled: Classic) -> None:
        client = repo.client
        assert_status(client.head(manifest_path(repo.name, NONEXISTENT_MANIFEST)), 404)
        for manifest in pulled.manifests[:2]:
            check_manifest_head(client, repo.name, manifest.digest, manifest, ACCEPT_IMAGE)
        check_manifest_head(client, repo.name, PULL_TAG, pulled.manifests[0], ACCEPT_IMAGE)

    def test_get_manifest(self, repo: Repo, pulled: Classic) -> None:
        client = repo.client
        missing = client.get(manifest_path(repo.name, NONEXISTENT_MANIFEST))
        assert_status(missing, 404)
        for manifest in pulled.manifests[:2]:
            check_manifest_get(client, repo.name, manifest.digest, manifest, ACCEPT_IMAGE)
        check_manifest_get(client, repo.name, PULL_TAG, pulled.manifests[0], ACCEPT_IMAGE)

    def test_accept_in_several_header_lines(self, repo: Repo, pulled: Classic) -> None:
        """The redesigned suite (like docker) sends each accepted type as its own `Accept`
        line; per RFC 9110 section 5.3 that is the same as one comma-separated line, so a
        manifest whose type is on the second line is served."""
        for accept in (ACCEPT_ANY_MANIFEST, [("Accept", OCI_MANIFEST), ("Accept", OCI_INDEX)]):
            check_manifest_get(repo.client, repo.name, PULL_TAG, pulled.manifests[0], accept)
            check_manifest_head(repo.client, repo.name, PULL_TAG, pulled.manifests[0], accept)

    def test_error_body_for_malformed_digest(self, repo: Repo, pulled: Classic) -> None:
        """A malformed digest reference is 400 or 404; a 400 has an OCI JSON error body."""
        response = repo.client.request(
            "GET",
            manifest_path(repo.name, "sha256:totallywrong"),
            content=b"blablabla",
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert_status(response, 400, 404)
        if response.status_code == 400:
            check_error(response)

    def test_teardown(self, repo: Repo, pulled: Classic) -> None:
        """Manifests delete (2xx or 405), then blobs (2xx, 404 or 405).

        spec: once a manifest is deleted, a tag that pointed at it is 404 too."""
        client = repo.client
        for manifest in pulled.manifests[:2]:
            assert_teardown_manifest_delete(
                client.delete(manifest_path(repo.name, manifest.digest))
            )
        for reference in (pulled.manifests[0].digest, pulled.manifests[1].digest, PULL_TAG):
            assert_status(client.head(manifest_path(repo.name, reference)), 404)
        for blob in (pulled.configs[0], pulled.configs[1], pulled.layer):
            assert_teardown_blob_delete(client.delete(blob_path(repo.name, blob.digest)))
