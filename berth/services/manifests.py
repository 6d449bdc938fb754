"""Manifests and tags of a repository: fetching, pushing (with its checks: references present
(`manifest_checks.py`), image limit, tag overwrite), and restoring a removed tag; deletes are
`manifest_deletes.py`'s. Every change is written to the image history in its transaction."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update

from berth.domain.digests import digest_bytes, is_digest, parse_digest
from berth.domain.errors import (
    Conflict,
    Denied,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
)
from berth.domain.events import (
    IMAGE_LIMIT_REFUSED,
    IMAGE_PUSHED,
    TAG_RESTORED,
)
from berth.domain.manifests import (
    INDEX_TYPES,
    MAX_MANIFEST_BYTES,
    ParsedManifest,
    check_pushed_types,
    manifest_too_large,
    parse_manifest,
    stored_blobs,
)
from berth.domain.names import is_valid_tag
from berth.domain.references import RepositoryRef
from berth.domain.tag_rules import (
    TagImmutable,
    TagOverwriteDisabled,
    full_name,
    protecting_rule,
)
from berth.metadata.database import Database
from berth.metadata.queries import is_image, is_tagged
from berth.metadata.tables import (
    image_events,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
    utcnow,
)
from berth.services.content_audit import audit_content_change
from berth.services.gc.restrictions import ensure_writable
from berth.services.manifest_cache import ManifestCache, StoredManifest
from berth.services.manifest_checks import check_references, refuse_deep_nesting
from berth.services.scanning.on_push import queue_on_push
from berth.services.tag_rules import immutable_rules
from berth.services.webhook_events import (
    content_data,
    content_subject,
    enqueue_event,
    enqueue_event_now,
)

logger = logging.getLogger("berth.registry")


class ImageLimitReached(Denied):
    """A push past the repository's image limit (`max_images_per_repository`)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message, {"limit": limit})
        self.limit = limit


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None


_MANIFEST_COLUMNS = (manifests.c.digest, manifests.c.media_type, manifests.c.content)
_MANIFEST_BY_DIGEST = select(*_MANIFEST_COLUMNS).where(
    manifests.c.repository_id == bindparam("repository_id"),
    manifests.c.image == bindparam("image"),
    manifests.c.digest == bindparam("reference"),
)
_MANIFEST_BY_TAG = (
    select(*_MANIFEST_COLUMNS)
    .join(
        tags,
        and_(
            tags.c.repository_id == manifests.c.repository_id,
            tags.c.image == manifests.c.image,
            tags.c.digest == manifests.c.digest,
        ),
    )
    .where(
        tags.c.repository_id == bindparam("repository_id"),
        tags.c.image == bindparam("image"),
        tags.c.name == bindparam("reference"),
    )
)


# How many images past its limit a repository may hold for a moment while a multi-platform
# image arrives: its platform manifests come by digest before the index that makes them one
# image (`skopeo copy --all`, `podman manifest push`, `ctr push`, buildx), and until then
# each counts as an image of its own. Such a push sends its index within this many seconds of
# its platform manifests.
PLATFORM_ALLOWANCE = 100
PLATFORM_WINDOW_SECONDS = 3600


async def count_images(conn: Any, repository_id: int) -> int:
    """Images in a repository: top-level manifests (an index's children are not counted)."""
    count = await conn.execute(
        select(func.count())
        .select_from(manifests)
        .where(manifests.c.repository_id == repository_id, is_image())
    )
    return int(count.scalar() or 0)


async def count_loose_manifests(db: Database, conn: Any, repository_id: int) -> int:
    """Images that may still become the platform manifests of an index yet to come: image
    manifests pushed within PLATFORM_WINDOW_SECONDS with no tag, no subject and no index
    listing them."""
    count = await conn.execute(
        select(func.count())
        .select_from(manifests)
        .where(
            manifests.c.repository_id == repository_id,
            manifests.c.pushed_at >= db.clock(-PLATFORM_WINDOW_SECONDS),
            manifests.c.subject_digest.is_(None),
            manifests.c.media_type.not_in(INDEX_TYPES),
            is_image(),
            ~is_tagged(),
        )
    )
    return int(count.scalar() or 0)


