"""The filesystem driver against the blob store contract, plus what only it promises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.storage import filesystem
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


async def test_an_upload_synced_in_the_background_as_it_streams_reads_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Syncs every 64 KiB while 4 MiB are written in uneven pieces: every byte lands, in
    order, and the upload commits as usual."""
    monkeypatch.setattr(filesystem, "WRITEBACK_EVERY", 64 * 1024)
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(4 * 1024 * 1024 + 17)
    scratch = await write_upload(store, data, chunk=40_000)
    await scratch.commit(digest_of(data))
    assert b"".join([chunk async for chunk in store.read(digest_of(data))]) == data


async def test_a_background_sync_that_fails_fails_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of the sync started while the upload streams is the upload's error, when the
    writer closes at the latest: a sync that saw a write error may be the only one told, so
    the commit's own fsync cannot be trusted to report it. /dev/null cannot be synced
    (EINVAL), which stands in for a disk's write error."""
    monkeypatch.setattr(filesystem, "WRITEBACK_EVERY", 1024)
    writer = filesystem._FileUploadWriter(os.open(os.devnull, os.O_WRONLY))
    await writer.write(b"x" * 2048)  # starts a sync
    with pytest.raises(OSError):
        await writer.close()
