"""The filesystem driver against the blob store contract, plus what only it promises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.storage.base import BlobStore
from berth.storage.filesystem import FilesystemBlobStore
from tests.unit.storage.contract import BlobStoreContract, digest_of, put, write_upload

pytestmark = pytest.mark.anyio


class TestFilesystemBlobStore(BlobStoreContract):
    def make_store(self, tmp_path: Path) -> BlobStore:
        return FilesystemBlobStore(tmp_path / "blobs")


async def test_blobs_sit_under_their_algorithm_and_hex_prefix(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    digest = await put(store, b"layer")
    hex_digest = digest.split(":", 1)[1]
    assert store.local_path(digest) == tmp_path / "sha256" / hex_digest[:2] / hex_digest


async def test_a_crash_mid_commit_leaves_files_that_go_with_their_upload(tmp_path: Path) -> None:
    """`{id}.commit.{token}` and `{id}.copy` (left by a process that died) are listed as the
    upload and removed with it."""
    store = FilesystemBlobStore(tmp_path)
    upload_id = (await write_upload(store, b"data")).id
    for suffix in (".commit.0123456789abcdef", ".commit.fedcba9876543210", ".copy"):
        (store.uploads / f"{upload_id}{suffix}").write_bytes(b"left over")
    (store.uploads / "not-an-upload.tmp").write_bytes(b"someone else's")
    assert [found for found, _ in await store.list_uploads()] == [upload_id]
    await store.delete_upload(upload_id)
    assert sorted(os.listdir(store.uploads)) == ["not-an-upload.tmp"]


async def test_a_damaged_blob_is_kept_aside_for_inspection(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    digest = await put(store, b"bytes that rotted")
    await store.quarantine(digest)
    assert (store.damaged / digest.replace(":", "-")).read_bytes() == b"bytes that rotted"
    assert digest == digest_of(b"bytes that rotted")
