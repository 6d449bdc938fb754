"""An image built from real packages (tests/fixtures/packages), pushed with `skopeo copy` into a
repository that scans on push, is scanned by the server's background job: its findings are the
genuine OSV records of tests/fixtures/osv that name those releases."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from berth.services.scanning.results import ScanResult
from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.clients.commands import Skopeo
from tests.clients.layouts import OciLayout
from tests.clients.registry import OCI_MANIFEST, ImageRef, Registry
from tests.oci import OCI_CONFIG, OCI_LAYER_GZIP, Blob, diff_id
from tests.unit.services.test_scanning_layers import FIXTURES, vulnerable_app_layers

pytestmark = pytest.mark.clients


def package_image(work: Path) -> OciLayout:
    """A Debian 12 base and a layer with requests 2.30.0 and ms 0.7.0, as an OCI layout."""
    layout = OciLayout(work / "layout")
    layout.path.mkdir()
    (layout.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layers = [
        Blob(data, OCI_LAYER_GZIP)
        for data in vulnerable_app_layers(work / "site", mixin_deep=False)
    ]
    for blob in layers:
        layout.add_blob(blob.data)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id(b) for b in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.add_json(config, OCI_CONFIG),
        "layers": [
            {"mediaType": b.media_type, "digest": b.digest, "size": len(b.data)} for b in layers
        ],
    }
    (layout.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    layout.tag("v1", layout.add_json(manifest, OCI_MANIFEST))
    return layout


def test_skopeo_push_to_an_auto_scan_repository_is_scanned(
    skopeo: Skopeo, registry: Registry, tmp_path: Path
) -> None:
    repository = "scan" + uuid.uuid4().hex[:6]
    registry.server.create_repository(registry.project, repository, scan_mode="auto")

    async def load(s: Services) -> None:
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []

    registry.server._services(load)
    layout = package_image(tmp_path)
    ref = ImageRef(registry.address, registry.name(repository, "app"), "v1")
    skopeo.copy(f"oci:{layout.path}:v1", f"docker://{ref}")
    digest = layout.resolve("v1")["digest"]

    async def result(s: Services) -> ScanResult | None:
        repo = await s.repositories.require(registry.project, repository)
        return await s.scans.result(repo.id, "app", digest)

    deadline = time.monotonic() + 60  # the job looks every scan_check_interval (10 s)
    while True:
        found = registry.server._services(result)
        assert found is not None, "the push queued no scan"
        if found.state in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found.state == "done", found
    assert sorted((f.name, f.installed, f.advisory_id, f.fixed) for f in found.findings) == [
        ("ms", "0.7.0", "GHSA-3fx5-fwvr-xrjg", "0.7.1"),
        ("requests", "2.30.0", "PYSEC-2023-74", "2.31.0"),
    ]
