"""The platforms of a repository's images: an image config's platform (read from the blob
store, bounded), an index's entries (platform, attestation) parsed once per digest while
cached, and `IndexTree`, the indexes of a page and the stored manifests their entries name,
read level by level."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import LRUCache
from sqlalchemy import select

from berth.domain.errors import ManifestInvalid
from berth.domain.manifests import (
    INDEX_TYPES,
    MAX_INDEX_DEPTH,
    parse_stored_manifest,
    stored_manifest_json,
)
from berth.domain.references import RepositoryRef
from berth.metadata.tables import manifests
from berth.services.image_records import MAX_LISTED_PLATFORMS
from berth.storage.base import BlobStore

# Config media types that say an image's platform (os, architecture, variant).
IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
MAX_CONFIG_READ = 1 << 20  # a config larger than this is not read for its platform
# Platform by config digest: content-addressed, so an entry never goes stale.
config_platforms: LRUCache[str, str | None] = LRUCache(maxsize=4096)

MAX_INDEX_ENTRIES = 1024  # distinct entries of an index whose platform is kept

_Derived = TypeVar("_Derived")


class DigestCache(LRUCache[str, _Derived], Generic[_Derived]):
    """Small results derived from a manifest's content, by its digest: content-addressed, so
    an entry never goes stale and a manifest is read and parsed once while it stays cached.
    `parsed` counts the documents parsed to fill it."""

    def __init__(self, maxsize: int, weight: Any = None) -> None:
        super().__init__(maxsize, getsizeof=weight)
        self.parsed = 0


# Index digest -> its entries (weighed by entries: some 15 MB at most, however large the
# indexes); image manifest digest -> its config blob (digest, size), None if it has none.
index_platform_cache: DigestCache[dict[str, IndexEntry]] = DigestCache(
    1 << 16, weight=lambda entries: len(entries) + 1
)
image_config_cache: DigestCache[tuple[str, int] | None] = DigestCache(1 << 14)


async def config_platform(store: BlobStore, digest: str) -> str | None:
    """The platform an image config blob names; None when it is missing, unreadable or over
    MAX_CONFIG_READ bytes. Bounded whatever a manifest declares of its size: earlier versions
    accepted sizes that lie, and the read must not hold a huge blob in memory."""
    try:
        # One byte past the limit tells a config too large to read.
        content = b"".join([chunk async for chunk in store.read(digest, 0, MAX_CONFIG_READ + 1)])
        if len(content) > MAX_CONFIG_READ:
            return None
        # A blob, served as pushed and never refused for its JSON (not `manifest_json`):
        # read only for the platform it shows.
        document = json.loads(content)
    except (OSError, ValueError):
        return None  # missing or unreadable: no platform shown, nothing else fails
    return platform_name(document) if isinstance(document, dict) else None


def platform_name(platform: dict[str, Any] | None) -> str | None:
    """`os/architecture[/variant]` of an index entry's platform, as docker prints it."""
    if not platform:
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p) or None


# Docker buildx lists an image's provenance and SBOM as index entries of platform
# unknown/unknown, marked by this annotation: attestations, not platforms.
REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
ATTESTATION = "attestation-manifest"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """An index entry as its index lists it."""

    platform: str | None
    attestation: bool = False
    attests: str | None = None  # an attestation's: the digest of the manifest it describes


async def index_entries(conn: Any, manifest_id: int, digest: str) -> dict[str, IndexEntry]:
    """An index's entries (`_index_entries`): its content read alone and parsed once while
    cached, so a page of large indexes never holds more than one parsed."""
    found = index_platform_cache.get(digest)
    if found is None:
        found = _index_entries(await _content(conn, manifest_id))
        index_platform_cache.parsed += 1
        index_platform_cache[digest] = found
    return found


async def image_config(conn: Any, manifest_id: int, digest: str) -> tuple[str, int] | None:
    """(digest, size) of an image manifest's config blob when it is an image config, else
    None; read and parsed once while cached, like `index_entries`."""
    if digest in image_config_cache:
        return image_config_cache[digest]
    row = (
        await conn.execute(
            select(manifests.c.content, manifests.c.media_type).where(manifests.c.id == manifest_id)
        )
    ).first()
    config: tuple[str, int] | None = None
    try:
        parsed = parse_stored_manifest(bytes(row.content), row.media_type)
    except Exception:  # stored manifests parsed on push; be lenient in a read model
        parsed = None
    if parsed and parsed.blobs and parsed.blobs[0].media_type in IMAGE_CONFIG_TYPES:
        config = (parsed.blobs[0].digest, parsed.blobs[0].size)
    image_config_cache.parsed += 1
    image_config_cache[digest] = config
    return config


