"""Nodes whose clocks disagree, on one PostgreSQL database: whether a job lease has lapsed,
whether a server is still serving, whether a scan was abandoned, whether content is older than
garbage collection's grace period (or an upload than its expiry) and whether a console session
or an access key has expired is decided by the database's clock. A node whose own clock runs
ahead (or behind) neither takes over a lease another node holds nor sees a live server as gone,
runs no scan another node is running, collects no blob pushed a moment ago, ends no upload in
progress, and accepts no expired session or key.

The nodes are two `Leases` or a `Presence` and a reader in this process, its clock set off
around what the "other node" does (a node's clock is the one thing the test cannot have two
of)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import text

import berth.access.credentials
import berth.metadata.tables.schema
import berth.services.gc.collector
import berth.services.gc.decide
import berth.services.keys
import berth.services.manifest_deletes
import berth.services.manifests
import berth.services.scanning.on_push
import berth.services.scanning.scans
from berth.access.credentials import Credentials, KeyNotUsable
from berth.access.keyring import Keyring
from berth.access.passwords import Passwords
from berth.access.policy import Principal
from berth.access.tokens import Tokens
from berth.domain.references import RepositoryRef
from berth.jobs.leases import Leases
from berth.metadata.database import Database
from berth.metadata.presence import LIVE_SECONDS, Presence, live_processes_sync
from berth.metadata.tables import users, utcnow
from berth.services.gc import GarbageCollector
from berth.services.keys import Keys
from berth.services.registry import Registry
from berth.services.repositories import Repositories
from berth.services.scanning.scans import ABANDONED_AFTER, Scans
from berth.services.sessions import Sessions
from berth.services.storage_check import StorageCheck
from berth.services.uploads import Uploads
from berth.services.vulndb import VulnDb
from berth.storage.filesystem import FilesystemBlobStore
from tests.databases import on_new_tables
from tests.oci import OCI_LAYER, Blob, image_config, image_manifest
from tests.servers import PostgresCluster

JOB = "storage-scrub"
# Where the code these tests run reads this machine's clock (`utcnow`), its node set off.
CLOCK_READERS: tuple[ModuleType, ...] = (
    berth.metadata.tables.schema,
    berth.services.scanning.scans,
    berth.services.scanning.on_push,
    berth.services.manifests,
    berth.services.manifest_deletes,
    berth.services.gc.collector,
    berth.services.gc.decide,
    berth.services.keys,
    berth.access.credentials,
)
HOUR = 3600.0


@contextlib.contextmanager
def clock_off_by(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    """This node's clock runs `seconds` ahead (behind when negative) while in the block."""
    real = berth.metadata.tables.schema.utcnow

    def off() -> dt.datetime:
        return real() + dt.timedelta(seconds=seconds)

    with monkeypatch.context() as patch:
        for module in CLOCK_READERS:
            patch.setattr(module, "utcnow", off)  # raises for a module that reads it no more
        yield


