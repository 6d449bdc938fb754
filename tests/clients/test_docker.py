"""docker (through a dockerd of the tests' own, logged in): import, push, remove, pull, save."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.clients.commands import Docker
from tests.clients.layouts import TestImage, layer_files
from tests.clients.registry import Registry
from tests.clients.tools import output

pytestmark = pytest.mark.clients

PUSHED = r"{tag}: digest: (sha256:[0-9a-f]{{64}}) size: (\d+)"


def inspect(docker: Docker, image: str) -> dict[str, Any]:
    return dict(json.loads(docker("image", "inspect", image).stdout)[0])


def saved_files(docker: Docker, image: str, tmp_path: Path) -> dict[str, bytes]:
    """The files of a one-layer image, read from `docker save` (what the daemon has stored)."""
    archive = tmp_path / "saved.tar"
    docker("save", "--output", archive, image)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        (layer,) = manifest[0]["Layers"]
        return layer_files(tar.extractfile(layer).read())  # type: ignore[union-attr]


def test_docker_push_then_pull_downloads_the_same_image(
    docker: Docker, any_registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ref = any_registry.new_image("docker")
    docker.import_image(test_image, str(ref), tmp_path)
    layers = inspect(docker, str(ref))["RootFS"]["Layers"]

    pushed = output(docker("push", str(ref)))
    match = re.search(PUSHED.format(tag=re.escape(ref.tag)), pushed)
    assert match, pushed
    digest, size = match.group(1), int(match.group(2))
    served = any_registry.get_manifest(ref.name, ref.tag)
    assert served.headers["Docker-Content-Digest"] == digest
    assert len(served.content) == size

    docker("rmi", str(ref))
    pulled = docker("pull", str(ref)).stdout
    assert f"Status: Downloaded newer image for {ref}" in pulled
    assert f"Digest: {digest}" in pulled

    image = inspect(docker, str(ref))
    assert image["RootFS"]["Layers"] == layers
    assert f"{ref.repository}@{digest}" in image["RepoDigests"]
    assert saved_files(docker, str(ref), tmp_path) == test_image.files
    docker("rmi", str(ref))


def test_docker_pull_by_digest_after_push(
    docker: Docker, registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ref = registry.new_image("bydigest")
    docker.import_image(test_image, str(ref), tmp_path)
    pushed = output(docker("push", str(ref)))
    match = re.search(PUSHED.format(tag=re.escape(ref.tag)), pushed)
    assert match, pushed
    docker("rmi", str(ref))

    pulled = docker("pull", ref.at(match.group(1))).stdout

    assert f"Status: Downloaded newer image for {ref.at(match.group(1))}" in pulled
    docker("rmi", ref.at(match.group(1)))


def test_docker_push_of_a_second_tag_reuses_the_layer_already_there(
    docker: Docker, registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ref = registry.new_image("retag")
    docker.import_image(test_image, str(ref), tmp_path)
    docker("push", str(ref))
    second = ref.with_tag("v2")
    docker("tag", str(ref), str(second))

    pushed = output(docker("push", str(second)))

    assert "Layer already exists" in pushed
    assert re.search(PUSHED.format(tag="v2"), pushed), pushed
    docker("rmi", str(ref), str(second))


def test_docker_push_to_another_repository_mounts_the_layer_it_already_pushed(
    docker: Docker, registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    first = registry.new_image("first")
    docker.import_image(test_image, str(first), tmp_path)
    docker("push", str(first))
    second = registry.new_image("second")
    docker("tag", str(first), str(second))

    pushed = output(docker("push", str(second)))

    assert f"Mounted from {first.name}" in pushed
    docker("rmi", str(first), str(second))
    docker("pull", str(second))
    assert saved_files(docker, str(second), tmp_path) == test_image.files
    docker("rmi", str(second))
