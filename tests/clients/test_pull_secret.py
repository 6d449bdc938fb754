"""A Kubernetes image pull secret made from an access key, used the way a cluster uses it.

`kubectl create secret docker-registry --dry-run=client` writes the secret (no cluster needed);
its `.dockerconfigjson` is a docker config file. skopeo and podman take it as `--authfile`, and
a kubelet hands the matching entry's username and password to containerd's CRI PullImage.
The key belongs to a service account with the `reader` role: it pulls, and may not push.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clients.commands import Podman, Skopeo
from tests.clients.cri import CriImages
from tests.clients.layouts import OciLayout, TestImage
from tests.clients.registry import ImageRef, Registry
from tests.clients.tools import output, require_binary, run, write_json

pytestmark = pytest.mark.clients

SECRET_DATA = re.compile(r"^  \.dockerconfigjson: (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class PullSecret:
    """The secret's docker config, and where it is written as a file."""

    config: dict[str, Any]
    auth_file: Path

    def credentials(self, image: ImageRef) -> tuple[str, str]:
        """What a kubelet sends for `image`: the entry for its registry host, username and
        password only (no server_address)."""
        entry = self.config["auths"][image.address]
        return entry["username"], entry["password"]


def kubectl_pull_secret(registry: Registry, name: str, auth_file: Path) -> PullSecret:
    assert registry.credentials
    key_id, secret = registry.credentials
    yaml = run(
        [
            require_binary("kubectl"), "create", "secret", "docker-registry", name,
            f"--docker-server={registry.address}",
            f"--docker-username={key_id}",
            f"--docker-password={secret}",
            "--docker-email=ci@example.invalid",
            "--dry-run=client", "-o", "yaml",
        ]
    ).stdout  # fmt: skip
    assert "type: kubernetes.io/dockerconfigjson" in yaml, yaml
    match = SECRET_DATA.search(yaml)
    assert match, yaml
    config = json.loads(base64.b64decode(match.group(1)))
    return PullSecret(config, write_json(auth_file, config))


@pytest.fixture(scope="module")
def reader(auth_registry: Registry) -> Registry:
    """The login tests' project, signed in as a service account with the `reader` role."""
    return auth_registry.as_new_user("reader")


@pytest.fixture(scope="module")
def pull_secret(reader: Registry, tmp_path_factory: pytest.TempPathFactory) -> PullSecret:
    auth_file = tmp_path_factory.mktemp("pull-secret") / "dockerconfig.json"
    return kubectl_pull_secret(reader, "berth-pull", auth_file)


@pytest.fixture(scope="module")
def pushed(skopeo: Skopeo, auth_registry: Registry, test_image: TestImage) -> ImageRef:
    """The test image, pushed by the project's administrator."""
    ref = auth_registry.new_image("app")
    skopeo.at(auth_registry).copy(test_image.oci_ref, f"docker://{ref}")
    return ref


def test_kubectl_secret_holds_the_access_key_for_the_project_host(
    pull_secret: PullSecret, reader: Registry
) -> None:
    assert reader.credentials
    key_id, secret = reader.credentials

    entry = pull_secret.config["auths"][reader.address]

    assert (entry["username"], entry["password"]) == (key_id, secret)
    assert base64.b64decode(entry["auth"]).decode() == f"{key_id}:{secret}"


def test_skopeo_pulls_with_the_secret_as_auth_file(
    skopeo: Skopeo,
    pull_secret: PullSecret,
    pushed: ImageRef,
    test_image: TestImage,
    tmp_path: Path,
) -> None:
    pulled = OciLayout(tmp_path / "pulled")

    skopeo(
        "copy", "--src-authfile", pull_secret.auth_file,
        "--src-cert-dir", skopeo.registry.trust.cert_dir,
        f"docker://{pushed}", f"oci:{pulled.path}:{pushed.tag}",
    )  # fmt: skip

    assert pulled.resolve(pushed.tag)["digest"] == test_image.manifest_digest


def test_podman_pulls_with_the_secret_as_auth_file(
    podman: Podman, pull_secret: PullSecret, pushed: ImageRef, test_image: TestImage
) -> None:
    cert_dir = podman.registry.trust.cert_dir

    podman("pull", "--authfile", pull_secret.auth_file, "--cert-dir", cert_dir, str(pushed))

    inspected = json.loads(podman("image", "inspect", str(pushed)).stdout)[0]
    assert inspected["Digest"] == test_image.manifest_digest
    podman("rmi", "--force", str(pushed))


def test_cri_pulls_with_the_secret_credentials_like_a_kubelet(
    cri: CriImages, pull_secret: PullSecret, pushed: ImageRef, test_image: TestImage
) -> None:
    image_ref = cri.pull(str(pushed), pull_secret.credentials(pushed))

    assert image_ref == test_image.config_digest
    assert (
        f"{pushed.repository}@{test_image.manifest_digest}" in cri.status(str(pushed)).repo_digests
    )
    cri.remove(str(pushed))


def test_the_secret_of_a_reader_does_not_push(
    skopeo: Skopeo, pull_secret: PullSecret, reader: Registry, test_image: TestImage
) -> None:
    ref = reader.new_image("readers-push")

    refused = skopeo(
        "copy", "--dest-authfile", pull_secret.auth_file,
        "--dest-cert-dir", reader.trust.cert_dir,
        test_image.oci_ref, f"docker://{ref}", check=False,
    )  # fmt: skip

    assert refused.returncode != 0
    assert "denied" in output(refused), output(refused)
