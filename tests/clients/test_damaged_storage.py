"""skopeo meets a blob damaged on disk: it is never served as if whole, and pushing the image
again repairs it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.clients.commands import Skopeo
from tests.clients.layouts import OciLayout, sha256, umoci_image
from tests.clients.registry import Registry
from tests.clients.tools import CommandFailed

pytestmark = pytest.mark.clients


def test_a_damaged_layer_is_refused_and_pushing_again_repairs_it(
    skopeo: Skopeo, registry: Registry, tmp_path: Path
) -> None:
    image = umoci_image(tmp_path / "layout", "v1", {"damaged.txt": uuid.uuid4().bytes * 64})
    ref = registry.new_image("damaged")
    skopeo.copy(image.oci_ref, f"docker://{ref}")
    layer = image.layer_digests[0]
    stored = registry.server.data_dir / "blobs" / "sha256" / layer[7:9] / layer[7:]
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))  # the same size: only its digest tells

    with pytest.raises(CommandFailed) as refused:
        skopeo.copy(f"docker://{ref}", f"oci:{tmp_path / 'pulled'}:v1")
    # Not the damaged bytes (skopeo would report a digest mismatch): the blob is unknown.
    printed = str(refused.value)
    assert f"reading blob {layer}" in printed and "404 (Not Found)" in printed, printed[-2000:]

    check = registry.server.cli("storage", "check", "--json", check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert layer in json.loads(check.stdout)["missing"]  # set aside: the next push stores it

    skopeo.copy(image.oci_ref, f"docker://{ref}")
    pulled = OciLayout(tmp_path / "repaired")
    skopeo.copy(f"docker://{ref}", f"oci:{pulled.path}:v1")
    assert sha256(pulled.blob(layer)) == layer
    assert registry.server.cli("storage", "check", "--json").returncode == 0
