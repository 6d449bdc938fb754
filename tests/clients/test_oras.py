"""oras-py: push a file as an OCI artifact, list its tag, pull it back; with an access key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import oras.auth
import oras.client
import oras.defaults
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
    """PATCHes of oras-py's own chunk size (16 MiB), then a short last one.

    Its Basic backend sends every request without credentials first and repeats it after the
    401: the server must answer that 401 to a 16 MiB PATCH in a way a client still sending the
    body can read (requests reads the response only once the body is sent).
    """
    ref = registry.new_image("chunked", tag="big")
    blob = tmp_path / "big.bin"
    blob.write_bytes(os.urandom(oras.defaults.default_chunksize + 17))

    pushed = oras_client.push(
        target=str(ref), files=[str(blob)], do_chunked=True, disable_path_validation=True
    )
    assert pushed.status_code == 201, pushed.text

    out = tmp_path / "out"
    oras_client.pull(target=str(ref), outdir=str(out))
    assert (out / "big.bin").read_bytes() == blob.read_bytes()


def test_oras_token_backend_pulls_with_a_bearer_token(
    oras_client: oras.client.OrasClient, registry: Registry, tmp_path: Path
) -> None:
    """oras-py's default backend follows Berth's Bearer challenge: the access key goes to the
    token endpoint, and the pull runs on the token it returns."""
    ref = registry.new_image("oras-token", tag="notes")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(os.urandom(2048))
    pushed = oras_client.push(target=str(ref), files=[str(notes)], disable_path_validation=True)
    assert pushed.status_code == 201, pushed.text
    assert registry.credentials
    key_id, secret = registry.credentials
    token_client = oras.client.OrasClient(
        hostname=registry.address, tls_verify=str(registry.trust.ca), auth_backend="token"
    )
    token_client.login(key_id, secret, hostname=registry.address, config_path=str(tmp_path / "c"))

    out = tmp_path / "out"
    token_client.pull(target=str(ref), outdir=str(out))

    assert (out / "notes.txt").read_bytes() == notes.read_bytes()
    assert isinstance(token_client.auth, oras.auth.TokenAuth)
    assert token_client.auth.token, "oras-py pulled without a token"
