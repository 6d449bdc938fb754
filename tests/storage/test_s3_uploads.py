"""Uploads on S3 as the upload service runs them, with two services on one database and one
bucket standing for two nodes: each PATCH may land on either, a racing PATCH from the same
offset loses cleanly, and abandoned uploads and unfinished commits are cleaned up."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, select, update

from berth.config import Settings
from berth.domain.errors import BlobUploadUnknown, RangeNotSatisfiable, Unavailable
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import (
    blob_removals,
    blobs,
    metadata,
    projects,
    repositories,
    repository_blobs,
    upload_pieces,
    uploads,
)
from berth.services.gc import GarbageCollector
from berth.services.storage_check import StorageCheck
from berth.services.uploads import Uploads
from berth.services.uploads.commits import REMOVAL_WAIT_SECONDS
from berth.services.uploads.upload import Upload
from berth.state import Services
from berth.storage.s3 import S3BlobStore
from berth.storage.s3_pieces import PIECE_BYTES, parted_piece_key
from tests.ports import free_port
from tests.s3 import BUCKET, FaultyProxy, S3TestServer
from tests.servers import PostgresCluster, database_url_for, in_own_thread
from tests.unit.storage.contract import digest_of, read_all

pytestmark = pytest.mark.anyio
MiB = 1024 * 1024


async def seeded(url: str) -> Database:
    """A database with the schema, project 1 and its repository 1."""
    database = Database(url)
    async with database.write() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(projects.insert().values(id=1, name="proj"))
        await conn.execute(repositories.insert().values(id=1, project_id=1, name="app"))
    return database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await seeded(f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}")
    yield database
    await database.dispose()


@pytest.fixture
async def store(object_store: S3TestServer) -> AsyncIterator[S3BlobStore]:
    s3 = S3BlobStore(object_store.location())
    yield s3
    await s3.close()


REPO = RepositoryRef(1, 1, "proj", "app", False, True)


async def body(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


def keys_under(object_store: S3TestServer, prefix: str) -> list[str]:
    listing = object_store.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [entry["Key"] for entry in listing.get("Contents", [])]


async def test_patches_alternate_between_nodes_without_reading_back_the_bytes(
    db: Database, store: S3BlobStore, object_store: S3TestServer
) -> None:
    nodes = [Uploads(db, store), Uploads(db, store)]
    chunks = [os.urandom(MiB + n) for n in range(6)]
    upload = await nodes[0].start(REPO, "app")
    for number, chunk in enumerate(chunks):
        node = nodes[number % 2]
        upload = await node.append(await node.get(REPO, "app", upload.id), body(chunk), None)
    # The running hash state is in the database: a node that never saw the upload needs no
    # byte of it to go on (none of it is in the bucket any more, yet the digest comes out).
    async with db.read() as conn:
        names = list((await conn.execute(select(upload_pieces.c.name))).scalars())
    assert len(names) == len(chunks)
    third = Uploads(db, store)
    data = b"".join(chunks)
    tail = b"tail"
    saved = {name: await read_all_piece(object_store, store, upload.id, name) for name in names}
    for name in names:
        object_store.client().delete_object(
            Bucket=BUCKET, Key=store._upload_prefix(upload.id) + name
        )
    upload = await third.append(await third.get(REPO, "app", upload.id), body(tail), None)
    for name, content in saved.items():  # back, for the commit
        object_store.client().put_object(
            Bucket=BUCKET, Key=store._upload_prefix(upload.id) + name, Body=content
        )
    digest = await nodes[1].complete(REPO, upload, digest_of(data + tail), None, None)
    assert digest == digest_of(data + tail)
    assert await read_all(store, digest) == data + tail
    assert keys_under(object_store, store._upload_prefix(upload.id)) == []


async def read_all_piece(
    object_store: S3TestServer, store: S3BlobStore, upload_id: str, name: str
) -> bytes:
    answer = object_store.client().get_object(
        Bucket=BUCKET, Key=store._upload_prefix(upload_id) + name
    )
    return bytes(answer["Body"].read())


async def test_of_two_patches_from_one_offset_one_wins_and_the_other_is_told_where_it_is(
    db: Database, store: S3BlobStore
) -> None:
    """A client retried a chunk on another node while its first try was still being written:
    the first to record its offset wins; the other answers 416 with the upload's offset, and
    its bytes never join the blob."""
    first, second = Uploads(db, store), Uploads(db, store)
    upload = await first.start(REPO, "app")
    chunk, other = os.urandom(2 * MiB), b"Y" * (2 * MiB)
    started, first_answered = asyncio.Event(), asyncio.Event()

    async def slow_retry() -> AsyncIterator[bytes]:
        started.set()  # the offset (0) was read: this request goes on from there
        await first_answered.wait()  # its bytes arrive after the first try was taken
        async for piece in body(other):
            yield piece

    async def quick_first_try() -> Upload:
        await started.wait()
        return await first.append(upload, body(chunk), None)

    retry = asyncio.ensure_future(second.append(upload, slow_retry(), None))
    upload = await quick_first_try()
    first_answered.set()
    with pytest.raises(RangeNotSatisfiable) as refused:
        await retry
    assert refused.value.current_size == len(chunk)
    assert "another request moved the upload" in str(refused.value)
    digest = await second.complete(REPO, upload, digest_of(chunk), None, None)
    assert await read_all(store, digest) == chunk


async def test_a_patch_that_loses_the_race_for_the_offset_leaves_no_piece_in_the_bucket(
    db: Database, store: S3BlobStore, object_store: S3TestServer
) -> None:
    """The PATCH that loses the race had stored pieces of its own (a whole piece while its
    body came, the rest at its end): both are gone before it answers 416, so the bucket
    holds the winner's recorded piece alone, and after the final PUT nothing."""
    winner, loser = Uploads(db, store), Uploads(db, store)
    upload = await winner.start(REPO, "app")
    chunk, late = os.urandom(MiB), os.urandom(PIECE_BYTES + MiB)
    offset_read, won = asyncio.Event(), asyncio.Event()

    async def late_body() -> AsyncIterator[bytes]:
        offset_read.set()
        await won.wait()
        async for piece in body(late):
            yield piece

    losing = asyncio.ensure_future(loser.append(upload, late_body(), None))
    await offset_read.wait()
    upload = await winner.append(upload, body(chunk), None)
    won.set()
    with pytest.raises(RangeNotSatisfiable):
        await losing
    prefix = f"{store.location.prefix}/uploads/{upload.id}/"
    async with db.read() as conn:
        recorded = list((await conn.execute(select(upload_pieces.c.name))).scalars())
    assert len(recorded) == 1
    assert [key[len(prefix) :] for key in keys_under(object_store, prefix)] == recorded
    digest = await winner.complete(REPO, upload, digest_of(chunk), None, None)
    assert await read_all(store, digest) == chunk
    assert keys_under(object_store, prefix) == []


