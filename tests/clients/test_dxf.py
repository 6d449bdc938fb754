"""python-dxf: the registry as a blob store (push_blob, set_alias, pull_blob)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests
from dxf import DXF, DXFBase

from tests.clients.registry import Registry

pytestmark = pytest.mark.clients


def dxf_client(registry: Registry, name: str) -> DXF:
    """python-dxf trusting the test CA (given explicitly: REQUESTS_CA_BUNDLE may be set), that
    answers each auth challenge with a token for the access key."""
    assert registry.credentials
    username, password = registry.credentials

    def authenticate(dxf: DXFBase, response: requests.Response) -> None:
        dxf.authenticate(username, password, response=response)

    return DXF(
        registry.address, name, auth=authenticate, tlsverify=str(registry.trust.ca), timeout=60
    )


def pull(dxf: DXF, digest: str) -> bytes:
    chunks = dxf.pull_blob(digest)  # an iterator of chunks (a tuple only with size=True)
    assert not isinstance(chunks, tuple)
    return b"".join(chunks)


def test_dxf_push_blob_alias_and_pull_blob_round_trip(registry: Registry, tmp_path: Path) -> None:
    ref = registry.new_image("dxf", tag="data")
    content = os.urandom(1024 * 1024 + 5)
    source = tmp_path / "blob.bin"
    source.write_bytes(content)
    expected = "sha256:" + hashlib.sha256(content).hexdigest()

    with dxf_client(registry, ref.name) as dxf:
        assert dxf.push_blob(str(source)) == expected
        dxf.set_alias(ref.tag, expected)

        assert ref.tag in dxf.list_aliases()
        assert dxf.get_alias(ref.tag) == [expected]
        assert dxf.blob_size(expected) == len(content)
        pulled = pull(dxf, expected)

    assert pulled == content
    assert "sha256:" + hashlib.sha256(pulled).hexdigest() == expected


def test_dxf_streamed_push_blob_stores_every_chunk(registry: Registry, tmp_path: Path) -> None:
    """Data given as an iterator goes up in one PUT with chunked transfer encoding."""
    ref = registry.new_image("dxf-stream")
    chunks = [os.urandom(64 * 1024) for _ in range(5)]
    content = b"".join(chunks)
    digest = "sha256:" + hashlib.sha256(content).hexdigest()

    with dxf_client(registry, ref.name) as dxf:
        assert dxf.push_blob(data=iter(chunks), digest=digest) == digest
        pulled = pull(dxf, digest)

    assert pulled == content