class ManifestContent:
    """Manifests and tags: a part of `Registry`."""

    db: Database
    max_images: int
    manifest_cache: ManifestCache

    async def get_manifest(self, repo: RepositoryRef, image: str, reference: str) -> StoredManifest:
        cached = self.manifest_cache.get(repo.id, image, reference)
        if cached is not None:
            return cached
        stamp = self.manifest_cache.stamp.read()  # before the read: a change since voids it
        if is_digest(reference):
            parse_digest(reference)
            statement = _MANIFEST_BY_DIGEST
        else:
            statement = _MANIFEST_BY_TAG
        row = None
        if is_digest(reference) or is_valid_tag(reference):  # no other tag can be stored
            row = await self.db.first(
                statement, repository_id=repo.id, image=image, reference=reference
            )
        if row is None:
            raise ManifestUnknown(
                f"{reference_named(reference)} is not in this repository", {"reference": reference}
            )
        content = bytes(row[2])
        if digest_bytes(content, parse_digest(row[0]).algorithm) != row[0]:
            logger.error("manifest %s is damaged in the database", row[0])
            raise ManifestUnknown(
                f"manifest {row[0]} is damaged in storage; push it again",
                {"digest": row[0]},
            )
        manifest = StoredManifest(row[0], row[1], content)
        self.manifest_cache.put(repo.id, image, reference, manifest, stamp)
        return manifest

    async def put_manifest(
        self,
        repo: RepositoryRef,
        image: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        *,
        project_wide: bool = True,
        actor: str = "anonymous",
    ) -> PushedManifest:
        """Store a manifest (and move its tag). Its blobs must be in the project, or, with
        `project_wide` off (a pusher with only a repository role), in this repository."""
        if len(body) > MAX_MANIFEST_BYTES:
            raise manifest_too_large()
        tag: str | None = None
        if is_digest(reference):
            expected = parse_digest(reference)
            digest = digest_bytes(body, expected.algorithm)
            if digest != reference:
                raise DigestInvalid(
                    f"manifest content has digest {digest}, not {reference}",
                    {"expected": reference, "actual": digest},
                )
        else:
            if not is_valid_tag(reference):
                raise ManifestInvalid(
                    f"invalid tag {reference!r}: up to 128 letters, digits, '_', '.' and '-', "
                    "not starting with '.' or '-'",
                    {"tag": reference},
                )
            tag = reference
            digest = digest_bytes(body)
        parsed = parse_manifest(body, content_type)
        check_pushed_types(parsed)
        try:
            await self._store_manifest(
                repo, image, tag, digest, body, parsed, project_wide=project_wide, actor=actor
            )
        except ImageLimitReached as refusal:
            data = content_data(
                repo,
                image,
                actor,
                tag=tag,
                digest=digest,
                message=refusal.message,
                limit=refusal.limit,
            )
            await enqueue_event_now(
                self.db,
                repo.project_id,
                IMAGE_LIMIT_REFUSED,
                data,
                content_subject(repo, image, reference),
            )
            raise
        return PushedManifest(digest, parsed.subject.digest if parsed.subject else None)

    async def _store_manifest(
        self,
        repo: RepositoryRef,
        image: str,
        tag: str | None,
        digest: str,
        body: bytes,
        parsed: ParsedManifest,
        *,
        project_wide: bool,
        actor: str,
    ) -> None:
        async with self.db.write() as conn:
            await ensure_writable(conn, repo.project_id, repo.project)
            held_foreign = await check_references(conn, repo, image, parsed, project_wide)
            known = (
                await conn.execute(
                    select(manifests.c.id, manifests.c.content).where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        manifests.c.digest == digest,
                    )
                )
            ).first()
            if known is not None and bytes(known.content) != body:
                # Stored bytes damaged since: these match the digest, so they repair it.
                await conn.execute(
                    update(manifests).where(manifests.c.id == known.id).values(content=body)
                )
            changed = known is None
            if known is None:
                if parsed.is_index:
                    await refuse_deep_nesting(conn, repo, image, parsed)
                await self._lock_repository(conn, repo)
                manifest_id = await self._insert_manifest(
                    conn, repo, image, digest, body, parsed, held_foreign
                )
                platform = tag is None and not parsed.is_index and parsed.subject is None
                await self._check_image_limit(conn, repo, platform)
                if parsed.subject is None:  # referrers (signatures, SBOMs) are not images
                    await conn.execute(queue_on_push(manifest_id, repo.id, actor))
                await write_image_event(conn, repo, image, None, "push", None, digest, actor)
            if tag is not None and await self._move_tag(conn, repo, image, tag, digest, actor):
                changed = True
            if changed:
                data = content_data(
                    repo,
                    image,
                    actor,
                    tag=tag,
                    digest=digest,
                    media_type=parsed.media_type,
                    size=len(body),
                )
                subject = content_subject(repo, image, tag or digest)
                await enqueue_event(conn, repo.project_id, IMAGE_PUSHED, data, subject)

    async def _lock_repository(self, conn: Any, repo: RepositoryRef) -> None:
        """Serialize pushes to one repository, so the image count cannot be raced past its
        limit (SQLite's single writer does this already)."""
        if not self.db.is_sqlite:
            await conn.execute(
                select(repositories.c.id).where(repositories.c.id == repo.id).with_for_update()
            )

    async def _check_image_limit(self, conn: Any, repo: RepositoryRef, platform: bool) -> None:
        """After inserting a manifest: refuse (rolling it back) past the repository's limit.

        `platform`: an image manifest pushed by digest alone, as a multi-platform push sends
        its platform manifests before their index. It is refused only when the repository
        has no room left for the image the index will make of them (its images but the
        loose manifests of the last hour fill the limit), or past the limit by
        PLATFORM_ALLOWANCE; the index (or tag) that follows is held to the limit itself."""
        limit = self.max_images
        total = (
            await conn.execute(
                select(func.count())
                .select_from(manifests)
                .where(manifests.c.repository_id == repo.id)
            )
        ).scalar()
        if total <= limit:
            return  # images never outnumber manifests: no need for the exact count
        images = await count_images(conn, repo.id)
        if images <= limit:
            return
        if (
            platform
            and images <= limit + PLATFORM_ALLOWANCE
            and images - await count_loose_manifests(self.db, conn, repo.id) < limit
        ):
            return
        raise ImageLimitReached(
            f"repository {repo.project}/{repo.name} has reached its limit of {limit:,} images "
            "(max_images_per_repository); delete images or run garbage collection first",
            limit,
        )

    async def _insert_manifest(
        self,
        conn: Any,
        repo: RepositoryRef,
        image: str,
        digest: str,
        body: bytes,
        parsed: ParsedManifest,
        held_foreign: list[str],
    ) -> int:
        # By the database's clock, as garbage collection's grace cutoff is (`Decider.cutoff`).
        now = self.db.clock()
        result = await conn.execute(
            manifests.insert().values(
                repository_id=repo.id,
                image=image,
                digest=digest,
                media_type=parsed.media_type,
                artifact_type=parsed.artifact_type,
                subject_digest=parsed.subject.digest if parsed.subject else None,
                size=len(body),
                content=body,
                annotations=json.dumps(parsed.annotations) if parsed.annotations else None,
                pushed_at=now,
            )
        )
        manifest_id = int(result.inserted_primary_key[0])
        references = {d: False for d in [*stored_blobs(parsed), *held_foreign]}
        references.update({child.digest: True for child in parsed.children})
        if references:
            await conn.execute(
                manifest_references.insert(),
                [
                    {"manifest_id": manifest_id, "digest": d, "is_manifest": is_manifest}
                    for d, is_manifest in references.items()
                ],
            )
        blob_links = [d for d, is_manifest in references.items() if not is_manifest]
        if blob_links:
            await conn.execute(
                self.db.insert_ignore(repository_blobs).values(linked_at=now),
                [{"repository_id": repo.id, "digest": d} for d in blob_links],
            )
        return manifest_id

    async def _move_tag(
        self,
        conn: Any,
        repo: RepositoryRef,
        image: str,
        tag: str,
        digest: str,
        actor: str,
        action: str | None = None,
    ) -> bool:
        """Point the tag at `digest`; False when it named it already."""
        current = (
            await conn.execute(
                select(tags.c.digest).where(
                    tags.c.repository_id == repo.id, tags.c.image == image, tags.c.name == tag
                )
            )
        ).scalar()
        if current == digest:
            return False
        if current is not None:
            await refuse_protected_tags(conn, repo, image, [tag], "moved to another image")
        await conn.execute(
            self.db.upsert(
                tags, ["repository_id", "image", "name"], {"digest": digest, "updated_at": utcnow()}
            ).values(
                repository_id=repo.id, image=image, name=tag, digest=digest, updated_at=utcnow()
            )
        )
        action = action or ("tag" if current is None else "move")
        await write_image_event(conn, repo, image, tag, action, current, digest, actor)
        return True

    async def restore_tag(
        self, repo: RepositoryRef, image: str, tag: str, *, actor: str, client: str | None
    ) -> str:
        """Put a removed tag back on the image it last named, while that image is stored, and
        audit it (`tag.restore`); returns that image's digest."""
        async with self.db.write() as conn:
            await ensure_writable(conn, repo.project_id, repo.project)
            last = (
                await conn.execute(
                    select(
                        image_events.c.action, image_events.c.old_digest, image_events.c.new_digest
                    )
                    .where(
                        image_events.c.repository_id == repo.id,
                        image_events.c.image == image,
                        image_events.c.tag == tag,
                    )
                    # By id, as Images decides "restorable": clocks of nodes may differ.
                    .order_by(image_events.c.id.desc())
                    .limit(1)
                )
            ).first()
            if last is None:
                raise ManifestUnknown(f"tag {tag!r} has no history in this repository")
            if last.action != "untag":
                raise Conflict(f"tag {tag!r} exists; only a removed tag can be restored")
            digest = last.old_digest
            stored = (
                await conn.execute(
                    select(manifests.c.id).where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        manifests.c.digest == digest,
                    )
                )
            ).first()
            if stored is None:
                raise ManifestUnknown(
                    f"tag {tag!r} named {digest}, which is no longer stored (deleted or garbage "
                    "collected); it cannot be restored",
                    {"digest": digest},
                )
            await self._move_tag(conn, repo, image, tag, digest, actor, action="restore")
            await audit_content_change(
                conn, "tag.restore", repo, image, tag, actor=actor, client=client
            )
            data = content_data(repo, image, actor, tag=tag, digest=digest)
            subject = content_subject(repo, image, tag)
            await enqueue_event(conn, repo.project_id, TAG_RESTORED, data, subject)
        return str(digest)


