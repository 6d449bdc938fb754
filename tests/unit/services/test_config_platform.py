"""An image config's platform is read with a bound, whatever size its manifest declares:
manifests accepted before sizes were checked may say 2 bytes of a config of hundreds of MB."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

from berth.services.image_platforms import MAX_CONFIG_READ, config_platform
from berth.storage.filesystem import FilesystemBlobStore


async def _store_blob(store: FilesystemBlobStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload_id = uuid.uuid4().hex
    writer = await store.open_upload(upload_id, 0)
    await writer.write([data])
    await writer.close()
    await store.commit_upload(upload_id, digest)
    await store.delete_upload(upload_id)
    return digest


def _config(padding: int) -> bytes:
    return json.dumps({"os": "linux", "architecture": "arm64", "pad": "x" * padding}).encode()


def test_a_config_within_the_limit_names_its_platform(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")

    async def scenario() -> str | None:
        return await config_platform(store, await _store_blob(store, _config(1000)))

    assert asyncio.run(scenario()) == "linux/arm64"


def test_a_config_over_the_limit_is_not_read_whole(tmp_path: Path) -> None:
    """Valid JSON naming a platform, but larger than MAX_CONFIG_READ: read whole, it would
    name linux/arm64; read with the bound, it is cut short and names nothing."""
    store = FilesystemBlobStore(tmp_path / "blobs")

    async def scenario() -> str | None:
        return await config_platform(store, await _store_blob(store, _config(MAX_CONFIG_READ)))

    assert asyncio.run(scenario()) is None


def test_a_missing_config_names_no_platform(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    missing = "sha256:" + hashlib.sha256(b"never stored").hexdigest()
    assert asyncio.run(config_platform(store, missing)) is None
