"""The image listing's cost stays bounded whatever its manifests hold: indexes of 18,000
entries (just under the 4 MiB manifest limit) are read one at a time, parsed once while
cached, and each image lists a bounded number of platforms and platform manifests."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import blobs, repository_blobs
from berth.services.image_records import MAX_LISTED_CHILDREN, MAX_LISTED_PLATFORMS
from berth.services.images import Images, image_config_cache, index_platform_cache
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
