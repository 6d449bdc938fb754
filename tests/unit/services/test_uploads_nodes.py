"""Uploads on the filesystem store taken on by another worker or node: two upload services on
one database and one blob directory stand for two processes (each with its own memory)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

import berth.services.uploads.hashes as upload_hashes
from berth.domain.errors import RangeNotSatisfiable
from berth.domain.hash_state import resumable_sha256
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import projects, repositories
from berth.services.uploads import Uploads
from berth.services.uploads.bodies import BUFFER_BYTES
from berth.services.uploads.upload import Upload
from berth.storage.direct_writes import Appender
from berth.storage.filesystem import FilesystemBlobStore

MiB = 1024 * 1024
REPO = RepositoryRef(1, 1, "proj", "app", False, True)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(
    url: str, root: Path, scenario: Callable[[Database, FilesystemBlobStore], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        db = Database(url)
        try:
            async with db.write() as conn:
                await conn.execute(insert(projects).values(id=1, name="proj"))
                await conn.execute(insert(repositories).values(id=1, project_id=1, name="app"))
            return await scenario(db, FilesystemBlobStore(root))
        finally:
            await db.dispose()

    return asyncio.run(main())


async def body(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


async def read_blob(store: FilesystemBlobStore, digest: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(digest)])


def test_of_two_patches_from_one_offset_one_wins_and_the_blob_holds_its_bytes(
    database_url: str, tmp_path: Path
) -> None:
    """A client retried a chunk on another worker while its first try was still being
    written into the same scratch file: one of the two is refused with the upload's offset,
    and the blob holds exactly the bytes of the one acknowledged (never a mix)."""

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        first, second = Uploads(db, store), Uploads(db, store)
        upload = await first.start(REPO, "app")
        slow_bytes, quick_bytes = b"Y" * (2 * MiB), os.urandom(2 * MiB)
        whole = f"0-{2 * MiB - 1}"
        receiving = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            receiving.set()  # this request is under way: the other one starts now
            await asyncio.sleep(1.0)
            async for piece in body(slow_bytes):
                yield piece

        async def quick_try() -> Upload:
            await receiving.wait()
            return await first.append(upload, body(quick_bytes), whole)

        slow = asyncio.ensure_future(second.append(upload, slow_body(), whole))
        outcomes = await asyncio.gather(slow, quick_try(), return_exceptions=True)
        won = [o for o in outcomes if isinstance(o, Upload)]
        refused = [o for o in outcomes if isinstance(o, RangeNotSatisfiable)]
        assert len(won) == 1 and len(refused) == 1, outcomes
        assert refused[0].current_size == 2 * MiB
        winner = slow_bytes if outcomes[0] is won[0] else quick_bytes
        digest = await first.complete(REPO, won[0], digest_of(winner), None, None)
        assert await read_blob(store, digest) == winner

    run(database_url, tmp_path / "blobs", scenario)


@pytest.mark.parametrize(
    "resumable",
    [(False, False, False), (True, False, True), (False, True, True)],
    ids=["no-saved-state", "saved-state-ignored-midway", "no-state-then-saved"],
)
def test_a_node_without_the_saved_hash_state_hashes_the_stored_bytes_again(
    resumable: tuple[bool, bool, bool],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where OpenSSL's SHA-256 state cannot be saved (`resumable_sha256` is None), and between
    nodes of either kind, the node taking the next PATCH hashes the bytes stored so far: each
    PATCH lands on a node that never saw the upload, and the digest still comes out right."""
    available = resumable_sha256
    assert available is not None
    chunks = [os.urandom(MiB + n) for n in range(3)]

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        upload = await Uploads(db, store).start(REPO, "app")
        for chunk, saves_state in zip(chunks, resumable, strict=True):
            monkeypatch.setattr(
                upload_hashes, "resumable_sha256", available if saves_state else None
            )
            node = Uploads(db, store)
            upload = await node.append(await node.get(REPO, "app", upload.id), body(chunk), None)
            assert (upload.hash_state is not None) == saves_state
        data = b"".join(chunks) + b"end"
        node = Uploads(db, store)
        digest = await node.complete(REPO, upload, digest_of(data), body(b"end"), None)
        assert await read_blob(store, digest) == data

    run(database_url, tmp_path / "blobs", scenario)


def test_a_write_left_running_by_a_client_gone_mid_patch_never_lands_in_its_retry(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client went away mid-PATCH while a buffer of its chunk was still being written (a
    slow disk holds the write; a thread cannot be stopped) and retried the chunk at once:
    the retry's bytes, and only those, end up in the blob, whatever the left write does."""
    buffer = BUFFER_BYTES
    gone_bytes, retried_bytes = b"G" * buffer, os.urandom(buffer)
    write = Appender.write

    def slow_disk(appender: Appender, parts: Sequence[bytes]) -> None:
        if parts and parts[0][:1] == b"G":
            time.sleep(0.5)  # the write blocks in its thread; the writer's close waits for it
        write(appender, parts)

    monkeypatch.setattr(Appender, "write", slow_disk)

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        first, second = Uploads(db, store), Uploads(db, store)
        upload = await first.start(REPO, "app")

        async def cut_short() -> AsyncIterator[bytes]:
            yield gone_bytes  # a full buffer: handed to the (slow) write
            await asyncio.sleep(0.05)
            raise ConnectionResetError("the client went away")

        with pytest.raises(ConnectionResetError):
            await first.append(upload, cut_short(), None)
        retried = await second.append(upload, body(retried_bytes), f"0-{buffer - 1}")
        await asyncio.sleep(0.7)  # long past the left write, wherever it went
        digest = await second.complete(REPO, retried, digest_of(retried_bytes), None, None)
        assert await read_blob(store, digest) == retried_bytes

    run(database_url, tmp_path / "blobs", scenario)


def test_of_two_chunks_without_content_range_racing_from_one_offset_the_second_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    """A streamed PATCH (no Content-Range) starts where the upload stood when it arrived: one
    retried while the first try was still being written is refused with the offset the
    first one reached, not appended after it."""

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        first, second = Uploads(db, store), Uploads(db, store)
        upload = await first.start(REPO, "app")
        data = os.urandom(MiB)
        receiving = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            receiving.set()
            await asyncio.sleep(0.3)
            async for piece in body(data):
                yield piece

        async def retry() -> Upload:
            await receiving.wait()
            return await second.append(upload, body(data), None)

        outcomes = await asyncio.gather(
            first.append(upload, slow_body(), None), retry(), return_exceptions=True
        )
        assert isinstance(outcomes[0], Upload) and outcomes[0].offset == MiB, outcomes
        assert isinstance(outcomes[1], RangeNotSatisfiable), outcomes
        assert outcomes[1].current_size == MiB
        digest = await first.complete(REPO, outcomes[0], digest_of(data), None, None)
        assert await read_blob(store, digest) == data

    run(database_url, tmp_path / "blobs", scenario)


def test_a_node_keeps_no_lock_of_uploads_it_is_not_serving(
    database_url: str, tmp_path: Path
) -> None:
    """Uploads abandoned after a chunk, or finished on another node, leave nothing behind in
    the memory of the node that served their chunks (a long-running node would grow)."""

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        node, other = Uploads(db, store), Uploads(db, store)
        for number in range(20):
            upload = await node.start(REPO, "app")
            upload = await node.append(upload, body(b"chunk %d" % number), None)
            if number % 2:
                data = b"chunk %d" % number
                await other.complete(REPO, upload, digest_of(data), None, None)
        gc.collect()
        assert len(node._locks) == 0

    run(database_url, tmp_path / "blobs", scenario)
