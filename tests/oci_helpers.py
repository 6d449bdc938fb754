"""Small builders for registry content, shared by API tests."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(client: httpx.Client, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def image(client: httpx.Client, name: str, layers: int = 1, **extra: Any) -> bytes:
    """Push a config and random layers; return an OCI image manifest referencing them."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rand": os.urandom(8).hex()}
    ).encode()
    push_blob(client, name, config)
    layer_descriptors = []
    for _ in range(layers):
        layer = os.urandom(1024)
        push_blob(client, name, layer)
        layer_descriptors.append(descriptor(OCI_LAYER, layer))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layer_descriptors,
        **extra,
    }
    return json.dumps(manifest).encode()


def put_manifest(
    client: httpx.Client, name: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
) -> httpx.Response:
    return client.put(
        f"/v2/{name}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
    )


def error_code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["code"])
