"""Which images the manifests deleted together are: what their webhook events and audit
entries name."""

from __future__ import annotations

from berth.services.platform_manifests import DeletedImage, DeletedManifest, deleted_images


def test_an_index_is_one_image_with_the_platform_manifests_deleted_with_it() -> None:
    deleted = [
        DeletedManifest("", "sha256:index", ["v1"]),
        DeletedManifest("", "sha256:arm64", ["arm64-build"], index="sha256:index"),
        DeletedManifest("", "sha256:amd64", [], index="sha256:index"),
        DeletedManifest("", "sha256:signature", []),
        DeletedManifest("other", "sha256:index", []),  # another image name: its own image
    ]
    assert deleted_images(deleted) == [
        DeletedImage("", "sha256:index", ["arm64-build", "v1"], ["sha256:amd64", "sha256:arm64"]),
        DeletedImage("", "sha256:signature", [], []),
        DeletedImage("other", "sha256:index", [], []),
    ]


def test_a_platform_manifest_whose_index_was_not_deleted_is_an_image_of_its_own() -> None:
    # Named in no event otherwise: every manifest deleted is in exactly one image.
    deleted = [DeletedManifest("", "sha256:amd64", ["a"], index="sha256:gone-before")]
    assert deleted_images(deleted) == [DeletedImage("", "sha256:amd64", ["a"], [])]
