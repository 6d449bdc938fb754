"""Upstream's redesigned TestManifestData, TestManifestErrors and TestEmptyRepository."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.conformance.blob_pushes import (
    push_post_put,
)
from tests.conformance.checks import (
    ACCEPT_ANY_MANIFEST,
    check_error,
    delete_blob_checked,
    delete_manifest_checked,
    listed,
    random_text,
    referrers,
)
from tests.conformance.datasets import (
    DATASETS,
    Dataset,
    make_dataset,
    run_dataset,
)
from tests.oci import (
    assert_status,
    describe,
    digest_of,
    image_config,
    image_manifest,
    layer,
    manifest_path,
    push_blob,
    push_manifest,
    tags_path,
)

if TYPE_CHECKING:
    from tests.conftest import Repo


class TestManifestData:
    @pytest.mark.parametrize("kind", list(DATASETS))
    def test_content(self, repo: Repo, kind: str) -> None:
        """Each kind of content upstream generates survives a full round trip: image (gzip or
        not, with a ~4 MB manifest), index (also nested or empty), artifacts (as image or
        index, with or without a subject, whether or not that subject exists), descriptors
        with `data`, non-distributable layers, unknown fields, no layers, sha512, and a
        manifest whose bytes do not match its digest (400)."""
        run_dataset(repo.client, repo.name, make_dataset(kind))

    @pytest.mark.parametrize("kind", ["image", "artifacts-with-subject"])
    def test_nested_name(self, repo: Repo, kind: str) -> None:
        """The same round trip under a nested name (project/repository/image)."""
        run_dataset(repo.client, f"{repo.name}/sub/image", make_dataset(kind))


class TestManifestErrors:
    def test_missing_manifest_by_digest(self, repo: Repo) -> None:
        digest = digest_of(os.urandom(1024))
        response = repo.client.get(manifest_path(repo.name, digest), headers=ACCEPT_ANY_MANIFEST)
        assert_status(response, 404)
        check_error(response)

    def test_missing_manifest_by_tag(self, repo: Repo) -> None:
        tag = f"missing-{random_text(20).lower()}"
        response = repo.client.get(manifest_path(repo.name, tag), headers=ACCEPT_ANY_MANIFEST)
        assert_status(response, 404)
        check_error(response)

    def test_invalid_digest_reference(self, repo: Repo) -> None:
        """PUT to `sha256:baddigeststring` is 400; GET of it 404 or 400."""
        client = repo.client
        data = Dataset()
        manifest = data.manifest_full(layer_count=1)
        for blob in data.blobs.values():
            push_post_put(client, repo.name, blob.data, blob.digest)
        response = push_manifest(client, repo.name, "sha256:baddigeststring", manifest, check=False)
        assert_status(response, 400)
        check_error(response)
        fetched = client.get(
            manifest_path(repo.name, "sha256:baddigeststring"), headers=ACCEPT_ANY_MANIFEST
        )
        assert_status(fetched, 404, 400)
        delete_manifest_checked(client, repo.name, manifest.digest)
        for digest in data.blobs:
            delete_blob_checked(client, repo.name, digest)

    def test_manifest_with_unknown_blob(self, repo: Repo) -> None:
        """spec: a registry may refuse a manifest whose blobs it does not have, and then with
        MANIFEST_BLOB_UNKNOWN."""
        config = image_config(author=random_text(8))
        push_blob(repo.client, repo.name, config)
        missing = layer({"missing.txt": os.urandom(32)})
        manifest = image_manifest(config.descriptor(), [missing.descriptor()])
        response = push_manifest(repo.client, repo.name, "orphan", manifest, check=False)
        assert_status(response, 201, 400, 404)
        if response.status_code != 201:
            check_error(response, "MANIFEST_BLOB_UNKNOWN")


class TestEmptyRepository:
    def test_ping(self, repo: Repo) -> None:
        """spec: GET /v2/ is 200 on a registry that implements the spec (no auth here)."""
        assert_status(repo.client.get("/v2/"), 200)

    def test_tag_list(self, repo: Repo) -> None:
        """A repository without tags lists none: 200 with an empty (or null) list, or 404."""
        response = repo.client.get(tags_path(repo.name))
        assert_status(response, 200, 404)
        if response.status_code == 200:
            assert not response.json().get("tags"), describe(response)

    def test_referrers(self, repo: Repo) -> None:
        """Referrers of a random digest in an empty repository: 200 and an empty index."""
        found = listed(referrers(repo.client, repo.name, digest_of(os.urandom(32))))
        assert found == []
