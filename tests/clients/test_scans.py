"""An image built from real packages (tests/fixtures/packages), pushed with `skopeo copy` into a
repository that scans on push, is scanned by the server's background job: its findings are the
genuine OSV records of tests/fixtures/osv that name those releases."""

from __future__ import annotations

import gzip
import json
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from berth.services.scanning.results import ScanResult
from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.clients.commands import Skopeo
from tests.clients.layouts import OciLayout, umoci_image
from tests.clients.registry import OCI_MANIFEST, ImageRef, Registry
from tests.oci import OCI_CONFIG, OCI_LAYER_GZIP, Blob, diff_id
from tests.unit.services.test_scanning_layers import (
    DPKG,
    FIXTURES,
    PACKAGES,
    deb_entries,
    vulnerable_app_layers,
)

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


def scanned(registry: Registry, repository: str, image: str, digest: str) -> ScanResult:
    """The scan of an image pushed into an auto-scan repository, once it has finished (or
    after a minute: the job looks every scan_check_interval, 10 s)."""

    async def result(s: Services) -> ScanResult | None:
        repo = await s.repositories.require(registry.project, repository)
        return await s.scans.result(repo.id, image, digest)

    deadline = time.monotonic() + 60
    while True:
        found = registry.server._services(result)
        assert found is not None, "the push queued no scan"
        if found.state in ("done", "failed") or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def load_vulnerability_data(registry: Registry) -> None:
    async def load(s: Services) -> None:
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []

    registry.server._services(load)


def test_skopeo_push_to_an_auto_scan_repository_is_scanned(
    skopeo: Skopeo, registry: Registry, tmp_path: Path
) -> None:
    repository = "scan" + uuid.uuid4().hex[:6]
    registry.server.create_repository(registry.project, repository, scan_mode="auto")

    load_vulnerability_data(registry)
    layout = package_image(tmp_path)
    ref = ImageRef(registry.address, registry.name(repository, "app"), "v1")
    skopeo.copy(f"oci:{layout.path}:v1", f"docker://{ref}")
    digest = layout.resolve("v1")["digest"]
    found = scanned(registry, repository, "app", digest)
    assert found.state == "done", found
    assert sorted((f.name, f.installed, f.advisory_id, f.fixed) for f in found.findings) == [
        ("ms", "0.7.0", "GHSA-3fx5-fwvr-xrjg", "0.7.1"),
        ("requests", "2.30.0", "PYSEC-2023-74", "2.31.0"),
    ]


def test_an_image_built_with_umoci_is_scanned(
    skopeo: Skopeo, registry: Registry, tmp_path: Path
) -> None:
    """umoci (Debian's 0.4.7) ends a layer right after its last file's data, without the
    padding and empty blocks that close a tar; docker, containerd and podman run such an
    image, and its scan lists its packages (it failed: "not a readable tar layer: unexpected
    end of data")."""
    repository = "umoci" + uuid.uuid4().hex[:6]
    registry.server.create_repository(registry.project, repository, scan_mode="auto")
    load_vulnerability_data(registry)
    _, stanza = deb_entries(PACKAGES / "zlib1g_1.2.13.dfsg-1_amd64.deb")
    files = {"etc/os-release": b"ID=debian\nVERSION_ID=12\n", DPKG: stanza}
    image = umoci_image(tmp_path / "layout", "v1", files)
    (layer,) = image.layer_digests
    assert len(gzip.decompress(image.layout.blob(layer))) % tarfile.BLOCKSIZE  # cut as said
    ref = ImageRef(registry.address, registry.name(repository, "app"), "v1")
    skopeo.copy(image.oci_ref, f"docker://{ref}")

    found = scanned(registry, repository, "app", image.manifest_digest)

    assert found.state == "done", found
    assert found.packages == 1
