"""OCI artifacts with a `subject` (signatures, SBOMs) and the referrers API that lists them.

The artifacts are pushed with oras-py: two the oras way (the artifact type is the config's media
type) and one the OCI 1.1 way (an `artifactType` field and the empty config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import oras.client
import oras.oci
import pytest

from tests.clients.commands import Skopeo
from tests.clients.layouts import TestImage, sha256
from tests.clients.registry import OCI_INDEX, OCI_MANIFEST, ImageRef, Registry

pytestmark = pytest.mark.clients

SBOM = "application/vnd.berth.test.sbom.v1+json"
SIGNATURE = "application/vnd.berth.test.signature.v1+json"
ATTESTATION = "application/vnd.berth.test.attestation.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def push_with_config_type(
    oras_client: oras.client.OrasClient,
    ref: ImageRef,
    artifact_type: str,
    subject: oras.oci.Subject,
    workdir: Path,
) -> str:
    """oras-py's push: one file, a config whose media type is the artifact type."""
    workdir.mkdir(parents=True, exist_ok=True)
    payload = workdir / "payload.json"
    payload.write_text(json.dumps({"artifact": artifact_type, "for": subject.digest}))
    config = workdir / "config.json"
    config.write_text(json.dumps({"created-by": "berth client tests"}))

    response = oras_client.push(
        target=str(ref),
        files=[str(payload)],
        manifest_config=f"{config}:{artifact_type}",
        manifest_annotations={"org.opencontainers.image.title": ref.tag},
        subject=subject,
        disable_path_validation=True,
    )
    assert response.status_code == 201, response.text
    assert response.headers.get("OCI-Subject") == subject.digest, dict(response.headers)
    return str(response.headers["Docker-Content-Digest"])


def push_with_artifact_type(
    oras_client: oras.client.OrasClient,
    ref: ImageRef,
    artifact_type: str,
    subject: oras.oci.Subject,
    workdir: Path,
) -> str:
    """An OCI 1.1 artifact manifest: `artifactType` set, the empty config, oras-py's uploads."""
    workdir.mkdir(parents=True, exist_ok=True)
    container = oras_client.get_container(str(ref))
    empty = workdir / "empty.json"
    empty.write_bytes(b"{}")
    config = {"mediaType": EMPTY_CONFIG, "digest": sha256(empty.read_bytes()), "size": 2}
    payload = workdir / "statement.json"
    payload.write_text(json.dumps({"predicate": "tested", "subject": subject.digest}))
    layer = oras.oci.NewLayer(str(payload), media_type="application/json")
    for blob, descriptor in [(empty, config), (payload, layer)]:
        uploaded = oras_client.upload_blob(str(blob), container, descriptor)
        assert uploaded.status_code in (200, 201), uploaded.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config,
        "layers": [layer],
        "subject": {"mediaType": subject.mediaType, "digest": subject.digest, "size": subject.size},
        "annotations": {"org.opencontainers.image.title": ref.tag},
    }

    response = oras_client.upload_manifest(manifest, container)
    assert response.status_code == 201, response.text
    assert response.headers.get("OCI-Subject") == subject.digest, dict(response.headers)
    return str(response.headers["Docker-Content-Digest"])


@dataclass(frozen=True)
class Artifact:
    """A referrer as stored: its digest, size, manifest, and the artifact type it stands for."""

    digest: str
    size: int
    manifest: dict[str, Any]
    artifact_type: str

    def descriptor(self) -> dict[str, Any]:
        """What the referrers API must list for it (OCI distribution-spec 1.1)."""
        return {
            "mediaType": OCI_MANIFEST,
            "digest": self.digest,
            "size": self.size,
            "artifactType": self.artifact_type,
            "annotations": self.manifest["annotations"],
        }


def stored(registry: Registry, ref: ImageRef, digest: str, artifact_type: str) -> Artifact:
    served = registry.get_manifest(ref.name, digest)
    return Artifact(digest, len(served.content), json.loads(served.content), artifact_type)


