"""A multi-platform image: an OCI index over linux/amd64 and linux/arm64 under one tag.

Pushed with `skopeo copy --all`, then pulled one platform at a time by skopeo, podman and ctr:
each must get its own platform's manifest and files.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clients.commands import Ctr, Podman, Skopeo
from tests.clients.layouts import (
    OciLayout,
    TestImage,
    image_index,
    layer_files,
    sha256,
    umoci_image,
)
from tests.clients.registry import OCI_INDEX, OCI_MANIFEST, ImageRef, Registry
from tests.clients.tools import output, require_binary

pytestmark = pytest.mark.clients

ARCHITECTURES = ["amd64", "arm64"]


@dataclass(frozen=True)
class MultiPlatformImage:
    layout: OciLayout
    tag: str
    index: dict[str, Any]
    images: dict[str, TestImage]

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout.path}:{self.tag}"


@pytest.fixture(scope="module")
def multi_platform_image(tmp_path_factory: pytest.TempPathFactory) -> MultiPlatformImage:
    require_binary("umoci")
    layout_dir = tmp_path_factory.mktemp("multiarch") / "layout"
    run_id = uuid.uuid4()
    images = {
        arch: umoci_image(
            layout_dir,
            arch,
            {"platform.txt": f"built for linux/{arch} ({run_id})\n".encode()},
            architecture=arch,
        )
        for arch in ARCHITECTURES
    }
    layout = OciLayout(layout_dir)
    index = image_index(layout, "multi", list(images.values()))
    return MultiPlatformImage(layout, "multi", index, images)


@pytest.fixture(scope="module")
def pushed(
    skopeo: Skopeo, registry: Registry, multi_platform_image: MultiPlatformImage
) -> ImageRef:
    ref = registry.new_image("multi", tag=multi_platform_image.tag)
    skopeo.copy(multi_platform_image.oci_ref, f"docker://{ref}", "--all")
    return ref


def test_index_pushed_with_copy_all_is_served_by_its_tag(
    registry: Registry, multi_platform_image: MultiPlatformImage, pushed: ImageRef
) -> None:
    served = registry.get_manifest(pushed.name, pushed.tag)

    assert served.headers["Content-Type"] == OCI_INDEX
    assert served.headers["Docker-Content-Digest"] == multi_platform_image.index["digest"]
    assert sha256(served.content) == multi_platform_image.index["digest"]
    by_arch = {m["platform"]["architecture"]: m for m in json.loads(served.content)["manifests"]}
    assert sorted(by_arch) == ARCHITECTURES
    for arch, image in multi_platform_image.images.items():
        assert by_arch[arch]["digest"] == image.manifest_digest
        assert by_arch[arch]["platform"]["os"] == "linux"
        child = registry.get_manifest(pushed.name, image.manifest_digest)
        assert child.headers["Content-Type"] == OCI_MANIFEST
        assert sha256(child.content) == image.manifest_digest


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_skopeo_pulls_the_platform_it_asks_for(
    skopeo: Skopeo,
    multi_platform_image: MultiPlatformImage,
    pushed: ImageRef,
    arch: str,
    tmp_path: Path,
) -> None:
    out = OciLayout(tmp_path / "out")

    skopeo.copy(f"docker://{pushed}", f"oci:{out.path}:{arch}", arch=arch)

    image = multi_platform_image.images[arch]
    assert out.resolve(arch)["digest"] == image.manifest_digest
    (layer,) = image.layer_digests
    assert layer_files(out.blob(layer)) == image.files


def test_podman_pull_with_arch_stores_that_platform(
    podman: Podman, multi_platform_image: MultiPlatformImage, pushed: ImageRef
) -> None:
    arm64 = multi_platform_image.images["arm64"]

    podman.remote("pull", "--arch", "arm64", str(pushed))

    inspected = json.loads(podman("image", "inspect", str(pushed)).stdout)[0]
    assert inspected["Architecture"] == "arm64"
    assert inspected["RootFS"]["Layers"] == arm64.diff_ids
    podman("rmi", "--force", str(pushed))


def test_ctr_pull_with_platform_fetches_only_that_platform(
    ctr: Ctr, multi_platform_image: MultiPlatformImage, pushed: ImageRef
) -> None:
    images = multi_platform_image.images

    pulled = output(ctr.pull(str(pushed), "--platform", "linux/arm64"))

    assert "unpacking linux/arm64 sha256:" in pulled
    assert ctr.image_digest(str(pushed)) == multi_platform_image.index["digest"]
    content = set(ctr("content", "ls", "--quiet").stdout.split())
    assert set(images["arm64"].layer_digests) <= content
    assert not set(images["amd64"].layer_digests) & content
    ctr("images", "rm", "--sync", str(pushed))
