"""A push the caller's rights do not allow, as skopeo and podman report it.

containers/image first asks whether each blob is there (HEAD, which carries no body), then
starts an upload (POST, whose refusal carries Berth's reason). A refused HEAD made them stop
with `failed to read from destination repository ...: 403 (Forbidden)`, the reason lost.
"""

from __future__ import annotations

import uuid

import pytest

from tests.clients.commands import Podman, Skopeo
from tests.clients.layouts import TestImage
from tests.clients.registry import ImageRef, Registry
from tests.clients.tools import output

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def outsider(registry: Registry) -> Registry:
    """A user outside the project with a role on one repository of it only (repository
    viewer), signed in with an access key of the project."""
    user = "out" + uuid.uuid4().hex[:10]
    server = registry.server
    server.create_user(user, None, service_account=True)
    viewed = "viewed" + uuid.uuid4().hex[:6]
    server.create_repository(registry.project, viewed)
    server.grant(registry.project, viewed, user, "viewer")
    return registry.signed_in_as(server.access_key(registry.project, user))


def other_repository(registry: Registry) -> ImageRef:
    """An image in a repository of the project on which `outsider` has no role."""
    return registry.new_image("elsewhere")


def test_skopeo_push_without_a_role_there_says_why(
    skopeo: Skopeo, registry: Registry, outsider: Registry, test_image: TestImage
) -> None:
    ref = other_repository(registry)

    refused = skopeo.at(outsider).copy(test_image.oci_ref, f"docker://{ref}", check=False)

    said = output(refused)
    assert refused.returncode != 0
    assert "403 (Forbidden)" not in said, said
    assert f"may not push to {ref.name}" in said, said
    assert "ask a project admin for a role" in said, said


def test_podman_push_with_a_key_of_another_project_says_why(
    podman: Podman,
    skopeo: Skopeo,
    registry: Registry,
    auth_registry: Registry,
    test_image: TestImage,
) -> None:
    """Path style, where one address serves every project: the key's project is not the
    image's."""
    local = registry.new_image("local")
    skopeo.copy(test_image.oci_ref, f"docker://{local}")
    podman.remote("pull", str(local))
    target = registry.path_style().new_image("foreign")
    podman("tag", str(local), str(target))
    foreign_key = auth_registry.path_style()

    refused = podman.at(foreign_key).remote("push", str(target), check=False)

    said = output(refused)
    assert refused.returncode != 0
    assert "403 (Forbidden)" not in said, said
    assert f"works only in project {auth_registry.project!r}" in said, said
    podman("rmi", str(local), str(target))