def subject_of(registry: Registry, ref: ImageRef, image: TestImage) -> oras.oci.Subject:
    size = len(registry.get_manifest(ref.name, image.manifest_digest).content)
    return oras.oci.Subject(mediaType=OCI_MANIFEST, digest=image.manifest_digest, size=size)


def referrers(registry: Registry, ref: ImageRef, digest: str, **params: str) -> httpx.Response:
    """GET /v2/<name>/referrers/<digest>, the API the artifacts should appear in."""
    with registry.http() as http:
        return http.get(f"/v2/{ref.name}/referrers/{digest}", params=params)


@dataclass(frozen=True)
class SignedImage:
    ref: ImageRef
    subject: oras.oci.Subject
    artifacts: dict[str, Artifact]


@pytest.fixture(scope="module")
def signed_image(
    skopeo: Skopeo,
    oras_client: oras.client.OrasClient,
    registry: Registry,
    test_image: TestImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> SignedImage:
    """An image with an SBOM, a signature and an attestation pushed as its referrers."""
    workdir = tmp_path_factory.mktemp("referrers")
    ref = registry.new_image("app")
    skopeo.copy(test_image.oci_ref, f"docker://{ref}")
    subject = subject_of(registry, ref, test_image)
    artifacts = {}
    for tag, artifact_type, push in [
        ("sbom", SBOM, push_with_config_type),
        ("signature", SIGNATURE, push_with_config_type),
        ("attestation", ATTESTATION, push_with_artifact_type),
    ]:
        digest = push(oras_client, ref.with_tag(tag), artifact_type, subject, workdir / tag)
        artifacts[artifact_type] = stored(registry, ref, digest, artifact_type)
    return SignedImage(ref, subject, artifacts)


def test_pushed_artifacts_keep_their_subject(signed_image: SignedImage) -> None:
    for artifact in signed_image.artifacts.values():
        assert artifact.manifest["subject"]["digest"] == signed_image.subject.digest
        assert artifact.manifest["subject"]["size"] == signed_image.subject.size


def test_referrers_lists_every_artifact_with_its_artifact_type(
    registry: Registry, signed_image: SignedImage
) -> None:
    response = referrers(registry, signed_image.ref, signed_image.subject.digest)

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(OCI_INDEX)
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    listed = sorted(index["manifests"], key=lambda d: d["digest"])
    expected = sorted(
        (a.descriptor() for a in signed_image.artifacts.values()), key=lambda d: d["digest"]
    )
    assert listed == expected


@pytest.mark.parametrize("artifact_type", [SBOM, ATTESTATION])
def test_referrers_filtered_by_artifact_type(
    registry: Registry, signed_image: SignedImage, artifact_type: str
) -> None:
    response = referrers(
        registry, signed_image.ref, signed_image.subject.digest, artifactType=artifact_type
    )

    assert response.status_code == 200, response.text
    assert response.headers.get("OCI-Filters-Applied") == "artifactType"
    assert response.json()["manifests"] == [signed_image.artifacts[artifact_type].descriptor()]


def test_referrers_of_an_image_without_any_is_an_empty_index(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    ref = registry.new_image("unsigned")
    skopeo.copy(test_image.oci_ref, f"docker://{ref}")

    response = referrers(registry, ref, test_image.manifest_digest)

    assert response.status_code == 200, response.text
    assert response.json()["manifests"] == []


def test_artifact_pushed_before_its_subject_is_listed_once_the_subject_arrives(
    skopeo: Skopeo,
    oras_client: oras.client.OrasClient,
    registry: Registry,
    test_image: TestImage,
    tmp_path: Path,
) -> None:
    ref = registry.new_image("late")
    manifest_size = test_image.manifest_descriptor["size"]
    subject = oras.oci.Subject(OCI_MANIFEST, test_image.manifest_digest, manifest_size)
    digest = push_with_config_type(oras_client, ref.with_tag("sig"), SIGNATURE, subject, tmp_path)

    skopeo.copy(test_image.oci_ref, f"docker://{ref}")
    response = referrers(registry, ref, test_image.manifest_digest)

    assert response.status_code == 200, response.text
    assert [d["digest"] for d in response.json()["manifests"]] == [digest]
