"""A project that refuses pulls of vulnerable images, met by real clients: skopeo and podman
pulling an image whose scan found a high finding (ms 0.7.0, GHSA-3fx5-fwvr-xrjg, from the
genuine records of tests/fixtures/osv) print Berth's DENIED message; the address it gives shows
the findings; with the policy off both pull it."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.services.scanning.scans import ScanResult
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
    repository = "pol" + uuid.uuid4().hex[:6]
    registry.server.create_repository(registry.project, repository)
    layout = npm_image(tmp_path)
    ref = ImageRef(registry.address, registry.name(repository, "app"), "v1")
    skopeo.copy(f"oci:{layout.path}:v1", f"docker://{ref}")
    digest = layout.resolve("v1")["digest"]

    async def scan(s: Services) -> ScanResult:
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []
        repo = await s.repositories.require(registry.project, repository)
        await s.scans.request_scan(repo, "app", digest, "tests")
        return await s.scans.scan_now(repo.id, "app", digest)

    assert registry.server._services(scan).counts.high == 1
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
