"""The behaviour every blob store must have, whatever keeps the bytes (after Distribution's
`registry/storage/driver/testsuites`).

A driver's test file subclasses `BlobStoreContract` and says how to make an empty store in
`make_store` (or overrides the `store` fixture, which may be async, for a store that needs
setting up and removing); pytest then runs every test below against it. The tests use only
the `BlobStore` interface, so a driver that passes them can stand in for any other. Each test
runs in one event loop (anyio's pytest plugin), as a server process uses its store.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from berth.domain.errors import DigestInvalid
from berth.storage.base import BlobStore

MiB = 1024 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def new_upload_id() -> str:
    return uuid.uuid4().hex  # what the upload service names scratch objects


@dataclass
class Scratch:
    """An upload as the upload service keeps it: its id, the offset acknowledged to the client
    and the pieces recorded with it (on a store of pieces)."""

    store: BlobStore
    id: str = field(default_factory=new_upload_id)
    offset: int = 0
    pieces: list[str] = field(default_factory=list)

    async def append(
        self, data: bytes, chunk: int = 64 * 1024, *, acknowledged: bool = True
    ) -> None:
        """One PATCH at the acknowledged offset, in `chunk`-sized writes; a PATCH that is not
        `acknowledged` (its node died before answering) is not recorded."""
        writer = await self.store.open_upload(self.id, self.offset)
        try:
            for start in range(0, len(data), chunk):
                await writer.write([data[start : start + chunk]])
        finally:
            await writer.close()
        if acknowledged:
            self.offset += len(data)
            self.pieces += writer.pieces

    async def read(self, length: int | None = None) -> bytes:
        length = self.offset if length is None else length
        return await collect(self.store.read_upload(self.id, length, self.pieces))

    async def commit(self, digest: str) -> None:
        await self.store.commit_upload(self.id, digest, self.pieces)


async def write_upload(store: BlobStore, data: bytes, chunk: int = 64 * 1024) -> Scratch:
    """Write `data` to a new upload in one PATCH of `chunk`-sized writes."""
    scratch = Scratch(store)
    await scratch.append(data, chunk)
    return scratch


async def put(store: BlobStore, data: bytes) -> str:
    """Store `data` as a blob the way a push does: upload, commit, drop the scratch object."""
    scratch = await write_upload(store, data)
    digest = digest_of(data)
    await scratch.commit(digest)
    await store.delete_upload(scratch.id)
    return digest


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def read_all(store: BlobStore, digest: str, start: int = 0, end: int | None = None) -> bytes:
    return await collect(store.read(digest, start, end))


async def collect_digests(store: BlobStore) -> list[str]:
    return [digest async for digest in store.iter_digests()]


async def listed(store: BlobStore) -> set[str]:
    return set(await collect_digests(store))


def payload(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ from chunk to chunk, so a misplaced chunk shows."""
    block = hashlib.sha512(seed.to_bytes(8, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


class BlobStoreContract(abc.ABC):
    """Run against `make_store`'s store by subclassing (as `TestFilesystemBlobStore`)."""

    pytestmark = pytest.mark.anyio

    @abc.abstractmethod
    def make_store(self, tmp_path: Path) -> BlobStore:
        """An empty store of the driver under test, private to one test."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:
        return self.make_store(tmp_path)

    # ------------------------------------------------------------ writing and reading back

    @pytest.mark.parametrize("size", [0, 1, 4096, 5 * MiB + 3], ids=["empty", "1B", "4k", "5MiB"])
    async def test_a_committed_blob_reads_back_whole(self, store: BlobStore, size: int) -> None:
        data = payload(size)
        digest = await put(store, data)
        assert await store.stat(digest) == size
        assert await read_all(store, digest) == data

    async def test_writes_of_any_size_append_in_order(self, store: BlobStore) -> None:
        data = payload(3 * MiB + 17, seed=1)
        scratch = await write_upload(store, data, chunk=MiB - 1)
        await scratch.append(data[:5], chunk=2)
        assert await scratch.read() == data + data[:5]

    async def test_one_write_of_many_parts_appends_them_in_order(self, store: BlobStore) -> None:
        """A push hands over a batch of the body's chunks as received in one write: thousands
        of tiny ones (more than one gathering write takes), empty ones, one large one."""
        data = payload(2 * MiB + 5000, seed=4)
        sizes = [1, 0, 3, 200] * 1000
        parts, start = [], 0
        for size in sizes:
            parts.append(data[start : start + size])
            start += size
        parts.append(data[start:])
        scratch = Scratch(store)
        writer = await store.open_upload(scratch.id, 0)
        try:
            await writer.write(parts[:2000])
            await writer.write(parts[2000:])
        finally:
            await writer.close()
        scratch.offset, scratch.pieces = len(data), writer.pieces
        assert await scratch.read() == data

    async def test_a_local_path_if_given_holds_the_blob(self, store: BlobStore) -> None:
        data = payload(10_000)
        digest = await put(store, data)
        path = store.local_path(digest)
        assert path is None or path.read_bytes() == data

    # ------------------------------------------------------------ uploads are invisible

    async def test_an_upload_is_no_blob_until_committed(self, store: BlobStore) -> None:
        data = payload(2 * MiB, seed=2)
        scratch = await write_upload(store, data)
        digest = digest_of(data)
        assert await store.stat(digest) is None
        assert digest not in await listed(store)
        with pytest.raises(FileNotFoundError):
            await read_all(store, digest)
        await scratch.commit(digest)
        assert await store.stat(digest) == len(data)
        assert await listed(store) == {digest}

    async def test_a_half_written_upload_is_never_visible(self, store: BlobStore) -> None:
        data = payload(MiB, seed=3)
        digest = digest_of(data)
        writer = await store.open_upload(new_upload_id(), 0)
        try:
            await writer.write([data[: len(data) // 2]])
            assert await store.stat(digest) is None
            assert await listed(store) == set()
        finally:
            await writer.close()

    async def test_an_upload_goes_on_at_its_offset_and_drops_bytes_past_it(
        self, store: BlobStore
    ) -> None:
        """A client resumes where the server last said it was: bytes stored past that (a
        write it was never told succeeded) are discarded, not kept in the middle."""
        first, lost, rest = b"a" * 1000, b"LOST" * 10, b"b" * 500
        scratch = await write_upload(store, first)
        await scratch.append(lost, acknowledged=False)
        await scratch.append(rest)
        assert await scratch.read() == first + rest
        assert await scratch.read(10) == first[:10]
        await scratch.commit(digest_of(first + rest))
        assert await read_all(store, digest_of(first + rest)) == first + rest

    async def test_an_upload_that_lost_its_bytes_cannot_go_on(self, store: BlobStore) -> None:
        """Removed (garbage collection took it as abandoned): it never comes back as zeros;
        the store says so when the upload is opened, read or committed."""
        scratch = await write_upload(store, b"x" * 100)
        with pytest.raises(FileNotFoundError):
            await scratch.read(101)
        await store.delete_upload(scratch.id)
        assert scratch.id not in dict(await store.list_uploads())
        with pytest.raises(FileNotFoundError):
            await scratch.read(50)
        with pytest.raises(FileNotFoundError):
            await scratch.append(b"more")
            await scratch.commit(digest_of(b"x" * 100 + b"more"))

    async def test_reading_a_missing_upload_fails(self, store: BlobStore) -> None:
        with pytest.raises(FileNotFoundError):
            await Scratch(store).read(10)

    # ------------------------------------------------------------ commit

    async def test_a_commit_can_be_made_again(self, store: BlobStore) -> None:
        """The scratch object stays until deleted: a retried commit, or one made after
        garbage collection removed the blob meanwhile, stores the blob again."""
        data = payload(70_000, seed=4)
        digest = digest_of(data)
        scratch = await write_upload(store, data)
        await scratch.commit(digest)
        await scratch.commit(digest)
        assert await read_all(store, digest) == data
        await store.delete(digest)
        await scratch.commit(digest)
        assert await read_all(store, digest) == data

    async def test_a_committed_blob_never_changes_when_its_upload_goes_on(
        self, store: BlobStore
    ) -> None:
        data = payload(50_000, seed=5)
        digest = digest_of(data)
        scratch = await write_upload(store, data[:1000])
        await scratch.append(data[1000:])
        await scratch.commit(digest)
        # The process died before recording the commit: the client goes on from 1000.
        scratch.offset, scratch.pieces = 1000, scratch.pieces[:1]
        await scratch.append(b"z" * 5000)
        assert await read_all(store, digest) == data
        await store.delete_upload(scratch.id)
        assert await read_all(store, digest) == data

    async def test_committing_the_same_content_again_keeps_one_blob(self, store: BlobStore) -> None:
        data = payload(30_000, seed=6)
        first, second = await put(store, data), await put(store, data)
        assert first == second
        assert await listed(store) == {first}
        assert await read_all(store, first) == data

    async def test_concurrent_writers_of_the_same_content(self, store: BlobStore) -> None:
        data = payload(2 * MiB + 5, seed=7)
        digest = digest_of(data)
        await asyncio.gather(*(put(store, data) for _ in range(8)))
        assert await read_all(store, digest) == data
        assert await listed(store) == {digest}
        assert await store.list_uploads() == []

    async def test_concurrent_commits_of_one_upload(self, store: BlobStore) -> None:
        """A client retrying a PUT while the first is still being committed (two processes)."""
        data = payload(MiB, seed=8)
        digest = digest_of(data)
        scratch = await write_upload(store, data)
        for _ in range(5):
            # Stored already from another upload of the same bytes, as after a push elsewhere.
            await store.delete(digest)
            await put(store, data)
            await asyncio.gather(*(scratch.commit(digest) for _ in range(8)))
            assert await read_all(store, digest) == data
        await store.delete_upload(scratch.id)
        assert await read_all(store, digest) == data

    async def test_pushing_a_blob_again_repairs_a_damaged_copy(self, store: BlobStore) -> None:
        data = payload(40_000, seed=9)
        digest = await put(store, data)
        await store.quarantine(digest)
        assert await store.stat(digest) is None
        assert digest not in await listed(store)
        assert await put(store, data) == digest
        assert await read_all(store, digest) == data

    async def test_a_good_copy_stored_since_the_damaged_one_was_read_is_not_set_aside(
        self, store: BlobStore
    ) -> None:
        """A pull or the scrub reads a damaged copy while the blob is pushed again: the
        quarantine of the copy it read must not take the good one stored since."""
        data = payload(40_000, seed=10)
        digest = digest_of(data)
        assert await store.stored_copy(digest) is None
        damaged = await write_upload(store, bytes(len(data)))  # other bytes under the digest
        await damaged.commit(digest)
        read = await store.stored_copy(digest)
        assert read is not None and read.size == len(data)
        assert await put(store, data) == digest  # pushed again: stored in its place
        now = await store.stored_copy(digest)
        assert now is not None and now.size == len(data) and now.version != read.version
        await store.quarantine(digest, read.version)
        assert await read_all(store, digest) == data
        assert digest in await listed(store)
        await store.quarantine(digest, now.version)  # the copy there now, when it is the one read
        assert await store.stat(digest) is None
        assert await store.stored_copy(digest) is None

    # ------------------------------------------------------------ digests

    @pytest.mark.parametrize(
        "digest", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "a" * 32, "x"]
    )
    async def test_a_malformed_digest_is_refused_everywhere(
        self, store: BlobStore, digest: str
    ) -> None:
        scratch = await write_upload(store, b"data")
        with pytest.raises(DigestInvalid):
            await scratch.commit(digest)
        with pytest.raises(DigestInvalid):
            await store.stat(digest)
        with pytest.raises(DigestInvalid):
            await read_all(store, digest)
        with pytest.raises(DigestInvalid):
            await store.delete(digest)

    async def test_sha512_blobs_are_stored_and_listed(self, store: BlobStore) -> None:
        data = payload(1000, seed=10)
        digest = "sha512:" + hashlib.sha512(data).hexdigest()
        scratch = await write_upload(store, data)
        await scratch.commit(digest)
        assert await read_all(store, digest) == data
        assert await listed(store) == {digest}

    # ------------------------------------------------------------ ranges

    async def test_ranges_read_exactly_their_bytes(self, store: BlobStore) -> None:
        data = payload(3 * MiB + 11, seed=11)
        digest = await put(store, data)
        size = len(data)
        for start, end in [
            (0, 1),
            (0, size),
            (1, size - 1),
            (MiB - 1, MiB + 1),  # across a read chunk's edge
            (size - 1, size),
            (5, None),
            (size, None),
            (size, size),
            (7, 7),
        ]:
            assert await read_all(store, digest, start, end) == data[start:end], (start, end)

    async def test_a_range_past_the_end_stops_at_the_end(self, store: BlobStore) -> None:
        data = payload(1000, seed=12)
        digest = await put(store, data)
        assert await read_all(store, digest, 900, 5000) == data[900:]
        assert await read_all(store, digest, 2000, 3000) == b""

    # ------------------------------------------------------------ deleting

    async def test_deleting_is_idempotent(self, store: BlobStore) -> None:
        data = payload(100, seed=13)
        digest = await put(store, data)
        await store.delete(digest)
        await store.delete(digest)
        assert await store.stat(digest) is None
        with pytest.raises(FileNotFoundError):
            await read_all(store, digest)
        await store.delete(digest_of(b"never stored"))
        await store.delete_upload(new_upload_id())
        await store.quarantine(digest_of(b"never stored either"))

    async def test_delete_many_removes_those_named_and_skips_absent_ones(
        self, store: BlobStore
    ) -> None:
        digests = [await put(store, payload(100 + n, seed=n)) for n in range(5)]
        await store.delete_many([*digests[:3], digest_of(b"absent")])
        assert await listed(store) == set(digests[3:])
        await store.delete_many(digests[:3])
        assert await listed(store) == set(digests[3:])

    async def test_deleting_an_upload_keeps_the_blob_it_made(self, store: BlobStore) -> None:
        data = payload(10_000, seed=14)
        digest = digest_of(data)
        scratch = await write_upload(store, data)
        await scratch.commit(digest)
        await store.delete_upload(scratch.id)
        assert await read_all(store, digest) == data
        with pytest.raises(FileNotFoundError):
            await scratch.read(10)

    # ------------------------------------------------------------ listing

    async def test_every_blob_is_listed_once_and_nothing_else(self, store: BlobStore) -> None:
        assert await listed(store) == set()
        digests = {await put(store, payload(10 + n, seed=100 + n)) for n in range(40)}
        await write_upload(store, b"an upload is not a blob")
        walked = await collect_digests(store)
        assert sorted(walked) == sorted(digests)

    async def test_blobs_are_listed_with_their_age(self, store: BlobStore) -> None:
        digests = {await put(store, payload(20 + n, seed=200 + n)) for n in range(3)}
        await write_upload(store, b"not a blob")
        await store.quarantine(digests.pop())  # set aside: no longer a blob
        blobs = dict([entry async for entry in store.list_blobs()])
        assert set(blobs) == digests
        assert all(abs(modified - time.time()) < 3600 for modified in blobs.values())

    async def test_uploads_are_listed_with_their_age(self, store: BlobStore) -> None:
        assert await store.list_uploads() == []
        kept, removed = await write_upload(store, b"one"), await write_upload(store, b"two")
        await store.delete_upload(removed.id)
        uploads = dict(await store.list_uploads())
        assert set(uploads) == {kept.id}
        assert abs(uploads[kept.id] - time.time()) < 3600  # last modified, as a Unix time

    # ------------------------------------------------------------ checks

    async def test_the_write_check_passes_and_leaves_nothing(self, store: BlobStore) -> None:
        await store.check_writable()
        assert await listed(store) == set()
        assert await store.list_uploads() == []
