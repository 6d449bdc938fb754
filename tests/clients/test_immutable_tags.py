"""Immutable tag rules as skopeo, podman and docker meet them: a push that would move a
protected tag is refused, and each client prints the rule that refused it.

The refusal is DENIED (403): all three print it on one line, `denied: <message>`. With
TAG_INVALID (400), as Distribution-based registries answer, skopeo and podman take it for a
format problem and retry the push in every other manifest format, ending in a list of six
errors ("manifest invalid: schemaVersion must be 2", "Unsupported conversion type") around it;
the assertions on "attempted the following formats" keep that from coming back."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from berth.state import Services
from tests.clients.commands import Docker, Podman, Skopeo
from tests.clients.layouts import TestImage
from tests.clients.registry import ImageRef, Registry
from tests.clients.test_limits import distinct_manifests
from tests.clients.tools import CommandFailed, output
from tests.oci import OCI_MANIFEST, digest_of

pytestmark = pytest.mark.clients


def protected_tag(registry: Registry, image: str) -> tuple[ImageRef, str]:
    """A fresh repository whose tag `v1` names an image (not the test image) and is protected
    by the rule `v*` of that repository; returns the reference and the digest it names."""
    repository = "imm" + uuid.uuid4().hex[:6]
    registry.server.create_repository(registry.project, repository)
    ref = ImageRef(registry.address, registry.name(repository, image), "v1")
    with registry.http() as client:
        body = distinct_manifests(client, ref.name, 1)[0]
        pushed = client.put(
            f"/v2/{ref.name}/manifests/{ref.tag}",
            content=body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert pushed.status_code == 201, pushed.text

    async def add_rule(services: Services) -> None:
        await services.tag_rules.create(registry.project, "v*", repository, actor="tests")

    registry.server._services(add_rule)
    return ref, digest_of(body)


def refusal(ref: ImageRef) -> str:
    """What each client prints: the registry's message after the code's text."""
    repository = ref.name.split("/")[-2]
    return (
        f"denied: tag v1 is immutable: rule 'v*' (repositories '{repository}'); it cannot be "
        "moved to another image; push a new tag"
    )


def still_names(registry: Registry, ref: ImageRef, digest: str) -> bool:
    with registry.http() as client:
        response: httpx.Response = client.head(f"/v2/{ref.name}/manifests/{ref.tag}")
    served: str | None = response.headers.get("docker-content-digest")
    return served == digest


def test_skopeo_copy_onto_an_immutable_tag_is_refused(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    ref, digest = protected_tag(registry, "app")
    with pytest.raises(CommandFailed) as refused:
        skopeo.copy(test_image.oci_ref, f"docker://{ref}")
    printed = str(refused.value)
    assert refusal(ref) in printed
    assert "attempted the following formats" not in printed
    assert still_names(registry, ref, digest)

    # A new protected tag is just a new tag; the same image under it again moves nothing.
    fresh = ref.with_tag("v2")
    skopeo.copy(test_image.oci_ref, f"docker://{fresh}")
    skopeo.copy(test_image.oci_ref, f"docker://{fresh}")
    with pytest.raises(CommandFailed) as refused:
        skopeo.remote("delete", f"docker://{fresh}")
    # skopeo delete prints the error body as it came (JSON), with the status.
    printed = str(refused.value)
    assert "tag v2 is immutable: rule 'v*'" in printed and "cannot be deleted" in printed
    assert "(403 Forbidden)" in printed


def test_podman_push_onto_an_immutable_tag_is_refused(
    podman: Podman, registry: Registry, test_image: TestImage
) -> None:
    ref, digest = protected_tag(registry, "app")
    image_id = podman("pull", "--quiet", test_image.oci_ref).stdout.strip()
    podman("tag", image_id, str(ref))
    try:
        with pytest.raises(CommandFailed) as refused:
            podman.remote("push", str(ref))
    finally:
        podman("rmi", "--force", str(ref))
    printed = str(refused.value)
    assert (
        f"Error: writing manifest: uploading manifest v1 to {ref.repository}: {refusal(ref)}"
        in (printed)
    )
    assert "attempted the following formats" not in printed
    assert still_names(registry, ref, digest)


def test_docker_push_onto_an_immutable_tag_is_refused(
    docker: Docker, registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ref, digest = protected_tag(registry, "app")
    docker.import_image(test_image, str(ref), tmp_path)
    try:
        result = docker("push", str(ref), check=False)
    finally:
        docker("rmi", str(ref))
    printed = output(result)
    assert result.returncode != 0, printed
    assert refusal(ref) in printed.splitlines(), printed
    assert still_names(registry, ref, digest)
