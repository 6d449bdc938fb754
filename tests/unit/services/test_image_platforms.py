"""The image listing's cost stays bounded whatever its manifests hold: indexes of 18,000
entries (just under the 4 MiB manifest limit) are read one at a time, parsed once while
cached, and each image lists a bounded number of platforms and platform manifests; the
details of an index of thousands of platform manifests cost as those of one of 256."""

from __future__ import annotations

import asyncio
import datetime as dt
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import blobs, manifest_references, manifests, repository_blobs
from berth.services.image_platforms import image_config_cache, index_platform_cache
from berth.services.image_records import MAX_LISTED_CHILDREN, MAX_LISTED_PLATFORMS
from berth.services.images import Images
from berth.services.registry import Registry
from berth.storage.filesystem import FilesystemBlobStore
from tests.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Blob, image_index
from tests.oci import image_manifest as manifest_of
from tests.retention_seed import ensure_repository

ENTRIES = 18_000  # an index of these is ~3.9 MB, as an attacker pushes them
PLATFORMS = 300  # distinct platform manifests the large indexes list
LARGE_INDEXES = 8
MiB = 1024 * 1024


async def _store(db: Database, store: FilesystemBlobStore, repo_id: int, blob: Blob) -> None:
    upload_id = uuid.uuid4().hex
    writer = await store.open_upload(upload_id, 0)
    await writer.write([blob.data])
    await writer.close()
    await store.commit_upload(upload_id, blob.digest)
    await store.delete_upload(upload_id)
    async with db.write() as conn:
        await conn.execute(blobs.insert().values(digest=blob.digest, size=len(blob.data)))
        await conn.execute(
            repository_blobs.insert().values(repository_id=repo_id, digest=blob.digest)
        )


