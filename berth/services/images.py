"""Read models of a repository's content for the management API and CLI: images (top-level
manifests) with their tags, sizes, platforms and referrers, tag listings and the image and
tag history (records in `image_records.py`; platforms from `image_platforms.py`, sizes and
what lies below an index from `image_sizes.py`). Writes (delete, untag, restore) stay in
`manifests.py` and `manifest_deletes.py`, on the push path's rules.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from berth.domain.digests import parse_digest
from berth.domain.errors import DigestInvalid
from berth.domain.manifests import INDEX_TYPES, parse_stored_manifest
from berth.domain.references import RepositoryRef
from berth.domain.tag_rules import ImmutableTagRule, full_name, protecting_rule
from berth.metadata.database import Database
from berth.metadata.queries import indexes_listing, is_image, is_index_child
from berth.metadata.tables import (
    blobs,
    image_events,
    manifests,
    tags,
)
from berth.services.content_in_use import missing_manifest
from berth.services.digest_starts import starts_named
from berth.services.image_platforms import (
    MAX_CONFIG_READ,
    IndexEntry,
    IndexTree,
    config_platform,
    config_platforms,
    image_config,
    listed_platforms,
)
from berth.services.image_records import (
    MAX_LISTED_CHILDREN,
    MAX_LISTED_LAYERS,
    Child,
    Event,
    Image,
    ImageDetail,
    Layer,
    ProtectedTag,
    ProtectingRule,
    Referrer,
    Tag,
)
from berth.services.image_sizes import child_count, sizes_of, tags_below
from berth.services.scanning.results import NOT_SCANNED, scan_summaries
from berth.services.tag_rules import immutable_rules
from berth.storage.base import BlobStore

# What an image listing and an image's details read of a manifest.
_IMAGE_COLUMNS = (
    manifests.c.id,
    manifests.c.image,
    manifests.c.digest,
    manifests.c.media_type,
    manifests.c.artifact_type,
    manifests.c.subject_digest,
    manifests.c.size,
    manifests.c.pushed_at,
)


class Images:
    def __init__(self, db: Database, store: BlobStore | None = None) -> None:
        self.db = db
        self.store = store  # to read image configs for their platform

    # ------------------------------------------------------------------ images

    def _top_level(self, repo: RepositoryRef, image: str | None, referrers: bool) -> Select[Any]:
        query = select(*_IMAGE_COLUMNS).where(
            manifests.c.repository_id == repo.id, ~is_index_child() if referrers else is_image()
        )
        if image is not None:
            query = query.where(manifests.c.image == image)
        return query

    async def list_images(
        self,
        repo: RepositoryRef,
        *,
        image: str | None = None,
        referrers: bool = False,
        page: int = 1,
        per_page: int = 20,
        descending: bool = True,
    ) -> tuple[list[Image], int]:
        """One page of a repository's images (newest first; `queries.is_image`) and how many
        there are: each with its tags, size (manifest and every blob it needs, an index's
        platform manifests included), platforms and referrers (signatures, SBOMs: listed under
        their subject). With `referrers`, referrers get rows of their own as well."""
        listing = self._top_level(repo, image, referrers).subquery()
        order = (listing.c.pushed_at, listing.c.id)
        async with self.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(listing))).scalar()
            rows = (
                await conn.execute(
                    select(listing)
                    .order_by(*(c.desc() if descending else c.asc() for c in order))
                    .limit(per_page)
                    .offset((page - 1) * per_page)
                )
            ).all()
            items = await self._describe(conn, repo, rows)
        return items, int(total or 0)

    async def image(self, repo: RepositoryRef, image: str, digest: str) -> ImageDetail:
        """One stored manifest (top-level or not) with its children, layers, referrers and the
        indexes that list it."""
        parse_digest(digest)
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(*_IMAGE_COLUMNS).where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        manifests.c.digest == digest,
                    )
                )
            ).first()
            if row is None:
                raise await missing_manifest(conn, repo, image, digest)
            parents = await conn.execute(
                indexes_listing(repo.id, image, digest).order_by(manifests.c.digest)
            )
            [described] = await self._describe(
                conn, repo, [row], parents=[str(parent.digest) for parent in parents]
            )
        assert isinstance(described, ImageDetail)
        return described

    async def _describe(
        self,
        conn: Any,
        repo: RepositoryRef,
        rows: Sequence[Any],
        *,
        parents: list[str] | None = None,
    ) -> list[Image]:
        """Images for manifest rows; with `parents` (the indexes listing the one row given),
        the details of one. What is below an index is added up in the database (sizes, tags,
        the count of its children); Python reads at most the entries whose platforms it lists
        and the children it lists, so an index of thousands costs as one of a few hundred."""
        if not rows:
            return []
        ids = [r.id for r in rows]
        images = {r.image for r in rows}
        tree = await IndexTree.read(conn, repo, rows)
        sizes = await sizes_of(conn, repo.id, rows)
        below_tags = await tags_below(
            conn, repo.id, [r.id for r in rows if r.media_type in INDEX_TYPES]
        )
        own_platforms = await self._own_platforms(
            conn, [r.id for r in rows if r.media_type not in INDEX_TYPES]
        )
        listed: dict[int, list[tuple[Any, IndexEntry]]] = {}
        if parents is not None:
            listed = {r.id: tree.entries_of(r.id, r.image)[:MAX_LISTED_CHILDREN] for r in rows}
        listed_rows = [child for entries in listed.values() for child, _ in entries]
        child_sizes = await sizes_of(conn, repo.id, listed_rows)
        digests = {r.digest for r in rows} | {child.digest for child in listed_rows}
        tag_names = await self._tags_of(conn, repo, images, digests)
        referrers = await self._referrers_of(conn, repo, images, {r.digest for r in rows})
        scanned = await scan_summaries(conn, ids)
        rules = await immutable_rules(conn, repo.project_id)

        described: list[Image] = []
        for row in rows:
            own = own_platforms.get(row.id)
            its_referrers = referrers.get((row.image, row.digest), [])
            its_tags = tag_names.get((row.image, row.digest), [])
            fields: dict[str, Any] = {
                "image": row.image,
                "digest": row.digest,
                "media_type": row.media_type,
                "artifact_type": row.artifact_type,
                "subject": row.subject_digest,
                "tags": its_tags,
                "protected_tags": [
                    ProtectedTag(tag=tag, protected_by=rule)
                    for tag in its_tags
                    if (rule := _protected_by(rules, repo, row.image, tag)) is not None
                ],
                "child_tags": below_tags.get(row.id, []),
                "size": sizes[row.id],
                **listed_platforms(
                    tree.platforms(row.id, row.image)
                    if row.media_type in INDEX_TYPES
                    else [own]
                    if own
                    else []
                ),
                "pushed_at": row.pushed_at,
                "referrer_count": len(its_referrers),
                "referrers": its_referrers,
                "scan": scanned.get(row.id, NOT_SCANNED),
            }
            if parents is None:
                described.append(Image(**fields))
                continue
            children = [
                Child(
                    digest=child.digest,
                    media_type=child.media_type,
                    platform=entry.platform,
                    attestation=entry.attestation,
                    attests=entry.attests,
                    tags=tag_names.get((row.image, child.digest), []),
                    size=child_sizes[child.id],
                )
                for child, entry in listed.get(row.id, [])
            ]
            layers, layer_count = (
                ([], 0) if row.media_type in INDEX_TYPES else await self._layers(conn, row.id)
            )
            described.append(
                ImageDetail(
                    **fields,
                    manifest_size=int(row.size),
                    children=children,
                    child_count=await child_count(conn, repo.id, row),
                    layers=layers,
                    layer_count=layer_count,
                    parents=parents,
                )
            )
        return described

    async def _own_platforms(self, conn: Any, ids: list[int]) -> dict[int, str | None]:
        """The platform of each single-platform image manifest, from its config blob."""
        if self.store is None or not ids:
            return {}
        found: dict[int, str | None] = {}
        for row in await conn.execute(
            select(manifests.c.id, manifests.c.digest).where(manifests.c.id.in_(ids))
        ):
            config = await image_config(conn, row.id, row.digest)
            if config is None:
                continue
            digest, size = config
            if digest not in config_platforms and size <= MAX_CONFIG_READ:
                config_platforms[digest] = await config_platform(self.store, digest)
            found[row.id] = config_platforms.get(digest)
        return found

    async def _layers(self, conn: Any, manifest_id: int) -> tuple[list[Layer], int]:
        """The first MAX_LISTED_LAYERS blobs an image manifest lists (its config first, then
        its layers), in its order, with their media types; and how many it lists."""
        content = (
            await conn.execute(
                select(manifests.c.content, manifests.c.media_type).where(
                    manifests.c.id == manifest_id
                )
            )
        ).first()
        try:
            parsed = parse_stored_manifest(bytes(content.content), content.media_type)
        except Exception:  # stored manifests parsed on push; be lenient in a read model
            return [], 0
        shown = parsed.blobs[:MAX_LISTED_LAYERS]
        stored = {
            row.digest: int(row.size)
            for row in await conn.execute(
                select(blobs.c.digest, blobs.c.size).where(
                    blobs.c.digest.in_(sorted({blob.digest for blob in shown}))
                )
            )
        }
        layers = [
            Layer(
                digest=blob.digest,
                media_type=blob.media_type,
                size=stored.get(blob.digest, blob.size),
            )
            for blob in shown
        ]
        return layers, len(parsed.blobs)

    async def _tags_of(
        self, conn: Any, repo: RepositoryRef, images: Iterable[str], digests: Iterable[str]
    ) -> dict[tuple[str, str], list[str]]:
        found: dict[tuple[str, str], list[str]] = defaultdict(list)
        for tag in await conn.execute(
            select(tags.c.image, tags.c.digest, tags.c.name)
            .where(
                tags.c.repository_id == repo.id,
                tags.c.image.in_(list(images)),
                tags.c.digest.in_(list(digests)),
            )
            .order_by(tags.c.name)
        ):
            found[(tag.image, tag.digest)].append(tag.name)
        return found

    async def _referrers_of(
        self, conn: Any, repo: RepositoryRef, images: Iterable[str], digests: Iterable[str]
    ) -> dict[tuple[str, str], list[Referrer]]:
        found: dict[tuple[str, str], list[Referrer]] = defaultdict(list)
        for ref in await conn.execute(
            select(
                manifests.c.image,
                manifests.c.digest,
                manifests.c.subject_digest,
                manifests.c.media_type,
                manifests.c.artifact_type,
                manifests.c.size,
                manifests.c.pushed_at,
            )
            .where(
                manifests.c.repository_id == repo.id,
                manifests.c.image.in_(list(images)),
                manifests.c.subject_digest.in_(list(digests)),
            )
            .order_by(manifests.c.pushed_at, manifests.c.id)
        ):
            found[(ref.image, ref.subject_digest)].append(
                Referrer(
                    digest=ref.digest,
                    media_type=ref.media_type,
                    artifact_type=ref.artifact_type,
                    size=int(ref.size),
                    pushed_at=ref.pushed_at,
                )
            )
        return found

    # ------------------------------------------------------------------ tags

    async def list_tags(
        self, repo: RepositoryRef, *, image: str | None = None, page: int = 1, per_page: int = 20
    ) -> tuple[list[Tag], int]:
        """Tags of a repository (or of one image name in it), by image name and tag."""
        query = select(tags.c.image, tags.c.name, tags.c.digest, tags.c.updated_at).where(
            tags.c.repository_id == repo.id
        )
        if image is not None:
            query = query.where(tags.c.image == image)
        listing = query.subquery()
        async with self.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(listing))).scalar()
            rows = await conn.execute(
                select(listing)
                .order_by(listing.c.image, listing.c.name)
                .limit(per_page)
                .offset((page - 1) * per_page)
            )
            rules = await immutable_rules(conn, repo.project_id)
            items = [
                Tag(
                    image=r.image,
                    tag=r.name,
                    digest=r.digest,
                    updated_at=r.updated_at,
                    protected_by=_protected_by(rules, repo, r.image, r.name),
                )
                for r in rows
            ]
        return items, int(total or 0)

    # ------------------------------------------------------------------ history

    async def history(
        self,
        repo: RepositoryRef,
        *,
        image: str | None = None,
        tag: str | None = None,
        digest: str | None = None,
        page: int = 1,
        per_page: int = 50,
    ) -> tuple[list[Event], int]:
        """Image and tag events of a repository, newest first, narrowed to an image name, a
        tag or a digest (as old or new digest); with whether each removed tag can be restored
        now (its last event is the removal and its image is still stored)."""
        query = select(image_events).where(image_events.c.repository_id == repo.id)
        if image is not None:
            query = query.where(image_events.c.image == image)
        if tag is not None:
            query = query.where(image_events.c.tag == tag)
        if digest is not None:
            query = query.where(_of_digest(digest))
        listing = query.subquery()
        async with self.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(listing))).scalar()
            rows = (
                await conn.execute(
                    select(listing)
                    .order_by(listing.c.id.desc())
                    .limit(per_page)
                    .offset((page - 1) * per_page)
                )
            ).all()
            restorable = await self._restorable(conn, repo, rows)
        return [
            Event(
                id=r.id,
                image=r.image,
                tag=r.tag,
                action=r.action,
                old_digest=r.old_digest,
                new_digest=r.new_digest,
                actor=r.actor,
                at=r.at,
                restorable=r.id in restorable,
            )
            for r in rows
        ], int(total or 0)

    async def _restorable(self, conn: Any, repo: RepositoryRef, rows: Sequence[Any]) -> set[int]:
        """Ids of `untag` events that are their tag's latest event and whose image is stored:
        the tags `Registry.restore_tag` would put back."""
        untags = [r for r in rows if r.action == "untag" and r.tag is not None]
        if not untags:
            return set()
        keys = {(r.image, r.tag) for r in untags}
        latest = (
            select(
                image_events.c.image, image_events.c.tag, func.max(image_events.c.id).label("id")
            )
            .where(
                image_events.c.repository_id == repo.id,
                image_events.c.tag.in_(sorted({tag for _, tag in keys})),
                image_events.c.image.in_(sorted({image for image, _ in keys})),
            )
            .group_by(image_events.c.image, image_events.c.tag)
        )
        latest_ids = {row.id for row in await conn.execute(latest)}
        candidates = [r for r in untags if r.id in latest_ids]
        if not candidates:
            return set()
        stored = {
            (row.image, row.digest)
            for row in await conn.execute(
                select(manifests.c.image, manifests.c.digest).where(
                    manifests.c.repository_id == repo.id,
                    manifests.c.digest.in_(sorted({r.old_digest for r in candidates})),
                )
            )
        }
        # A tag's current state: restorable only if no tag of that name exists now.
        present = {
            (row.image, row.name)
            for row in await conn.execute(
                select(tags.c.image, tags.c.name).where(
                    tags.c.repository_id == repo.id,
                    and_(
                        tags.c.name.in_(sorted({r.tag for r in candidates})),
                        tags.c.image.in_(sorted({r.image for r in candidates})),
                    ),
                )
            )
        }
        return {
            r.id
            for r in candidates
            if (r.image, r.old_digest) in stored and (r.image, r.tag) not in present
        }


def _protected_by(
    rules: list[ImmutableTagRule], repo: RepositoryRef, image: str, tag: str
) -> ProtectingRule | None:
    """The rule that protects `tag` of `image`, as a listing shows it; None when none does."""
    rule = protecting_rule(rules, full_name(repo.name, image), tag)
    if rule is None:
        return None
    return ProtectingRule(
        id=rule.id, tag_pattern=rule.tag_pattern, repository_pattern=rule.repository_pattern
    )


def _of_digest(digest: str) -> Any:
    """Events whose old or new digest is `digest`, or starts so (as the CLI's listings show
    digests: 12 hex digits, `starts_named`); the API passes whole digests only."""
    columns = (image_events.c.old_digest, image_events.c.new_digest)
    try:
        parse_digest(digest)
    except DigestInvalid:
        return or_(*(c.startswith(start) for start in starts_named(digest) for c in columns))
    return or_(*(c == digest for c in columns))