async def write_image_event(
    conn: Any,
    repo: RepositoryRef,
    image: str,
    tag: str | None,
    action: str,
    old: str | None,
    new: str | None,
    actor: str,
) -> None:
    await conn.execute(
        image_events.insert().values(
            repository_id=repo.id,
            image=image,
            tag=tag,
            action=action,
            old_digest=old,
            new_digest=new,
            actor=actor,
            at=utcnow(),
        )
    )


async def refuse_protected_tags(
    conn: Any, repo: RepositoryRef, image: str, names: list[str], change: str
) -> None:
    """TagOverwriteDisabled when the repository's tag overwrite is off (every tag is
    fixed), TagImmutable when an immutable tag rule of the project protects one of
    `names`."""
    if not names:
        return
    if not repo.tag_overwrite:
        raise TagOverwriteDisabled(names[0], f"{repo.project}/{repo.name}", change)
    rules = await immutable_rules(conn, repo.project_id)
    name = full_name(repo.name, image)
    for tag in names:
        rule = protecting_rule(rules, name, tag)
        if rule is not None:
            raise TagImmutable(tag, rule, change)


def reference_named(reference: str) -> str:
    """A manifest reference as a message names it: a digest as a manifest, a tag as a tag
    (`tag 'v2' is not in this repository`, where `manifest 'v2'` left users wondering)."""
    return f"manifest {reference}" if is_digest(reference) else f"tag {reference!r}"