def test_large_indexes_are_listed_with_bounded_platforms_and_parsed_once(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        db = Database(database_url)
        store = FilesystemBlobStore(tmp_path / "blobs")
        try:
            await _listing(db, store)
        finally:
            await store.close()
            await db.dispose()

    asyncio.run(scenario())


async def _listing(db: Database, store: FilesystemBlobStore) -> None:
    registry, images = Registry(db, store), Images(db, store)
    repo_id = await ensure_repository(db, "p", "app")
    repo = RepositoryRef(repo_id, 1, "p", "app", False, True)
    config = Blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG)
    layer = Blob(uuid.uuid4().bytes, OCI_LAYER)  # a run of its own: nothing cached yet
    for blob in (config, layer):
        await _store(db, store, repo_id, blob)

    # Platform manifests, each distinct, then indexes listing them over and over.
    leaves = [
        manifest_of(config.descriptor(), [layer.descriptor()], annotations={"n": str(n)})
        for n in range(PLATFORMS)
    ]
    for leaf in leaves:
        await registry.put_manifest(repo, "", leaf.digest, leaf.data, OCI_MANIFEST)
    for n in range(LARGE_INDEXES):
        entries = [
            leaves[i % PLATFORMS].descriptor(
                platform={"os": "linux", "architecture": f"arch{i % PLATFORMS}"}
            )
            for i in range(ENTRIES)
        ]
        index = image_index(entries, annotations={"n": str(n)})
        assert 3 * MiB < index.size < 4 * MiB
        await registry.put_manifest(repo, "", f"big{n}", index.data, OCI_INDEX)
    plain = manifest_of(config.descriptor(), [layer.descriptor()], annotations={"n": "plain"})
    await registry.put_manifest(repo, "", "plain", plain.data, OCI_MANIFEST)

    # The first page reads the indexes one at a time: never more than one held, parsed.
    tracemalloc.start()
    try:
        listed, total = await images.list_images(repo, per_page=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == LARGE_INDEXES + 1
    # One index parsed is some 5 times its bytes; the page's indexes read at once, 8 times.
    assert peak < 7 * index.size, f"listing held {peak / MiB:.0f} MiB"

    # Each platform once, in the index's order, at most MAX_LISTED_PLATFORMS, and a count.
    by_tag: dict[str, Any] = {item.tags[0]: item for item in listed}
    big = by_tag["big0"]
    assert big.platforms == [f"linux/arch{i}" for i in range(MAX_LISTED_PLATFORMS)]
    assert big.platform_count == PLATFORMS
    assert by_tag["plain"].platforms == ["linux/amd64"]
    assert by_tag["plain"].platform_count == 1

    # Another page of the same images parses nothing again.
    parsed = (index_platform_cache.parsed, image_config_cache.parsed)
    again, _ = await images.list_images(repo, per_page=100)
    assert (index_platform_cache.parsed, image_config_cache.parsed) == parsed
    assert [i.platforms for i in again] == [i.platforms for i in listed]

    # The details list the first platform manifests in the index's order, and how many.
    detail = await images.image(repo, "", big.digest)
    assert [c.digest for c in detail.children] == [
        leaf.digest for leaf in leaves[:MAX_LISTED_CHILDREN]
    ]
    assert detail.children[7].platform == "linux/arch7"
    assert detail.child_count == PLATFORMS
    # Its size still counts every platform manifest.
    assert detail.size == (
        detail.manifest_size + sum(leaf.size for leaf in leaves) + config.size + layer.size
    )


MANY_CHILDREN = 3_000  # distinct platform manifests of one index, each with a layer of its own


async def _index_of(
    db: Database, registry: Registry, repo: RepositoryRef, config: Blob, count: int
) -> tuple[Blob, list[Blob], int]:
    """An index of `count` distinct platform manifests, stored in bulk (a push each would take
    minutes), then the index pushed; with its children and the bytes of their layers."""
    layers = [Blob(uuid.uuid4().bytes * (n % 7 + 1), OCI_LAYER) for n in range(count)]
    children = [manifest_of(config.descriptor(), [layer.descriptor()]) for layer in layers]
    async with db.write() as conn:
        await conn.execute(blobs.insert(), [{"digest": b.digest, "size": b.size} for b in layers])
        for child, layer in zip(children, layers, strict=True):
            stored = await conn.execute(
                manifests.insert().values(
                    repository_id=repo.id,
                    image="",
                    digest=child.digest,
                    media_type=OCI_MANIFEST,
                    size=child.size,
                    content=child.data,
                    pushed_at=dt.datetime.now(dt.UTC),
                )
            )
            manifest_id = stored.inserted_primary_key[0]  # type: ignore[index]
            await conn.execute(
                manifest_references.insert(),
                [
                    {
                        "manifest_id": manifest_id,
                        "digest": d,
                        "is_manifest": False,
                    }
                    for d in (config.digest, layer.digest)
                ],
            )
    index = image_index(
        [
            child.descriptor(platform={"os": "linux", "architecture": f"arch{n}"})
            for n, child in enumerate(children)
        ]
    )
    await registry.put_manifest(repo, "", f"index{count}", index.data, OCI_INDEX)
    return index, children, sum(layer.size for layer in layers)


def test_the_details_of_an_index_of_thousands_read_no_more_than_they_list(
    database_url: str, tmp_path: Path
) -> None:
    """An index of 3,000 distinct platform manifests: its details list the first 256 and
    count the rest in the database, holding about what an index of 256 takes (they read
    every child's rows, blobs and tags first: 11 times as much), and its size still counts
    every child and layer."""

    async def scenario() -> None:
        db = Database(database_url)
        store = FilesystemBlobStore(tmp_path / "blobs")
        try:
            registry, images = Registry(db, store), Images(db, store)
            repo_id = await ensure_repository(db, "p", "app")
            repo = RepositoryRef(repo_id, 1, "p", "app", False, True)
            config = Blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG)
            await _store(db, store, repo_id, config)
            small, _, _ = await _index_of(db, registry, repo, config, MAX_LISTED_CHILDREN)
            large, children, layer_bytes = await _index_of(
                db, registry, repo, config, MANY_CHILDREN
            )
            peaks = []
            for index in (small, large):
                await images.image(repo, "", index.digest)  # each index parsed once, cached
                tracemalloc.start()
                try:
                    await images.image(repo, "", index.digest)
                    peaks.append(tracemalloc.get_traced_memory()[1])
                finally:
                    tracemalloc.stop()
            assert peaks[1] < 3 * peaks[0], f"{peaks[1] / MiB:.1f} MiB against {peaks[0] / MiB:.1f}"

            detail = await images.image(repo, "", large.digest)
            assert detail.child_count == MANY_CHILDREN
            assert [c.digest for c in detail.children] == [
                child.digest for child in children[:MAX_LISTED_CHILDREN]
            ]
            assert detail.children[9].platform == "linux/arch9"
            assert detail.children[9].size == children[9].size + config.size + (9 % 7 + 1) * 16
            assert detail.size == (
                large.size + sum(child.size for child in children) + config.size + layer_bytes
            )
        finally:
            await store.close()
            await db.dispose()

    asyncio.run(scenario())
