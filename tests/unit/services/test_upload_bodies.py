"""A PATCH or PUT body arrives in chunks of whatever sizes the server hands over; the upload
service hashes and writes them a batch at a time without joining them (`bodies.pipe`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from berth.domain.errors import BlobUploadUnknown
from berth.metadata.database import Database
from berth.services.uploads import Uploads
from berth.services.uploads.bodies import BUFFER_BYTES
from berth.storage.filesystem import FilesystemBlobStore
from tests.unit.services.test_uploads_nodes import REPO, digest_of, read_blob, run


async def chunked(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """`data` in chunks of `sizes`, repeated in turn (a size 0 is an empty chunk)."""
    start = index = 0
    while start < len(data):
        size = sizes[index % len(sizes)]
        yield data[start : start + size]
        start += size
        index += 1


@pytest.mark.parametrize(
    ("size", "chunk_sizes"),
    [
        # Thousands of tiny chunks (and empty ones) per batch, batches ending mid-chunk.
        (2 * BUFFER_BYTES + 12_345, [1, 0, 7, 4093, 513]),
        # One chunk larger than two batches, then a tail.
        (2 * BUFFER_BYTES + 3, [2 * BUFFER_BYTES + 1, 2]),
        # Chunks that fill a batch exactly.
        (3 * BUFFER_BYTES, [BUFFER_BYTES // 4]),
    ],
    ids=["tiny-chunks", "one-huge-chunk", "exact-batches"],
)
def test_a_body_in_chunks_of_any_size_lands_byte_exact(
    size: int, chunk_sizes: list[int], database_url: str, tmp_path: Path
) -> None:
    data = os.urandom(size)

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        uploads = Uploads(db, store)
        upload = await uploads.start(REPO, "app")
        upload = await uploads.append(upload, chunked(data, chunk_sizes), None)
        assert upload.offset == size
        assert upload.digest_at_offset == digest_of(data)
        digest = await uploads.complete(REPO, upload, digest_of(data), None, None)
        assert await read_blob(store, digest) == data

    run(database_url, tmp_path / "blobs", scenario)


class ClientGone(Exception):
    """The body broke off: the client closed its connection."""


def test_a_client_gone_mid_batch_leaves_no_blob_and_the_upload_where_it_was(
    database_url: str, tmp_path: Path
) -> None:
    """The body breaks off in its second batch, while the first is being hashed and written:
    the upload stays at the offset acknowledged before, no blob of any of its bytes appears,
    and the chunk sent again completes the blob."""
    first = os.urandom(100_000)
    data = os.urandom(BUFFER_BYTES + BUFFER_BYTES // 2)

    async def broken_off() -> AsyncIterator[bytes]:
        async for chunk in chunked(data[: BUFFER_BYTES + 300_000], [65_536]):
            yield chunk
        raise ClientGone

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        uploads = Uploads(db, store)
        upload = await uploads.start(REPO, "app")
        upload = await uploads.append(upload, chunked(first, [65_536]), None)
        with pytest.raises(ClientGone):
            await uploads.append(upload, broken_off(), None)
        assert (await uploads.get(REPO, "app", upload.id)).offset == len(first)
        with pytest.raises(FileNotFoundError):
            await read_blob(store, digest_of(first + data[:BUFFER_BYTES]))
        assert [name async for name in store.iter_digests()] == []
        whole = first + data
        digest = await uploads.complete(
            REPO, upload, digest_of(whole), chunked(data, [65_536]), None
        )
        assert await read_blob(store, digest) == whole
        with pytest.raises(BlobUploadUnknown):
            await uploads.get(REPO, "app", upload.id)

    run(database_url, tmp_path / "blobs", scenario)
