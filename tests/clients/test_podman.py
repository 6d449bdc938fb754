"""podman: push an image from local storage, remove it, pull it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.clients.commands import Podman
from tests.clients.layouts import TestImage
from tests.clients.registry import Registry
from tests.clients.tools import output

pytestmark = pytest.mark.clients


def inspect(podman: Podman, image: str) -> dict[str, Any]:
    return dict(json.loads(podman("image", "inspect", image).stdout)[0])


def test_podman_push_then_pull_gives_back_the_same_image(
    podman: Podman, any_registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    podman = podman.at(any_registry)
    ref = any_registry.new_image("podman")
    image_id = podman("pull", "--quiet", test_image.oci_ref).stdout.strip()
    podman("tag", image_id, str(ref))
    digest_file = tmp_path / "digest"

    pushed = podman.remote("push", "--digestfile", digest_file, str(ref))
    assert "Writing manifest to image destination" in output(pushed)
    digest = digest_file.read_text()

    podman("rmi", "--force", str(ref), image_id)
    podman.remote("pull", str(ref))

    pulled = inspect(podman, str(ref))
    assert pulled["Digest"] == digest
    assert f"{ref.repository}@{digest}" in pulled["RepoDigests"]
    assert pulled["RootFS"]["Layers"] == test_image.diff_ids
    assert pulled["Architecture"] == test_image.platform["architecture"]
    assert any_registry.get_manifest(ref.name, ref.tag).headers["Docker-Content-Digest"] == digest

    mountpoint = Path(podman("image", "mount", str(ref)).stdout.strip())
    try:
        for name, content in test_image.files.items():
            assert (mountpoint / name).read_bytes() == content
    finally:
        podman("image", "unmount", str(ref))
        podman("rmi", "--force", str(ref))
