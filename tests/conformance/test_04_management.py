"""Upstream 04_management_test.go: deleting tags, manifests and blobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conformance.checks import (
    PULL_TAG,
    Classic,
    check_error,
    populate,
    populate_manifest,
)
from tests.oci import (
    Blob,
    assert_status,
    blob_path,
    describe,
    manifest_path,
    tags_path,
)

if TYPE_CHECKING:
    from tests.conftest import Repo


@pytest.fixture
def managed(repo: Repo, classic: Classic) -> int:
    """Management setup: configs[3] and the layer, manifests[3] under "tagtest0"; returns how
    many tags the repository has before anything is deleted."""
    populate(repo, classic.configs[3], classic.layer)
    populate_manifest(repo, PULL_TAG, classic.manifests[3])
    response = repo.client.get(tags_path(repo.name))
    assert_status(response, 200)
    return len(response.json()["tags"])


def delete_tag_then_manifest(repo: Repo, manifest: Blob, tags_before: int) -> None:
    client = repo.client
    deleted = client.delete(manifest_path(repo.name, PULL_TAG))
    assert_status(deleted, 202, 400, 405)
    if deleted.status_code == 400:
        check_error(deleted, "UNSUPPORTED")
    if deleted.status_code == 202:
        assert_status(client.head(manifest_path(repo.name, PULL_TAG)), 404)

    by_digest = client.delete(manifest_path(repo.name, manifest.digest))
    assert_status(by_digest, 202, 404)
    fetched = client.get(manifest_path(repo.name, manifest.digest))
    assert_status(fetched, 404, 200)
    if by_digest.status_code == 202:
        assert_status(fetched, 404)

    listing = client.get(tags_path(repo.name))
    assert_status(listing, 404, 200)
    if listing.status_code == 200:
        assert len(listing.json()["tags"] or []) == tags_before - 1, describe(listing)
    else:
        assert tags_before - 1 == 0


class TestContentManagement:
    def test_manifest_delete(self, repo: Repo, classic: Classic, managed: int) -> None:
        """DELETE of a tag: 202, or 400 (code UNSUPPORTED) / 405 where tag deletion is
        disallowed; DELETE by digest: 202, or 404 when already gone; the manifest is then 404
        (unless deletes are disallowed) and the tag list is one shorter."""
        delete_tag_then_manifest(repo, classic.manifests[3], managed)

    def test_blob_delete(self, repo: Repo, classic: Classic, managed: int) -> None:
        """After the manifest is gone, DELETE of its blobs is 202 (404/405 tolerated); a
        deleted blob is then 404."""
        client = repo.client
        delete_tag_then_manifest(repo, classic.manifests[3], managed)
        config = client.delete(blob_path(repo.name, classic.configs[3].digest))
        assert_status(config, 202, 404, 405)
        layer_response = client.delete(blob_path(repo.name, classic.layer.digest))
        assert_status(layer_response, 202, 404, 405)
        if layer_response.status_code != 405:
            assert_status(client.get(blob_path(repo.name, classic.configs[3].digest)), 404)
            assert_status(client.head(blob_path(repo.name, classic.layer.digest)), 404)
