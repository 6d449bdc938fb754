"""oras-py: push a file as an OCI artifact, list its tag, pull it back."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import oras.client
import pytest

from tests.clients.registry import OCI_MANIFEST, Registry

pytestmark = pytest.mark.clients

NOTES_TYPE = "application/vnd.berth.test.notes.v1+txt"


def test_oras_push_then_pull_returns_the_same_files(
    oras_client: oras.client.OrasClient, registry: Registry, tmp_path: Path
) -> None:
    ref = registry.new_image("oras", tag="notes")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"release notes\n" + os.urandom(4096))
    bundle = tmp_path / "bundle"  # a directory: oras-py pushes it as a .tar.gz layer
    (bundle / "sub").mkdir(parents=True)
    (bundle / "sub" / "data.bin").write_bytes(os.urandom(2048))

    pushed = oras_client.push(
        target=str(ref),
        files=[f"{notes}:{NOTES_TYPE}", str(bundle)],
        manifest_annotations={"org.opencontainers.image.description": "berth client test"},
        disable_path_validation=True,
    )
    assert pushed.status_code == 201, pushed.text
    digest = pushed.headers["Docker-Content-Digest"]

    assert ref.tag in oras_client.get_tags(ref.repository)
    manifest = oras_client.get_manifest(str(ref))
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["annotations"]["org.opencontainers.image.description"] == "berth client test"
    assert manifest["layers"][0]["mediaType"] == NOTES_TYPE
    served = registry.get_manifest(ref.name, ref.tag)
    assert served.headers["Docker-Content-Digest"] == digest
    assert "sha256:" + hashlib.sha256(served.content).hexdigest() == digest

    out = tmp_path / "out"
    pulled = sorted(Path(path) for path in oras_client.pull(target=str(ref), outdir=str(out)))

    assert pulled == [out / "bundle", out / "notes.txt"]
    assert (out / "notes.txt").read_bytes() == notes.read_bytes()
    pulled_data = out / "bundle" / "sub" / "data.bin"
    assert pulled_data.read_bytes() == (bundle / "sub" / "data.bin").read_bytes()


def test_oras_chunked_upload_stores_the_whole_blob(
    oras_client: oras.client.OrasClient, registry: Registry, tmp_path: Path
) -> None:
    ref = registry.new_image("chunked", tag="big")
    blob = tmp_path / "big.bin"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 17))

    pushed = oras_client.push(
        target=str(ref),
        files=[str(blob)],
        do_chunked=True,
        chunk_size=1024 * 1024,
        disable_path_validation=True,
    )
    assert pushed.status_code == 201, pushed.text

    out = tmp_path / "out"
    oras_client.pull(target=str(ref), outdir=str(out))
    assert (out / "big.bin").read_bytes() == blob.read_bytes()
