"""containerd: `ctr images push/pull`, and a kubelet-style CRI PullImage over containerd's gRPC."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from tests.clients.commands import Ctr, Skopeo
from tests.clients.daemons import Containerd
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
    ctr: Ctr, registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ref = registry.new_image("ctr", tag=test_image.tag)
    archive = test_image.layout.archive(tmp_path / "image.tar")
    ctr("images", "import", "--base-name", ref.repository, archive)  # names it ref (tag v1)

    ctr.push(str(ref))
    served = registry.get_manifest(ref.name, ref.tag)
    assert served.headers["Docker-Content-Digest"] == test_image.manifest_digest

    ctr("images", "rm", "--sync", str(ref))
    pulled = output(ctr.pull(str(ref)))

    assert f"unpacking linux/{HOST_ARCH} sha256:" in pulled
    assert ctr.image_digest(str(ref)) == test_image.manifest_digest
    (layer,) = test_image.layer_digests
    assert layer_files(exported_blob(ctr, str(ref), layer, tmp_path)) == test_image.files
    ctr("images", "rm", "--sync", str(ref))


# ----------------------------------------------------------------------------- CRI


@pytest.fixture
def cri_images(
    containerd: Containerd, registry: Registry
) -> Iterator[api_pb2_grpc.ImageServiceStub]:
    """containerd's CRI ImageService, told (hosts.toml) that the registry speaks plain HTTP."""
    if not containerd.cri_enabled():
        pytest.fail(f"containerd's CRI plugin is not running:\n{containerd.tail()}")
    containerd.trust_plain_http(registry.address)
    with grpc.insecure_channel(f"unix://{containerd.socket}") as channel:
        yield api_pb2_grpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]


def test_cri_pull_image_fetches_what_was_pushed(
    cri_images: api_pb2_grpc.ImageServiceStub,
    skopeo: Skopeo,
    registry: Registry,
    test_image: TestImage,
) -> None:
    ref = registry.new_image("cri")
    skopeo.copy(test_image.oci_ref, f"docker://{ref}")
    spec = api_pb2.ImageSpec(image=str(ref))
    # What a kubelet sends from an image pull secret: username and password, no server_address.
    auth = None
    if registry.credentials:
        username, password = registry.credentials
        auth = api_pb2.AuthConfig(username=username, password=password)

    pulled = cri_images.PullImage(api_pb2.PullImageRequest(image=spec, auth=auth), timeout=120)

    assert pulled.image_ref == test_image.config_digest
    status = cri_images.ImageStatus(api_pb2.ImageStatusRequest(image=spec)).image
    assert str(ref) in status.repo_tags
    assert f"{ref.repository}@{test_image.manifest_digest}" in status.repo_digests
    cri_images.RemoveImage(api_pb2.RemoveImageRequest(image=spec))