@pytest.fixture
def database_url(postgres: PostgresCluster | None) -> str:
    """A new PostgreSQL database, for the two nodes."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    return postgres.create_database()


def test_a_node_whose_clock_is_off_takes_over_no_live_lease(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(db: Database) -> None:
        node_a, node_b = Leases(db, "node-a"), Leases(db, "node-b")
        await node_a.ensure(JOB)
        assert await node_a.claim(JOB, 30)

        with clock_off_by(monkeypatch, 60):  # node b, a minute ahead
            assert not await node_b.claim(JOB, 30)
            seen = (await node_b.read([JOB]))[JOB]
            assert seen.holder == "node-a"
            assert 20 < seen.remaining <= 30  # as node a holds it, not lapsed 30 s ago
            assert 20 < (await node_b.due_in(JOB) or 0) <= 30
        assert await node_a.renew(JOB, 30)  # still node a's, its run goes on

        assert await node_a.release(JOB)
        with clock_off_by(monkeypatch, -60):  # node b, a minute behind, takes the job
            assert await node_b.claim(JOB, 30)
        # Node a's clock is right: node b's lease is live, not one that ended 30 s ago.
        assert not await node_a.claim(JOB, 30)
        assert (await node_a.read([JOB]))[JOB].holder == "node-b"

    on_new_tables(database_url, scenario)


def test_a_node_whose_clock_is_off_sees_a_live_server_as_live(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(db: Database) -> None:
        serving = Presence(db, node_name="node-a", version="test")
        with clock_off_by(monkeypatch, -60):  # the serving node, a minute behind
            await serving.renew()
        async with db.read() as conn:
            with clock_off_by(monkeypatch, 60):  # `berth status` on a node a minute ahead
                live = await conn.run_sync(live_processes_sync)
            assert [process.holder for process in live] == [serving.holder]
            # What it wrote is the database's time, not its own.
            behind = await conn.scalar(
                text("SELECT extract(epoch FROM now() - seen_at) FROM serving_processes")
            )
            assert behind is not None and abs(float(behind)) < LIVE_SECONDS / 3

    on_new_tables(database_url, scenario)


# --- content: scans, garbage collection, uploads -----------------------------------------


@dataclasses.dataclass
class Node:
    """The services of one node that pushes, scans and collects, on the shared database."""

    db: Database
    store: FilesystemBlobStore
    repositories: Repositories
    registry: Registry
    uploads: Uploads
    scans: Scans

    async def repository(self) -> RepositoryRef:
        await self.repositories.create_project("p", actor="test")
        await self.repositories.create("p", "app", actor="test")
        return await self.repositories.require("p", "app")

    async def push_blob(self, repo: RepositoryRef, blob: Blob) -> None:
        upload = await self.uploads.start(repo, "")
        await self.uploads.complete(repo, upload, blob.digest, body(blob.data), None)

    async def push_image(self, repo: RepositoryRef, layer: Blob, tag: str) -> Blob:
        config = image_config()
        for blob in (config, layer):
            await self.push_blob(repo, blob)
        return await self.put_manifest(
            repo, image_manifest(config.descriptor(), [layer.descriptor()]), tag
        )

    async def put_manifest(self, repo: RepositoryRef, manifest: Blob, tag: str) -> Blob:
        await self.registry.put_manifest(repo, "", tag, manifest.data, manifest.media_type)
        return manifest


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def on_postgres_registry(
    database_url: str,
    tmp_path: Path,
    scenario: Callable[[Node], Awaitable[None]],
) -> None:
    async def with_services(db: Database) -> None:
        store = FilesystemBlobStore(tmp_path / "blobs")
        try:
            await scenario(
                Node(
                    db,
                    store,
                    Repositories(db, store=store),
                    Registry(db, store),
                    Uploads(db, store),
                    Scans(db, store, VulnDb(db)),
                )
            )
        finally:
            await store.close()

    on_new_tables(database_url, with_services)


def test_a_node_whose_clock_is_off_runs_no_scan_another_node_is_running(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan counts as abandoned once its `alive_at` is ABANDONED_AFTER old: by the
    database's clock, a node running it behind and one looking for abandoned scans ahead
    by more than that agree that it is live."""
    off = ABANDONED_AFTER.total_seconds() + 60

    async def scenario(node: Node) -> None:
        repo = await node.repository()
        image = await node.push_image(repo, Blob(os.urandom(64), OCI_LAYER), "v1")
        await node.scans.request_scan(repo, "", image.digest, "alice")
        with clock_off_by(monkeypatch, -off):  # node a, behind, takes the scan to run it
            assert await node.scans._claim() is not None
        with clock_off_by(monkeypatch, off):  # node b, ahead, looks for scans to run
            assert not await node.scans.has_queued()
            assert await node.scans.run_queued() == 0
        result = await node.scans.result(repo.id, "", image.digest)
        assert result is not None and result.state == "scanning"  # still node a's

    on_postgres_registry(database_url, tmp_path, scenario)


