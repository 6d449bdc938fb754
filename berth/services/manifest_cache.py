"""Manifests kept in memory for pulls, so a manifest GET or HEAD that was answered a moment
ago needs neither the database nor hashing the manifest again.

Two parts:
- *content*: a manifest's bytes, media type and digest by (repository id, image, digest),
  least recently used first out, bounded in bytes. A digest names its bytes, so an entry never
  goes stale; the bytes were checked against the digest once, when they were read.
- *fresh*: that a reference (a tag or a digest) named that digest in that repository's image,
  for at most `FRESH_SECONDS` (the same second access checks are cached for). Only found
  references are kept: a tag pushed elsewhere is seen at once.

Changes on this node are seen at once: every committed write transaction that changed rows of
`CONTENT_TABLES` (a push, tag move, delete, restore, garbage collection, deleting a repository
or project: whatever writes them, `Database.after_commit` sees it) bumps the node's
`ContentStamp`, and a fresh entry made under another stamp is not used. The stamp is a number
in a small file of the data directory that each process maps into memory (reading it is a
memory read, no system call), so the node's other worker processes and its CLI verbs move it
too; other nodes (their own data directories) see a change within `FRESH_SECONDS`.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from cachetools import LRUCache

FRESH_SECONDS = 1.0
FRESH_ENTRIES = 50_000
CACHED_BYTES = 32 * 1024 * 1024
LARGEST_CACHED = 1024 * 1024  # a larger manifest (rare: big indexes) is read every time
ENTRY_OVERHEAD = 300  # bytes of Python objects around each entry's content, roughly
STAMP_FILE = "manifest-stamp"
# What a cached answer depends on: a repository's or a project's delete removes its manifests
# and tags by cascade.
CONTENT_TABLES = frozenset({"manifests", "tags", "repositories", "projects"})
_STAMP = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


class ContentStamp:
    """A number that every change of manifests or tags on this node changes (to a random
    value: two changes at once cannot leave it where it was)."""

    def __init__(self, path: Path | None = None) -> None:
        self._map: mmap.mmap | bytearray = bytearray(_STAMP.size)
        if path is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _STAMP.size:
                    os.ftruncate(fd, _STAMP.size)
                self._map = mmap.mmap(fd, _STAMP.size)
            finally:
                os.close(fd)

    def read(self) -> int:
        value: int = _STAMP.unpack_from(self._map)[0]
        return value

    def bump(self) -> None:
        _STAMP.pack_into(self._map, 0, random.getrandbits(64))


def node_stamp(data_dir: Path, name: str = STAMP_FILE) -> ContentStamp:
    """The stamp the node's processes share, or one of this process alone when the data
    directory is not there (a verb that refuses to run anyway)."""
    if not data_dir.is_dir():
        return ContentStamp()
    return ContentStamp(data_dir / name)


K = TypeVar("K")
V = TypeVar("V")


class FreshFor(Generic[K, V]):
    """What a database read found, used for at most `FRESH_SECONDS` and only while `stamp`
    reads as it did before that read (a change on this node since voids it). Bounded: the
    least recently used entries go first."""

    __slots__ = ("_entries", "stamp")

    def __init__(self, stamp: ContentStamp) -> None:
        self.stamp = stamp
        # key -> (value, stamp when it was read, monotonic time it was read)
        self._entries: LRUCache[K, tuple[V, int, float]] = LRUCache(FRESH_ENTRIES)

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, stamp, at = found
        if stamp != self.stamp.read() or time.monotonic() - at > FRESH_SECONDS:
            return None
        return value

    def put(self, key: K, value: V, stamp: int) -> None:
        """Keep `value`; `stamp` is the stamp as it was before the read began."""
        self._entries[key] = (value, stamp, time.monotonic())

    def changed(self) -> None:
        """A committed change: nothing kept is used again, on this node's other processes
        either."""
        self.stamp.bump()
        self._entries.clear()


def _size(manifest: StoredManifest) -> int:
    return len(manifest.content) + ENTRY_OVERHEAD


CacheKey = tuple[int, str, str]


class ManifestCache:
    def __init__(self, stamp: ContentStamp | None = None) -> None:
        self.stamp = stamp or ContentStamp()
        self._content: LRUCache[CacheKey, StoredManifest] = LRUCache(CACHED_BYTES, getsizeof=_size)
        # reference -> the digest it named
        self._fresh: FreshFor[CacheKey, str] = FreshFor(self.stamp)

    def get(self, repository_id: int, image: str, reference: str) -> StoredManifest | None:
        """The manifest `reference` named within the last second and since the node's last
        change, or None."""
        digest = self._fresh.get((repository_id, image, reference))
        if digest is None:
            return None
        return self._content.get((repository_id, image, digest))

    def put(
        self, repository_id: int, image: str, reference: str, manifest: StoredManifest, stamp: int
    ) -> None:
        """Keep what `reference` was found to name; `stamp` is the node's stamp as it was
        before the lookup began (a change since then makes the entry unusable)."""
        if len(manifest.content) > LARGEST_CACHED:
            return
        self._content[(repository_id, image, manifest.digest)] = manifest
        self._fresh.put((repository_id, image, reference), manifest.digest, stamp)

    def changed(self) -> None:
        """Manifests or tags changed (committed): nothing fresh on this node is used again."""
        self._fresh.changed()


# What a cached blob size depends on: the link of a blob to a repository (removed by a blob
# delete, garbage collection, or the cascade of a repository's or project's delete).
BLOB_TABLES = frozenset({"repository_blobs", "blobs", "repositories", "projects"})
BLOB_STAMP_FILE = "blob-stamp"


class BlobSizes:
    """That a repository held a blob of some size, for at most `FRESH_SECONDS` and only while
    the node's blob links have not changed since (its own `ContentStamp`, moved by every
    committed write of `BLOB_TABLES`, as `ManifestCache`'s is by manifests and tags): a blob
    GET or HEAD answered a moment ago needs no database read. Only found blobs are kept: a
    blob pushed elsewhere is seen at once; one unlinked on another node within the second."""

    def __init__(self, stamp: ContentStamp | None = None) -> None:
        self.stamp = stamp or ContentStamp()
        # (repository id, digest) -> its size
        self._sizes: FreshFor[tuple[int, str], int] = FreshFor(self.stamp)

    def get(self, repository_id: int, digest: str) -> int | None:
        return self._sizes.get((repository_id, digest))

    def put(self, repository_id: int, digest: str, size: int, stamp: int) -> None:
        """Keep a size read from the database; `stamp` is the node's stamp as it was before
        the read began."""
        self._sizes.put((repository_id, digest), size, stamp)

    def changed(self) -> None:
        self._sizes.changed()
