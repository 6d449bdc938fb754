"""What lies below a repository's indexes, read in the database: one recursive query of the
manifests below each index (`_below_indexes`, down to MAX_INDEX_DEPTH), and from it an image's
size (every manifest and blob counted once) and the tags below an index; how many stored
manifests an index lists."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, literal, select, union, union_all

from berth.domain.manifests import INDEX_TYPES, MAX_INDEX_DEPTH
from berth.metadata.tables import blobs, manifest_references, manifests, tags


def _below_indexes(repository_id: int, root_ids: list[int]) -> Any:
    """A recursive query of (root_id, repository_id, id, image, digest, media_type, size,
    depth): every manifest below each index among `root_ids` (its entries, a nested index's
    entries, ...) down to MAX_INDEX_DEPTH levels. A manifest reached by two paths may come
    twice; an entry not stored comes as a row of nulls but its root's id (which no join, sum
    or further level picks up).

    The outer joins and `+ 0` fix SQLite's plan: from the roots by id to their references to
    each child by the unique (repository, image, digest). Given the repository as a value to
    match, it read every manifest of the repository per root instead (1.3 s for 256 roots in
    a repository of 5,000 manifests, against 3 ms)."""
    root, child, listing = manifests.alias("root"), manifests.alias("child"), manifest_references
    columns = (
        child.c.repository_id,
        child.c.id,
        child.c.image,
        child.c.digest,
        child.c.media_type,
        child.c.size,
    )
    anchor = (
        select(root.c.id.label("root_id"), *columns, literal(1).label("depth"))
        .join(listing, and_(listing.c.manifest_id == root.c.id, listing.c.is_manifest))
        .join(
            child,
            and_(
                child.c.repository_id == root.c.repository_id,
                child.c.image == root.c.image,
                child.c.digest == listing.c.digest,
            ),
            isouter=True,
        )
        .where(root.c.repository_id + 0 == repository_id, root.c.id.in_(root_ids))
    )
    below = anchor.cte("below", recursive=True)
    parent, nested, nested_listing = (
        below.alias("parent"),
        manifests.alias("nested"),
        listing.alias(),
    )
    step = (
        select(
            parent.c.root_id,
            nested.c.repository_id,
            nested.c.id,
            nested.c.image,
            nested.c.digest,
            nested.c.media_type,
            nested.c.size,
            parent.c.depth + 1,
        )
        .join(
            nested_listing,
            and_(nested_listing.c.manifest_id == parent.c.id, nested_listing.c.is_manifest),
        )
        .join(
            nested,
            and_(
                nested.c.repository_id == parent.c.repository_id,
                nested.c.image == parent.c.image,
                nested.c.digest == nested_listing.c.digest,
            ),
            isouter=True,
        )
        .where(parent.c.media_type.in_(INDEX_TYPES), parent.c.depth < MAX_INDEX_DEPTH)
    )
    return below.union(step)


async def sizes_of(conn: Any, repository_id: int, rows: Sequence[Any]) -> dict[int, int]:
    """Manifest id -> bytes of it, the manifests below it and every blob they need, each
    counted once: added up in the database, however many manifests an index lists."""
    if not rows:
        return {}
    ids = sorted({int(r.id) for r in rows})
    totals = {int(r.id): int(r.size) for r in rows}
    below = _below_indexes(repository_id, ids)
    distinct_below = select(below.c.root_id, below.c.id, below.c.size).distinct().subquery()
    manifest_bytes = select(distinct_below.c.root_id, func.sum(distinct_below.c.size)).group_by(
        distinct_below.c.root_id
    )
    members = union(
        select(manifests.c.id.label("root_id"), manifests.c.id).where(manifests.c.id.in_(ids)),
        select(below.c.root_id, below.c.id),
    ).subquery()
    needed = (
        select(members.c.root_id, manifest_references.c.digest)
        .join(manifest_references, manifest_references.c.manifest_id == members.c.id)
        .where(~manifest_references.c.is_manifest)
        .distinct()
        .subquery()
    )
    blob_bytes = (
        select(needed.c.root_id, func.sum(blobs.c.size))
        .join(blobs, blobs.c.digest == needed.c.digest)
        .group_by(needed.c.root_id)
    )
    # One statement: the manifests below are found once for both sums.
    for root_id, added in await conn.execute(union_all(manifest_bytes, blob_bytes)):
        totals[int(root_id)] += int(added or 0)
    return totals


async def tags_below(conn: Any, repository_id: int, index_ids: list[int]) -> dict[int, list[str]]:
    """Index id -> the tags on the manifests below it (a nested index and its entries)."""
    if not index_ids:
        return {}
    below = _below_indexes(repository_id, index_ids)
    found: dict[int, list[str]] = defaultdict(list)
    for row in await conn.execute(
        select(below.c.root_id, tags.c.name)
        .join(
            tags,
            and_(
                tags.c.repository_id == repository_id,
                tags.c.image == below.c.image,
                tags.c.digest == below.c.digest,
            ),
        )
        .distinct()
    ):
        found[int(row.root_id)].append(row.name)
    return {root_id: sorted(names) for root_id, names in found.items()}


async def child_count(conn: Any, repository_id: int, row: Any) -> int:
    """The stored manifests an index lists, counted in the database."""
    if row.media_type not in INDEX_TYPES:
        return 0
    listing = manifest_references
    count = (
        await conn.execute(
            select(func.count())
            .select_from(listing)
            .join(
                manifests,
                and_(
                    manifests.c.repository_id == repository_id,
                    manifests.c.image == row.image,
                    manifests.c.digest == listing.c.digest,
                ),
            )
            .where(listing.c.manifest_id == row.id, listing.c.is_manifest)
        )
    ).scalar()
    return int(count or 0)
