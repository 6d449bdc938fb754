"""Scan results met by real clients. A project that refuses pulls of vulnerable images: skopeo
and podman pulling an image whose scan found a high finding (ms 0.7.0, GHSA-3fx5-fwvr-xrjg,
from the genuine records of tests/fixtures/osv) print Berth's DENIED message; the address it
gives shows the findings; with the policy off both pull it. An image's SBOM attached as an OCI
referrer: oras-py pulls it by digest and gets the CycloneDX document."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import oras.client
import pytest

from berth.services.scanning.results import ScanResult
from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.clients.commands import Podman, Skopeo, remote_flags
from tests.clients.layouts import OciLayout
from tests.clients.registry import OCI_MANIFEST, ImageRef, Registry
from tests.oci import OCI_CONFIG, OCI_LAYER_GZIP, Blob, diff_id
from tests.unit.services.test_scanning_layers import FIXTURES, layer, npm_package

pytestmark = pytest.mark.clients


def npm_image(work: Path) -> OciLayout:
    """One layer with ms 0.7.0 under node_modules, as an OCI layout podman can unpack."""
    layout = OciLayout(work / "layout")
    layout.path.mkdir()
    (layout.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    packages = Blob(layer(npm_package("ms-0.7.0.tgz", "ms")), OCI_LAYER_GZIP)
    layout.add_blob(packages.data)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id(packages)]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.add_json(config, OCI_CONFIG),
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": packages.digest, "size": len(packages.data)}
        ],
    }
    layout.tag("v1", layout.add_json(manifest, OCI_MANIFEST))
    return layout


def pushed_and_scanned(skopeo: Skopeo, registry: Registry, work: Path) -> tuple[ImageRef, str]:
    """The ms image pushed with skopeo into a new repository and scanned: its ref and digest."""
    repository = "pol" + uuid.uuid4().hex[:6]
    registry.server.create_repository(registry.project, repository)
    layout = npm_image(work)
    ref = ImageRef(registry.address, registry.name(repository, "app"), "v1")
    skopeo.copy(f"oci:{layout.path}:v1", f"docker://{ref}")
    digest = str(layout.resolve("v1")["digest"])

    async def scan(s: Services) -> ScanResult:
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []
        repo = await s.repositories.require(registry.project, repository)
        await s.scans.request_scan(repo, "app", digest, "tests")
        return await s.scans.scan_now(repo.id, "app", digest)

    counts = registry.server._services(scan).counts
    assert counts is not None and counts.high == 1
    return ref, digest


def set_policy(registry: Registry, severity: str | None) -> None:
    with registry.http() as api:
        response = api.put(
            f"/api/v1/projects/{registry.project}/pull-policy",
            json={"refuse_severity": severity},
        )
        assert response.status_code == 200, response.text


@pytest.fixture
def policy_off_after(registry: Registry) -> Iterator[None]:
    """The session's project is shared: its policy is off again whatever the test did."""
    yield
    set_policy(registry, None)


def test_clients_pulling_a_refused_image_print_why_and_where_to_look(
    skopeo: Skopeo, podman: Podman, registry: Registry, tmp_path: Path, policy_off_after: None
) -> None:
    ref, digest = pushed_and_scanned(skopeo, registry, tmp_path)
    repository = ref.name.removeprefix(f"{registry.project}/").split("/")[0]
    set_policy(registry, "high")

    expected = (
        f"denied: pull refused: image {ref.name}@{digest} has 1 vulnerability finding of high "
        f"severity or above, and project {registry.project} refuses pulls of such images; see "
        f"them with GET /api/v1/projects/{registry.project}/repositories/{repository}/images/"
        f"{digest}/scan?image=app (or in the console)"
    )
    pulled_into = f"oci:{tmp_path / 'pulled'}:v1"
    refused = skopeo(
        "copy", *remote_flags(registry, "src-"), f"docker://{ref}", pulled_into, check=False
    )
    assert refused.returncode != 0 and expected in refused.stderr, refused.stderr
    podman_refused = podman("pull", *remote_flags(registry), str(ref), check=False)
    assert podman_refused.returncode != 0 and expected in podman_refused.stderr

    # What the message says to run works as printed, with the same credentials.
    address = re.search(r"see them with GET (\S+)", refused.stderr)
    assert address is not None
    with registry.http() as api:
        shown = api.get(address.group(1))
    assert shown.status_code == 200
    findings = {(f["advisory_id"], f["severity"]) for f in shown.json()["findings"]}
    assert ("GHSA-3fx5-fwvr-xrjg", "high") in findings

    set_policy(registry, None)
    skopeo.copy(f"docker://{ref}", pulled_into)
    pulled = podman.remote("pull", str(ref))
    assert pulled.returncode == 0
    assert podman("image", "inspect", "--format", "{{.Digest}}", str(ref)).stdout.strip() == digest


def test_oras_pulls_the_sbom_attached_as_a_referrer(
    skopeo: Skopeo,
    oras_client: oras.client.OrasClient,
    registry: Registry,
    tmp_path: Path,
) -> None:
    ref, digest = pushed_and_scanned(skopeo, registry, tmp_path)
    repository = ref.name.removeprefix(f"{registry.project}/").split("/")[0]
    images = f"/api/v1/projects/{registry.project}/repositories/{repository}/images"
    with registry.http() as api:
        response = api.post(f"{images}/{digest}/sbom/referrer", params={"image": "app"})
        assert response.status_code == 201, response.text
        attached = response.json()
        listed = api.get(
            f"/v2/{ref.name}/referrers/{digest}",
            params={"artifactType": "application/vnd.cyclonedx+json"},
        ).json()["manifests"]
    assert [m["digest"] for m in listed] == [attached["digest"]]

    out = tmp_path / "out"
    pulled = oras_client.pull(target=f"{ref.repository}@{attached['digest']}", outdir=str(out))
    assert [Path(p).name for p in pulled] == ["sbom.cdx.json"]
    document = (out / "sbom.cdx.json").read_bytes()
    assert "sha256:" + hashlib.sha256(document).hexdigest() == attached["sbom_digest"]
    sbom = json.loads(document)
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["version"] == digest
    assert "pkg:npm/ms@0.7.0" in {c.get("purl") for c in sbom["components"]}