def listed_platforms(platforms: Iterable[str]) -> dict[str, Any]:
    """The `platforms` of an image (distinct, in order, at most MAX_LISTED_PLATFORMS) and
    `platform_count`, how many distinct ones it has."""
    distinct = list(dict.fromkeys(platforms))
    return {"platforms": distinct[:MAX_LISTED_PLATFORMS], "platform_count": len(distinct)}


async def _content(conn: Any, manifest_id: int) -> bytes:
    row = (
        await conn.execute(select(manifests.c.content).where(manifests.c.id == manifest_id))
    ).first()
    return bytes(row.content) if row is not None else b""


def _index_entries(content: bytes) -> dict[str, IndexEntry]:
    """digest -> entry for the first MAX_INDEX_ENTRIES distinct entries of an index document,
    in its order (a digest listed twice: its first entry)."""
    try:
        document = stored_manifest_json(content)
        listed = document.get("manifests") or []
    except (ManifestInvalid, AttributeError):
        return {}
    found: dict[str, IndexEntry] = {}
    for item in listed:
        if not isinstance(item, dict):
            continue
        annotations = item.get("annotations")
        if not isinstance(annotations, dict):
            annotations = {}
        platform = item.get("platform")
        entry = IndexEntry(platform_name(platform if isinstance(platform, dict) else None))
        if annotations.get(REFERENCE_TYPE) == ATTESTATION:
            entry = IndexEntry(None, True, str(annotations.get(REFERENCE_DIGEST) or "") or None)
        found.setdefault(str(item.get("digest")), entry)
        if len(found) >= MAX_INDEX_ENTRIES:
            break
    return found


class IndexTree:
    """Indexes and the stored manifests their entries name, read level by level down to
    MAX_INDEX_DEPTH: per index its entries (platform, attestation; at most MAX_INDEX_ENTRIES,
    parsed once while cached) and the rows of the children those entries name, no others."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Any] = {}  # (image, digest) -> child manifest row
        self.entries: dict[int, dict[str, IndexEntry]] = {}  # index id -> its entries

    @classmethod
    async def read(cls, conn: Any, repo: RepositoryRef, rows: Sequence[Any]) -> IndexTree:
        tree = cls()
        level = [r for r in rows if r.media_type in INDEX_TYPES]
        for _ in range(MAX_INDEX_DEPTH):
            if not level:
                break
            wanted: dict[str, set[str]] = defaultdict(set)  # image -> digests its entries name
            for index in level:  # one at a time, each parsed once while cached
                tree.entries[index.id] = await index_entries(conn, index.id, index.digest)
                wanted[index.image].update(tree.entries[index.id])
            level = []
            for image, digests in wanted.items():
                ordered = sorted(digests - {d for i, d in tree.rows if i == image})
                for start in range(0, len(ordered), _IN_BATCH):
                    for child in await conn.execute(
                        select(
                            manifests.c.id,
                            manifests.c.image,
                            manifests.c.digest,
                            manifests.c.media_type,
                            manifests.c.size,
                        ).where(
                            manifests.c.repository_id == repo.id,
                            manifests.c.image == image,
                            manifests.c.digest.in_(ordered[start : start + _IN_BATCH]),
                        )
                    ):
                        tree.rows[(child.image, child.digest)] = child
                        if child.media_type in INDEX_TYPES:
                            level.append(child)
        return tree

    def entries_of(self, index_id: int, image: str) -> list[tuple[Any, IndexEntry]]:
        """The stored manifests an index's entries name, in its own order (platforms as its
        author listed them), with their entries."""
        found = []
        for digest, entry in self.entries.get(index_id, {}).items():
            child = self.rows.get((image, digest))
            if child is not None:
                found.append((child, entry))
        return found

    def platforms(self, root_id: int, image: str) -> list[str]:
        """The platforms the index `root_id` lists, each once in its order, a nested index's
        in its place (attestations are not platforms)."""
        found: dict[str, None] = {}
        seen: set[str] = set()

        def visit(index_id: int) -> None:
            for child, entry in self.entries_of(index_id, image):
                if child.digest in seen:
                    continue
                seen.add(child.digest)
                if child.media_type in INDEX_TYPES:
                    visit(child.id)  # as deep as entries were read: MAX_INDEX_DEPTH
                elif entry.platform and not entry.attests:
                    found.setdefault(entry.platform)

        visit(root_id)
        return list(found)


_IN_BATCH = 500  # digests per IN (...) list: far below any database's limit on parameters
