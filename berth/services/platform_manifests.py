"""Which platform manifests go with the indexes being deleted: the one rule retention runs and
the management API's image delete follow. A platform manifest goes with its index when no
stored index that stays lists it and it has no tag the deleter did not agree to remove (a tag
of its own makes it an image someone still names)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Set
from typing import Any

from sqlalchemy import select

from berth.metadata.tables import manifest_references, manifests

# A manifest of a repository: (repository id, image, digest).
ManifestKey = tuple[int, str, str]


class IndexListings:
    """The stored indexes (their digests) that list each of some manifests, as the indexes
    being deleted let go of them."""

    def __init__(self, listed: dict[ManifestKey, set[str]]) -> None:
        self._listed = listed

    @classmethod
    async def read(cls, conn: Any, keys: Iterable[ManifestKey]) -> IndexListings:
        """The indexes of the same repository and image that list each of `keys`."""
        keys = list(keys)
        listed: dict[ManifestKey, set[str]] = defaultdict(set)
        if not keys:
            return cls(listed)
        parent = manifests.alias("parent")
        for row in await conn.execute(
            select(
                parent.c.repository_id,
                parent.c.image,
                parent.c.digest.label("parent"),
                manifest_references.c.digest,
            )
            .join(parent, parent.c.id == manifest_references.c.manifest_id)
            .where(
                manifest_references.c.is_manifest,
                manifest_references.c.digest.in_({key[2] for key in keys}),
                parent.c.repository_id.in_({key[0] for key in keys}),
            )
        ):
            listed[(row.repository_id, row.image, row.digest)].add(row.parent)
        return cls(listed)

    def is_listed(self, key: ManifestKey) -> bool:
        """Some stored index that is not being deleted lists it."""
        return bool(self._listed.get(key))

    def let_go(self, index: ManifestKey, children: Iterable[str]) -> None:
        """The index `index` is being deleted: it no longer holds its `children` (digests)."""
        repository_id, image, digest = index
        for child in children:
            self._listed[(repository_id, image, child)].discard(digest)

    def goes_with_its_index(
        self, key: ManifestKey, tags: Set[str], removable_tags: Set[str] = frozenset()
    ) -> bool:
        """Whether the platform manifest `key`, with `tags` now, goes with the indexes let
        go of: no index that stays lists it, and every tag on it is one the deleter agreed to
        remove (retention: the tags its snapshot judged the image by; an image delete: none)."""
        return not self.is_listed(key) and set(tags) <= set(removable_tags)
