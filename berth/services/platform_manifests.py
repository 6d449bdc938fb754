"""What goes with an image being deleted: the one rule retention runs and the management API's
image delete follow. A platform manifest goes with its index when no stored index that stays
lists it and it has no tag (a tag of its own makes it an image someone named: it stays, an
image of its own once no index lists it). A referrer (a signature, an SBOM) goes with its
subject when no stored index that stays lists it. And which images the manifests deleted
together are (`deleted_images`: an index with its platform manifests, a subject with its
referrers, is one image), for the webhook events and audit entries both record."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select

from berth.metadata.queries import rows_in_chunks
from berth.metadata.tables import manifest_references, manifests

# A manifest of a repository: (repository id, image, digest).
ManifestKey = tuple[int, str, str]

T = TypeVar("T")


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
        parent = manifests.alias("parent")
        repository_ids = sorted({key[0] for key in keys})
        for row in await rows_in_chunks(
            conn,
            sorted({key[2] for key in keys}),
            lambda digests: (
                select(
                    parent.c.repository_id,
                    parent.c.image,
                    parent.c.digest.label("parent"),
                    manifest_references.c.digest,
                )
                .join(parent, parent.c.id == manifest_references.c.manifest_id)
                .where(
                    manifest_references.c.is_manifest,
                    manifest_references.c.digest.in_(digests),
                    parent.c.repository_id.in_(repository_ids),
                )
            ),
        ):
            listed[(row.repository_id, row.image, row.digest)].add(row.parent)
        return cls(listed)

    def is_listed(self, key: ManifestKey) -> bool:
        """Some stored index that is not being deleted lists it."""
        return bool(self._listed.get(key))

    def listed_by(self, key: ManifestKey) -> list[str]:
        """The stored indexes not being deleted that list it (digests, sorted)."""
        return sorted(self._listed.get(key, ()))

    def let_go(self, index: ManifestKey, children: Iterable[str]) -> None:
        """The index `index` is being deleted: it no longer holds its `children` (digests)."""
        repository_id, image, digest = index
        for child in children:
            self._listed[(repository_id, image, child)].discard(digest)

    def goes_with_its_index(self, key: ManifestKey, tags: Set[str]) -> bool:
        """Whether the platform manifest `key`, with `tags` now, goes with the indexes let go
        of: no index that stays lists it, and it has no tag (one with a tag of its own is an
        image someone named, which stays; what only it lists stays with it)."""
        return not self.is_listed(key) and not tags

    def referrer_goes(self, key: ManifestKey) -> bool:
        """Whether the referrer `key`, whose subject goes, goes with it: no index that stays
        lists it (its tags, such as cosign's `sha256-<hex>.sig`, are its subject's business
        and go with it)."""
        return not self.is_listed(key)


def settle(candidates: Iterable[T], goes: Callable[[T], bool]) -> None:
    """Ask `goes` of each candidate not gone yet, in their order, round after round while one
    went: one going can let others go (an index what it lists, a subject its referrers)."""
    pending = list(candidates)
    while True:
        left = [candidate for candidate in pending if not goes(candidate)]
        if len(left) == len(pending):
            return
        pending = left


@dataclass(frozen=True, slots=True)
class DeletedManifest:
    """A manifest deleted in a transaction, with the tags deleted with it; `index`, for a
    manifest deleted as part of an image (a platform manifest with its index, a referrer
    with its subject), the digest of that image (the top one, down nested indexes and
    referrers of referrers); `referrer`, whether it went as a referrer."""

    image: str
    digest: str
    tags: list[str]
    index: str | None = None
    referrer: bool = False


@dataclass(frozen=True, slots=True)
class DeletedReferrer:
    """A referrer deleted with its image, and the tags deleted with it."""

    digest: str
    tags: list[str]


@dataclass(frozen=True, slots=True)
class DeletedImage:
    """An image deleted: a manifest deleted on its own account (an image manifest, an index,
    a referrer deleted by itself), the platform manifests (digests) and the referrers deleted
    with it, and every tag deleted with it or its platform manifests (each referrer's tags
    are its own, as the image listing shows them: in its `referrers` entry)."""

    image: str
    digest: str
    tags: list[str]
    platform_manifests: list[str]
    referrers: list[DeletedReferrer] = field(default_factory=list)

    def audit_detail(self) -> dict[str, int] | None:
        """The `image.delete` audit entry's detail: how many went with it (counts; the
        webhook event lists their digests)."""
        counts = {
            "platform_manifest_count": len(self.platform_manifests),
            "referrer_count": len(self.referrers),
        }
        return {key: count for key, count in counts.items() if count} or None


def deleted_images(deleted: Iterable[DeletedManifest]) -> list[DeletedImage]:
    """The images among manifests deleted together, as every count and list names them: a
    platform manifest is part of its index's image and a referrer deleted with its subject
    part of the subject's, not images of their own. Each manifest is in exactly one (a part
    whose image was not deleted with it counts as an image)."""
    deleted = list(deleted)
    heads = {(m.image, m.digest) for m in deleted if m.index is None}

    def part_of(m: DeletedManifest) -> tuple[str, str] | None:
        return (m.image, m.index) if m.index is not None and (m.image, m.index) in heads else None

    parts: dict[tuple[str, str], list[DeletedManifest]] = defaultdict(list)
    for m in deleted:
        head = part_of(m)
        if head is not None:
            parts[head].append(m)
    images = []
    for m in deleted:
        if part_of(m) is None:
            with_it = sorted(parts.get((m.image, m.digest), ()), key=lambda p: p.digest)
            platforms = [p for p in with_it if not p.referrer]
            images.append(
                DeletedImage(
                    m.image,
                    m.digest,
                    sorted({*m.tags, *(tag for p in platforms for tag in p.tags)}),
                    [p.digest for p in platforms],
                    [DeletedReferrer(p.digest, p.tags) for p in with_it if p.referrer],
                )
            )
    return images
