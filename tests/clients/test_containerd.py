"""containerd: `ctr images push/pull`, and a kubelet-style CRI PullImage over containerd's gRPC.

Both reach Berth over HTTPS through containerd's hosts directory, with the access key.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.clients.commands import Ctr, Skopeo
from tests.clients.cri import CriImages
from tests.clients.layouts import HOST_ARCH, TestImage, layer_files
from tests.clients.registry import Registry
from tests.clients.tools import output

pytestmark = pytest.mark.clients


def exported_blob(ctr: Ctr, reference: str, digest: str, tmp_path: Path) -> bytes:
    """A blob as containerd stored it, read back from `ctr images export`."""
    archive = tmp_path / "exported.tar"
    ctr("images", "export", archive, reference)
    with tarfile.open(archive) as tar:
        blob = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert blob is not None
        return blob.read()


def test_ctr_push_then_pull_unpacks_the_same_image(
    ctr: Ctr, any_registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ctr = ctr.at(any_registry)
    ref = any_registry.new_image("ctr", tag=test_image.tag)
    archive = test_image.layout.archive(tmp_path / "image.tar")
    ctr("images", "import", "--base-name", ref.repository, archive)  # names it ref (tag v1)

    ctr.push(str(ref))
    served = any_registry.get_manifest(ref.name, ref.tag)
    assert served.headers["Docker-Content-Digest"] == test_image.manifest_digest

    ctr("images", "rm", "--sync", str(ref))
    pulled = output(ctr.pull(str(ref)))

    assert f"unpacking linux/{HOST_ARCH} sha256:" in pulled
    assert ctr.image_digest(str(ref)) == test_image.manifest_digest
    (layer,) = test_image.layer_digests
    assert layer_files(exported_blob(ctr, str(ref), layer, tmp_path)) == test_image.files
    ctr("images", "rm", "--sync", str(ref))


# ----------------------------------------------------------------------------- CRI


def test_cri_pull_image_fetches_what_was_pushed(
    cri: CriImages, skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    ref = registry.new_image("cri")
    skopeo.copy(test_image.oci_ref, f"docker://{ref}")

    image_ref = cri.pull(str(ref), registry.credentials)

    assert image_ref == test_image.config_digest
    status = cri.status(str(ref))
    assert str(ref) in status.repo_tags
    assert f"{ref.repository}@{test_image.manifest_digest}" in status.repo_digests
    cri.remove(str(ref))