async def test_a_blob_the_store_could_not_take_leaves_no_row(
    db: Database, store: S3BlobStore, object_store: S3TestServer
) -> None:
    """The store unreachable as the final PUT stores the blob: the client is told UNAVAILABLE,
    and no row names a blob that is not stored (the storage check would call it missing)."""
    data = os.urandom(1000)
    node = Uploads(db, store)
    upload = await node.append(await node.start(REPO, "app"), body(data), None)
    gone = f"http://127.0.0.1:{free_port()}"
    cut_off = S3BlobStore(object_store.location(store.location.prefix, endpoint=gone, attempts=1))
    try:
        with pytest.raises(Unavailable):
            await Uploads(db, cut_off).complete(REPO, upload, digest_of(data), None, None)
    finally:
        await cut_off.close()
    async with db.read() as conn:
        assert (await conn.execute(select(blobs.c.digest))).all() == []


async def test_abandoned_uploads_and_unfinished_commits_are_removed(
    db: Database, store: S3BlobStore, object_store: S3TestServer
) -> None:
    node = Uploads(db, store)
    kept = await node.start(REPO, "app")
    await node.append(kept, body(b"recent"), None)
    abandoned = await node.start(REPO, "app")
    await node.append(abandoned, body(os.urandom(MiB)), None)
    async with db.write() as conn:
        await conn.execute(
            update(uploads)
            .where(uploads.c.id == abandoned.id)
            .values(updated_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
        )
    # A commit and a long PATCH a node began and never finished (it died between parts).
    client = object_store.client()
    blob_key = store._blob_key(digest_of(b"never finished"))
    client.create_multipart_upload(Bucket=BUCKET, Key=blob_key)
    piece_key = store._upload_prefix(kept.id) + parted_piece_key(6, "0" * 16)
    client.create_multipart_upload(Bucket=BUCKET, Key=piece_key)
    check = StorageCheck(db, store, upload_expiry=86_400)
    assert await store.abort_unfinished_commits(time.time() - 3600) == 0  # young: kept

    report_before = keys_under(object_store, store._upload_prefix(abandoned.id))
    assert report_before
    await check.remove_abandoned_uploads()
    assert keys_under(object_store, store._upload_prefix(abandoned.id)) == []
    assert keys_under(object_store, store._upload_prefix(kept.id))
    async with db.read() as conn:
        left = set((await conn.execute(select(uploads.c.id))).scalars())
    assert left == {kept.id}
    assert await store.abort_unfinished_commits(time.time() + 60) == 2
    listing = client.list_multipart_uploads(Bucket=BUCKET, Prefix=store._prefix)
    assert listing.get("Uploads", []) == []


@pytest.fixture
async def pg_db(postgres: PostgresCluster | None) -> AsyncIterator[Database]:
    database = await seeded(database_url_for("postgres", postgres) or "")
    yield database
    await database.dispose()


async def test_the_final_put_commits_the_offset_and_pieces_of_one_moment(
    pg_db: Database, store: S3BlobStore
) -> None:
    """On PostgreSQL, another node's PATCH is committed at the exact moment the final PUT
    has read the upload (an engine hook runs it, from a connection and event loop of its
    own): the blob is what the client's digest names, the bytes before that PATCH, not those
    bytes with the PATCH's piece committed under their digest (offset and pieces read apart)."""
    node = Uploads(pg_db, store)
    data = os.urandom(MiB + 5)
    upload = await node.start(REPO, "app")
    upload = await node.append(upload, body(data), None)
    late = os.urandom(MiB)

    async def other_node_patches() -> None:
        database, other_store = Database(pg_db.url), S3BlobStore(store.location)
        try:
            other = Uploads(database, other_store)
            moved = await other.append(await other.get(REPO, "app", upload.id), body(late), None)
            patched_to.append(moved.offset)
        finally:
            await other_store.close()
            await database.dispose()

    patched: list[str] = []
    patched_to: list[int] = []  # the offset the other node's PATCH acknowledged

    def after_a_read_of_the_upload(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if (
            not patched
            and statement.lstrip().upper().startswith("SELECT")
            and ("FROM uploads" in statement)
        ):
            patched.append(statement)
            in_own_thread(lambda: asyncio.run(other_node_patches()))

    engine = pg_db.reader.sync_engine
    event.listen(engine, "after_cursor_execute", after_a_read_of_the_upload)
    try:
        digest = await node.complete(REPO, upload, digest_of(data), None, None)
    finally:
        event.remove(engine, "after_cursor_execute", after_a_read_of_the_upload)
    assert patched, "the final PUT read no upload"
    assert patched_to == [len(data) + len(late)]  # acknowledged, then finished over it
    assert digest == digest_of(data)
    assert await read_all(store, digest) == data


async def test_a_row_locked_by_a_stuck_node_is_a_503_after_the_lock_wait_not_a_hang(
    pg_db: Database, store: S3BlobStore, tmp_path: Path
) -> None:
    """Another connection (a node hung mid-transaction) holds the upload's row: a PATCH waits
    for it only `database_lock_timeout` (1 s here, 15 s unset), then is told UNAVAILABLE with
    Retry-After; once the row is free, the same chunk goes on from the same offset."""
    settings = Settings(data_dir=tmp_path / "node", database_url=pg_db.url, database_lock_timeout=1)
    services = Services.build(settings)  # as a node builds its database from its settings
    try:
        node = Uploads(services.db, store)
        upload = await node.start(REPO, "app")
        chunk = os.urandom(1000)
        async with pg_db.write() as stuck:
            await stuck.execute(
                select(uploads.c.id).where(uploads.c.id == upload.id).with_for_update()
            )
            started = time.monotonic()
            # (Without a lock wait bound it would wait for the stuck one: at most 20 s here.)
            with pytest.raises(Unavailable) as refused:
                async with asyncio.timeout(20):
                    await node.append(upload, body(chunk), None)
            waited = time.monotonic() - started
        assert 1 <= waited < 10
        assert refused.value.status == 503 and refused.value.code == "UNAVAILABLE"
        assert int(refused.value.headers["Retry-After"]) > 0
        assert "locked by another request" in str(refused.value)
        moved = await node.append(await node.get(REPO, "app", upload.id), body(chunk), None)
        assert moved.offset == len(chunk)
    finally:
        await services.close()


# ------------------------------------------------------------ garbage collection, store slow

OTHER_REPO = RepositoryRef(2, 1, "proj", "other", False, True)


@pytest.fixture(params=["sqlite", "postgres"])
async def any_db(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresCluster | None
) -> AsyncIterator[Database]:
    url = database_url_for(request.param, postgres) or f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    database = await seeded(url)
    async with database.write() as conn:
        await conn.execute(repositories.insert().values(id=2, project_id=1, name="other"))
    yield database
    await database.dispose()


async def push(node: Uploads, repo: RepositoryRef, data: bytes) -> str:
    upload = await node.start(repo, repo.name)
    return await node.complete(repo, upload, digest_of(data), body(data), None)


async def test_collection_waiting_on_a_slow_store_holds_up_no_push(
    any_db: Database, store: S3BlobStore, object_store: S3TestServer
) -> None:
    """Garbage collection removes an unlinked blob while the store holds its requests (a slow
    store). It holds no database lock meanwhile: a push of another blob, to another
    repository, completes at once; a push of the very blob being removed, on another node
    whose lock wait is 1 s, waits for the removal to end rather than for a lock (which would
    refuse it after that second), then stores the blob again: linked and whole."""
    pusher = Uploads(any_db, store)
    doomed_data = os.urandom(3000)
    doomed = await push(pusher, REPO, doomed_data)
    async with any_db.write() as conn:  # unlinked, as a blob DELETE leaves it
        await conn.execute(delete(repository_blobs).where(repository_blobs.c.digest == doomed))
    node_db = Database(any_db.url, lock_wait_seconds=None if any_db.is_sqlite else 1)
    async with FaultyProxy(object_store.s3_port) as proxy:
        gc_store = S3BlobStore(
            object_store.location(prefix=store.location.prefix, endpoint=proxy.endpoint)
        )
        try:
            collector = GarbageCollector(any_db, gc_store, grace_period=0)
            proxy.hold()
            run = asyncio.create_task(collector.run("proj", actor="test"))
            await asyncio.wait_for(proxy.holding.wait(), 30)  # the removal waits on the store
            other_data = os.urandom(2000)
            other = await asyncio.wait_for(push(pusher, OTHER_REPO, other_data), 10)
            again = asyncio.create_task(push(Uploads(node_db, store), OTHER_REPO, doomed_data))
            await asyncio.sleep(3)
            assert not again.done(), "the push did not wait for the removal"
            assert not run.done()
            proxy.release()
            assert await asyncio.wait_for(again, 30) == doomed
            finished = await asyncio.wait_for(run, 30)
        finally:
            proxy.release()
            await gc_store.close()
            await node_db.dispose()
    assert finished.state == "succeeded" and finished.storage_blobs_deleted == 1
    assert await read_all(store, doomed) == doomed_data  # stored again after the removal
    assert await read_all(store, other) == other_data
    async with any_db.read() as conn:
        links = (
            await conn.execute(select(repository_blobs.c.repository_id, repository_blobs.c.digest))
        ).all()
        notes = (await conn.execute(select(blob_removals))).all()
    assert sorted(links) == sorted([(2, doomed), (2, other)])
    assert notes == []


async def test_a_collection_in_the_server_the_store_fails_is_logged_in_one_line(
    any_db: Database,
    store: S3BlobStore,
    object_store: S3TestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A collection started as the API starts one, whose store cannot be reached (nothing
    listens at its endpoint, as when the store is stopped), fails; the server's log says so
    once, in the run's line with the store's reason, not also in the store's warning of it."""
    doomed = await push(Uploads(any_db, store), REPO, os.urandom(3000))
    async with any_db.write() as conn:
        await conn.execute(delete(repository_blobs).where(repository_blobs.c.digest == doomed))
    endpoint = f"http://127.0.0.1:{free_port()}"
    stopped = S3BlobStore(
        object_store.location(prefix=store.location.prefix, endpoint=endpoint, attempts=1)
    )
    collector = GarbageCollector(any_db, stopped, grace_period=0)
    try:
        with caplog.at_level("INFO"):
            run = await collector.launch("proj", actor="test")
            deadline = time.monotonic() + 30
            while run.state == "running" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                run = await collector.get_run("proj", run.id)
    finally:
        await collector.stop()
        await stopped.close()
    assert run.state == "failed" and run.error is not None and endpoint in run.error, run
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [f"gc run {run.id} failed: {run.error.rsplit(' (', 1)[0]}"], said


async def test_a_push_waiting_too_long_on_a_removal_is_told_to_retry_and_then_succeeds(
    any_db: Database,
    store: S3BlobStore,
    object_store: S3TestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A push of the very blob garbage collection is removing, while the store keeps the
    removal waiting past the push's wait (a minute; 2 s here): 503 with Retry-After, saying
    the collection is taking long, and nothing of the blob recorded. Once the removal ends,
    the same push stores the blob again."""
    monkeypatch.setattr("berth.services.uploads.commits.REMOVAL_WAIT_SECONDS", 2.0)
    pusher = Uploads(any_db, store)
    doomed_data = os.urandom(3000)
    doomed = await push(pusher, REPO, doomed_data)
    async with any_db.write() as conn:
        await conn.execute(delete(repository_blobs).where(repository_blobs.c.digest == doomed))
    async with FaultyProxy(object_store.s3_port) as proxy:
        gc_store = S3BlobStore(
            object_store.location(prefix=store.location.prefix, endpoint=proxy.endpoint)
        )
        try:
            proxy.hold()
            run = asyncio.create_task(
                GarbageCollector(any_db, gc_store, grace_period=0).run("proj", actor="test")
            )
            await asyncio.wait_for(proxy.holding.wait(), 30)
            with pytest.raises(Unavailable) as refused:
                await asyncio.wait_for(push(pusher, OTHER_REPO, doomed_data), 30)
            async with any_db.read() as conn:
                linked = (await conn.execute(select(repository_blobs.c.digest))).scalars().all()
            proxy.release()
            finished = await asyncio.wait_for(run, 30)
        finally:
            proxy.release()
            await gc_store.close()
    assert refused.value.status == 503 and refused.value.headers["Retry-After"].isdigit()
    assert "being removed by garbage collection" in str(refused.value)
    assert linked == []
    assert finished.state == "succeeded" and finished.storage_blobs_deleted == 1
    assert await push(pusher, OTHER_REPO, doomed_data) == doomed
    assert await read_all(store, doomed) == doomed_data


async def test_what_a_failed_run_left_to_remove_holds_up_no_push_and_the_next_run_removes_it(
    any_db: Database, store: S3BlobStore, object_store: S3TestServer
) -> None:
    """A run that deleted two blobs' rows and then could not reach the store fails with their
    objects noted as still to remove. Nobody removes them now: a push of one of them goes on
    at once (and keeps its object); the project's next run removes the other one's."""
    pusher = Uploads(any_db, store)
    kept_data, removed_data = os.urandom(1000), os.urandom(1001)
    kept, removed = await push(pusher, REPO, kept_data), await push(pusher, REPO, removed_data)
    async with any_db.write() as conn:
        await conn.execute(delete(repository_blobs))
    gone = f"http://127.0.0.1:{free_port()}"
    cut_off = S3BlobStore(object_store.location(store.location.prefix, endpoint=gone, attempts=1))
    try:
        failed = await GarbageCollector(any_db, cut_off, grace_period=0).run("proj", actor="t")
    finally:
        await cut_off.close()
    assert failed.state == "failed"
    async with any_db.read() as conn:
        assert sorted((await conn.execute(select(blob_removals.c.digest))).scalars()) == sorted(
            [kept, removed]
        )
    started = time.monotonic()
    assert await push(pusher, OTHER_REPO, kept_data) == kept
    # Held up, it would wait for the removal (REMOVAL_WAIT_SECONDS, a minute); a loaded machine
    # makes a small push take a few seconds at most.
    assert time.monotonic() - started < REMOVAL_WAIT_SECONDS / 3
    # (A grace period that keeps the blob just pushed, not in any image yet.)
    finished = await GarbageCollector(any_db, store, grace_period=3600).run("proj", actor="t")
    assert finished.state == "succeeded"
    assert await read_all(store, kept) == kept_data
    assert await store.stat(removed) is None
    async with any_db.read() as conn:
        assert (await conn.execute(select(blob_removals))).all() == []


# ------------------------------------------------------------ a cancel during the commit


async def test_a_cancel_while_the_final_put_copies_the_pieces_leaves_nothing_of_the_blob(
    db: Database, store: S3BlobStore, object_store: S3TestServer
) -> None:
    """A cancel (an admin's, or the client's DELETE on another node) lands while the final
    PUT's commit waits on the store to copy the upload's pieces into the blob; the cancel
    removes the pieces. The PUT is answered BLOB_UPLOAD_UNKNOWN saying the upload was
    cancelled (its client starts again), and nothing of the blob is left: no row, no object,
    no multipart upload open in the bucket, no piece."""
    chunks = [os.urandom(6 * MiB), os.urandom(6 * MiB + 1)]  # each a part copied server-side
    data = b"".join(chunks)
    canceller = Uploads(db, store)
    upload = await canceller.start(REPO, "app")
    for chunk in chunks:
        upload = await canceller.append(upload, body(chunk), None)
    async with FaultyProxy(object_store.s3_port) as proxy:
        held_store = S3BlobStore(
            object_store.location(prefix=store.location.prefix, endpoint=proxy.endpoint)
        )
        committer = Uploads(db, held_store)
        try:
            proxy.hold()
            commit = asyncio.create_task(
                committer.complete(REPO, upload, digest_of(data), None, None)
            )
            await asyncio.wait_for(proxy.holding.wait(), 30)  # the commit waits on the store
            assert await canceller.cancel(upload)
            proxy.release()
            with pytest.raises(BlobUploadUnknown) as ended:
                await asyncio.wait_for(commit, 60)
        finally:
            proxy.release()
            await held_store.close()
    assert "cancelled" in str(ended.value), ended.value
    assert await store.stat(digest_of(data)) is None
    async with db.read() as conn:
        assert (await conn.execute(select(blobs.c.digest))).all() == []
        assert (await conn.execute(select(uploads.c.id))).all() == []
        assert (await conn.execute(select(upload_pieces.c.name))).all() == []
    assert keys_under(object_store, store._upload_prefix(upload.id)) == []
    assert keys_under(object_store, f"{store.location.prefix}/blobs/") == []
    open_commits = object_store.client().list_multipart_uploads(
        Bucket=BUCKET, Prefix=f"{store.location.prefix}/"
    )
    assert open_commits.get("Uploads", []) == []
