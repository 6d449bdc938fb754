"""The manifest cache: a manifest answered a moment ago is served from memory (not read or
hashed again), and every change of manifests or tags on the node, from any of its processes,
makes what was cached unusable at once. In-process, on SQLite."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from berth.domain.errors import BlobUnknown, ManifestUnknown
from berth.metadata.database import Database
from berth.metadata.tables import audit_log, manifests, repository_blobs
from berth.services.gc import GarbageCollector
from berth.services.manifest_cache import (
    BLOB_STAMP_FILE,
    FRESH_SECONDS,
    LARGEST_CACHED,
    BlobSizes,
    ManifestCache,
    StoredManifest,
    node_stamp,
)
from tests.services.test_content_changes import Scene, run

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def damage_stored_manifests(scene: Scene) -> None:
    """Behind the node's back: through a connection of its own, as another node writes (a
    write through the node's own database voids the cache, as the test below shows)."""
    elsewhere = Database(scene.db.url)
    try:
        async with elsewhere.write() as conn:
            await conn.execute(update(manifests).values(content=b'{"damaged": true}'))
    finally:
        await elsewhere.dispose()


def test_a_manifest_just_served_is_served_from_memory_until_the_node_changes_something(
    tmp_path: Path,
) -> None:
    """Shown by damaging the stored bytes behind the cache's back: the copy in memory is still
    served, by tag and by digest (no read, no hash), until a change on the node; then the
    damage is found."""

    async def scenario(scene: Scene) -> None:
        digest, _layer = await scene.push_image("v1")
        by_tag = await scene.registry.get_manifest(scene.repo, "", "v1")
        by_digest = await scene.registry.get_manifest(scene.repo, "", digest)
        assert by_tag == by_digest and by_tag.digest == digest
        await damage_stored_manifests(scene)
        assert await scene.registry.get_manifest(scene.repo, "", "v1") == by_tag
        assert await scene.registry.get_manifest(scene.repo, "", digest) == by_tag

        scene.registry.manifest_cache.changed()
        with pytest.raises(ManifestUnknown, match="damaged"):
            await scene.registry.get_manifest(scene.repo, "", "v1")

    run(tmp_path, scenario)