def test_garbage_collection_on_a_node_whose_clock_is_ahead_keeps_a_blob_just_pushed(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer pushed a moment ago by a node an hour behind, whose manifest is still to come,
    is younger than the grace period to a run on a node an hour ahead (grace: 10 minutes): the
    run leaves it, and the manifest is then pushed whole."""
    grace = 600.0

    async def scenario(node: Node) -> None:
        repo = await node.repository()
        layer, config = Blob(os.urandom(256), OCI_LAYER), image_config()
        with clock_off_by(monkeypatch, -HOUR):  # the pushing node
            for blob in (layer, config):
                await node.push_blob(repo, blob)
        with clock_off_by(monkeypatch, HOUR):  # the collecting node
            collector = GarbageCollector(node.db, node.store, grace_period=grace)
            run = await collector.run("p", delete_untagged=True, actor="test")
        assert run.state == "succeeded", run
        assert run.blobs_deleted == 0
        assert await node.store.stat(layer.digest) == len(layer.data)
        with clock_off_by(monkeypatch, -HOUR):  # the push goes on: its manifest
            manifest = image_manifest(config.descriptor(), [layer.descriptor()])
            await node.put_manifest(repo, manifest, "v1")

    on_postgres_registry(database_url, tmp_path, scenario)


def test_a_node_whose_clock_is_ahead_ends_no_upload_in_progress(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `abandoned-uploads` job and garbage collection end an upload nobody has touched for
    `upload_expiry`: by the database's clock, not on a node ahead by more than that while a
    node behind receives it."""
    expiry = HOUR

    async def scenario(node: Node) -> None:
        repo = await node.repository()
        data = os.urandom(128)
        with clock_off_by(monkeypatch, -HOUR):  # the receiving node
            upload = await node.uploads.start(repo, "")
            upload = await node.uploads.append(upload, body(data[:64]), None)
        with clock_off_by(monkeypatch, HOUR):  # the node running the jobs
            check = StorageCheck(node.db, node.store, upload_expiry=expiry)
            assert await check.remove_expired_uploads() == 0
            collector = GarbageCollector(node.db, node.store, upload_expiry=expiry)
            run = await collector.run("p", actor="test")
            assert run.state == "succeeded" and run.uploads_deleted == 0, run
        with clock_off_by(monkeypatch, -HOUR):  # the upload goes on and completes
            blob = Blob(data, OCI_LAYER)
            await node.uploads.complete(repo, upload, blob.digest, body(data[64:]), None)
        assert await node.store.stat(blob.digest) == len(data)

    on_postgres_registry(database_url, tmp_path, scenario)


# --- sign-ins: console sessions, access keys ----------------------------------------------


async def an_admin(db: Database) -> Principal:
    async with db.write() as conn:
        user_id = (
            await conn.execute(
                users.insert()
                .values(name="alice", is_admin=True, created_at=utcnow())
                .returning(users.c.id)
            )
        ).scalar_one()
    return Principal(user_id, "alice", True, None, None)


def test_a_console_session_expires_when_the_database_says_on_every_node(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = Keyring(tmp_path / "signing.pem", tmp_path / "secret.key")
    tokens = Tokens(keyring, ttl_seconds=300, refresh_ttl_seconds=300)

    async def scenario(db: Database) -> None:
        signed_in, ttl = await an_admin(db), 3
        token, session = await Sessions(db, ttl, tokens).create(signed_in)
        with clock_off_by(monkeypatch, 60):  # a node a minute ahead: not expired yet
            assert await Sessions(db, ttl, tokens).lookup(token) == session
        await asyncio.sleep(ttl + 0.5)
        with clock_off_by(monkeypatch, -HOUR):  # a node an hour behind: expired all the same
            behind = Sessions(db, ttl, tokens)
            assert await behind.lookup(token) is None
            assert await behind.purge() == 1

    on_new_tables(database_url, scenario)


def test_an_access_key_expires_when_the_database_says_on_every_node(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = Keyring(tmp_path / "signing.pem", tmp_path / "secret.key")

    def node(db: Database) -> tuple[Credentials, Keys]:
        credentials = Credentials(db, keyring, Passwords(slots=1))
        return credentials, Keys(db, credentials, max_keys_per_project=5)

    async def scenario(db: Database) -> None:
        owner = await an_admin(db)
        await Repositories(db).create_project("p", actor="test")
        _, keys = node(db)
        key = await keys.create_key(
            owner.user, "p", expires_at=utcnow() + dt.timedelta(seconds=3), actor="test"
        )
        with clock_off_by(monkeypatch, 60):  # a node a minute ahead: it works yet
            ahead, _ = node(db)
            assert (await ahead.authenticate_key(key.key_id, key.secret)).key_id == key.key_id
        await asyncio.sleep(3.5)
        with clock_off_by(monkeypatch, -HOUR):  # a node an hour behind: expired all the same
            behind, behind_keys = node(db)
            with pytest.raises(KeyNotUsable, match="expired"):
                await behind.authenticate_key(key.key_id, key.secret)
            assert [k.state for k in await behind_keys.list_keys()] == ["expired"]

    on_new_tables(database_url, scenario)