def test_a_tag_moved_or_deleted_here_is_seen_at_once(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        first, _ = await scene.push_image("v1")
        assert (await scene.registry.get_manifest(scene.repo, "", "v1")).digest == first
        second, _ = await scene.push_image("v2")
        await scene.registry.put_manifest(
            scene.repo,
            "",
            "v1",
            (await scene.registry.get_manifest(scene.repo, "", "v2")).content,
            OCI_MANIFEST,
        )
        assert (await scene.registry.get_manifest(scene.repo, "", "v1")).digest == second
        await scene.registry.delete_manifest(scene.repo, "", "v1", actor="a", client=None)
        with pytest.raises(ManifestUnknown):
            await scene.registry.get_manifest(scene.repo, "", "v1")
        assert (await scene.registry.get_manifest(scene.repo, "", second)).digest == second
        await scene.registry.delete_manifest(scene.repo, "", second, actor="a", client=None)
        with pytest.raises(ManifestUnknown):
            await scene.registry.get_manifest(scene.repo, "", second)
        with pytest.raises(ManifestUnknown):
            await scene.registry.get_manifest(scene.repo, "", "v2")

    run(tmp_path, scenario)


async def write_manifests_directly(scene: Scene) -> None:
    async with scene.db.write() as conn:
        await conn.execute(update(manifests).values(content=b'{"damaged": true}'))


async def delete_repository(scene: Scene) -> None:
    await scene.repositories.delete("acme", "app", actor="admin", client=None)


async def delete_project(scene: Scene) -> None:
    await scene.repositories.delete_project("acme", confirm="acme", actor="admin")


async def collect_garbage(scene: Scene) -> None:
    collector = GarbageCollector(scene.db, scene.registry.store, grace_period=0)
    await collector.run("acme", delete_untagged=True, actor="admin")


@pytest.mark.parametrize(
    "change", [write_manifests_directly, delete_repository, delete_project, collect_garbage]
)
def test_every_change_of_content_on_the_node_voids_the_cache(
    tmp_path: Path, change: Callable[[Scene], Awaitable[None]]
) -> None:
    """Whatever code commits a write to manifests or tags (or deletes what holds them), the
    node's cache is voided: no service has to remember to say so. The image is untagged
    first, so that garbage collection may take it, and served by digest from the cache."""

    async def scenario(scene: Scene) -> None:
        digest, _layer = await scene.push_image("v1")
        await scene.registry.delete_manifest(scene.repo, "", "v1", actor="a", client=None)
        served = await scene.registry.get_manifest(scene.repo, "", digest)
        assert await scene.registry.get_manifest(scene.repo, "", digest) == served

        await change(scene)
        with pytest.raises(ManifestUnknown):
            await scene.registry.get_manifest(scene.repo, "", digest)

    run(tmp_path, scenario)


def test_writes_that_change_no_content_keep_the_cache(tmp_path: Path) -> None:
    """A transaction rolled back, one that writes other tables only, or a push of what is
    there already (docker pushes every image again) voids nothing."""

    async def scenario(scene: Scene) -> None:
        await scene.push_image("v1")
        served = await scene.registry.get_manifest(scene.repo, "", "v1")
        with pytest.raises(RuntimeError):
            async with scene.db.write() as conn:
                await conn.execute(update(manifests).values(content=b'{"damaged": true}'))
                raise RuntimeError("rolled back")
        async with scene.db.write() as conn:
            await conn.execute(update(audit_log).values(client="198.51.100.1"))
        await scene.registry.put_manifest(scene.repo, "", "v1", served.content, OCI_MANIFEST)
        await damage_stored_manifests(scene)  # unseen while the cache holds the manifest
        assert await scene.registry.get_manifest(scene.repo, "", "v1") == served

    run(tmp_path, scenario)


def test_a_cached_reference_is_used_for_at_most_a_second(tmp_path: Path) -> None:
    """What another node changed is seen within FRESH_SECONDS."""

    async def scenario(scene: Scene) -> None:
        await scene.push_image("v1")
        served = await scene.registry.get_manifest(scene.repo, "", "v1")
        await damage_stored_manifests(scene)  # as another node's change would, unannounced
        time.sleep(FRESH_SECONDS + 0.05)
        with pytest.raises(ManifestUnknown, match="damaged"):
            await scene.registry.get_manifest(scene.repo, "", "v1")
        assert served.content != b'{"damaged": true}'

    run(tmp_path, scenario)


def test_a_change_in_another_process_of_the_node_voids_this_ones_cache(tmp_path: Path) -> None:
    """The node's processes share the stamp through a file each maps: a bump by one (here a
    second mapping, as a worker or a CLI verb has) is read by the other at once."""
    here = ManifestCache(node_stamp(tmp_path))
    there = ManifestCache(node_stamp(tmp_path))
    manifest = StoredManifest("sha256:" + "a" * 64, OCI_MANIFEST, b"{}")
    here.put(1, "", "v1", manifest, here.stamp.read())
    assert here.get(1, "", "v1") == manifest
    assert here.get(1, "", "v2") is None and here.get(2, "", "v1") is None
    there.changed()
    assert here.get(1, "", "v1") is None


def test_a_lookup_raced_by_a_change_is_not_kept(tmp_path: Path) -> None:
    """The stamp is read before the database: a change committed meanwhile voids the entry."""
    cache = ManifestCache(node_stamp(tmp_path))
    before = cache.stamp.read()
    ManifestCache(node_stamp(tmp_path)).changed()
    cache.put(1, "", "v1", StoredManifest("sha256:" + "b" * 64, OCI_MANIFEST, b"{}"), before)
    assert cache.get(1, "", "v1") is None


def test_a_huge_manifest_is_not_kept() -> None:
    cache = ManifestCache()
    huge = StoredManifest("sha256:" + "c" * 64, OCI_MANIFEST, b" " * (LARGEST_CACHED + 1))
    cache.put(1, "", "v1", huge, cache.stamp.read())
    assert cache.get(1, "", "v1") is None


# ------------------------------------------------------------------ blob sizes (blob GET/HEAD)


async def unlink_blobs_elsewhere(scene: Scene) -> None:
    """Every blob unlinked from the repository through a connection of its own, as another
    node would."""
    elsewhere = Database(scene.db.url)
    try:
        async with elsewhere.write() as conn:
            await conn.execute(delete(repository_blobs))
    finally:
        await elsewhere.dispose()


def test_a_blob_size_just_read_is_kept_until_blob_links_change_on_the_node(
    tmp_path: Path,
) -> None:
    async def scenario(scene: Scene) -> None:
        loose = await scene.blob(b"a loose blob")
        kept = await scene.blob(b"another one")
        assert await scene.registry.blob_size(scene.repo, loose) == 12
        assert await scene.registry.blob_size(scene.repo, kept) == 11
        # Deleted here: seen at once.
        await scene.registry.delete_blob(scene.repo, "", loose, actor="a", client=None)
        with pytest.raises(BlobUnknown):
            await scene.registry.blob_size(scene.repo, loose)
        # Unlinked behind the node's back: the size in memory still answers, until the node
        # changes a blob link (or the second is over: below).
        assert await scene.registry.blob_size(scene.repo, kept) == 11
        await unlink_blobs_elsewhere(scene)
        assert await scene.registry.blob_size(scene.repo, kept) == 11
        await scene.blob(b"pushed here")
        with pytest.raises(BlobUnknown):
            await scene.registry.blob_size(scene.repo, kept)

    run(tmp_path, scenario)


def test_a_blob_size_is_used_for_at_most_a_second(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        digest = await scene.blob(b"a blob")
        assert await scene.registry.blob_size(scene.repo, digest) == 6
        await unlink_blobs_elsewhere(scene)
        time.sleep(FRESH_SECONDS + 0.05)
        with pytest.raises(BlobUnknown):
            await scene.registry.blob_size(scene.repo, digest)

    run(tmp_path, scenario)


def test_a_blob_link_change_in_another_process_of_the_node_voids_this_ones_sizes(
    tmp_path: Path,
) -> None:
    here = BlobSizes(node_stamp(tmp_path, BLOB_STAMP_FILE))
    there = BlobSizes(node_stamp(tmp_path, BLOB_STAMP_FILE))
    digest = "sha256:" + "d" * 64
    here.put(1, digest, 42, here.stamp.read())
    assert here.get(1, digest) == 42 and here.get(2, digest) is None
    ManifestCache(node_stamp(tmp_path)).changed()  # a manifest or tag change: not a blob link
    assert here.get(1, digest) == 42
    there.changed()
    assert here.get(1, digest) is None
    before = here.stamp.read()
    there.changed()  # raced the read: not kept
    here.put(1, digest, 42, before)
    assert here.get(1, digest) is None
