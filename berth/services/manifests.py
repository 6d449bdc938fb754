"""Manifests and tags of a repository: fetching, pushing (with its checks: references present,
image limit, tag overwrite), deleting, and restoring a removed tag. Every change is written to
the image history in its transaction."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update

from berth.domain.digests import digest_bytes, is_digest, parse_digest
from berth.domain.errors import (
    Conflict,
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
)
from berth.domain.events import (
    IMAGE_DELETED,
    IMAGE_LIMIT_REFUSED,
    IMAGE_PUSHED,
    TAG_DELETED,
    TAG_RESTORED,
)
from berth.domain.manifests import (
    INDEX_TYPES,
    MAX_INDEX_DEPTH,
    MAX_MANIFEST_BYTES,
    Descriptor,
    ParsedManifest,
    check_pushed_types,
    foreign_layers,
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
from berth.metadata.audit import write_audit_entries
from berth.metadata.database import Database
from berth.metadata.queries import chunks, indexes_listing, is_image, rows_in_chunks
from berth.metadata.tables import (
    blobs,
    image_events,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
    utcnow,
)
from berth.services.content_audit import audit_content_change
from berth.services.content_in_use import (
    index_child_refusal,
    manifests_using,
    missing_manifest,
)
from berth.services.gc.restrictions import ensure_writable
from berth.services.image_records import MAX_LISTED_KEPT, ImageDeletion, KeptManifest
from berth.services.manifest_cache import ManifestCache, StoredManifest
from berth.services.platform_manifests import (
    DeletedImage,
    DeletedManifest,
    IndexListings,
    deleted_images,
    settle,
)
from berth.services.scanning.scans import queue_on_push
from berth.services.tag_rules import immutable_rules
from berth.services.webhook_events import (
    DeletedReferrerData,
    content_data,
    content_subject,
    enqueue_event,
    enqueue_event_now,
    enqueue_events,
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


async def count_images(conn: Any, repository_id: int) -> int:
    """Images in a repository: top-level manifests (an index's children are not counted)."""
    count = await conn.execute(
        select(func.count())
        .select_from(manifests)
        .where(manifests.c.repository_id == repository_id, is_image())
    )
    return int(count.scalar() or 0)


@dataclass(frozen=True, slots=True)
class _WhatGoes:
    """What goes with an image deleted (digests) and what it reaches that stays."""

    platforms: list[str]
    referrers: list[str]
    kept: list[KeptManifest]


async def _refuse_deleting_an_index_child(
    conn: Any, repo: RepositoryRef, image: str, digest: str
) -> None:
    """The management API deletes a platform manifest a stored index lists with that index
    only: 409 naming it."""
    parents, total = await manifests_using(
        conn, indexes_listing(repo.id, image, digest).order_by(manifests.c.id)
    )
    if parents:
        raise await index_child_refusal(conn, repo, digest, parents, total, index_takes_it=True)


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
                f"manifest {reference!r} is not in this repository", {"reference": reference}
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
            held_foreign = await self._check_references(conn, repo, image, parsed, project_wide)
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
                    await _refuse_deep_nesting(conn, repo, image, parsed)
                await self._lock_repository(conn, repo)
                manifest_id = await self._insert_manifest(
                    conn, repo, image, digest, body, parsed, held_foreign
                )
                await self._check_image_limit(conn, repo)
                if parsed.subject is None:  # referrers (signatures, SBOMs) are not images
                    await conn.execute(queue_on_push(manifest_id, repo.id, actor))
                await self._event(conn, repo, image, None, "push", None, digest, actor)
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

    async def _check_image_limit(self, conn: Any, repo: RepositoryRef) -> None:
        """After inserting a manifest: refuse (rolling it back) past the repository's limit."""
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
        if await count_images(conn, repo.id) > limit:
            raise ImageLimitReached(
                f"repository {repo.project}/{repo.name} has reached its limit of {limit:,} images "
                "(max_images_per_repository); delete images or run garbage collection first",
                limit,
            )

    async def _event(
        self,
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

    async def _check_references(
        self, conn: Any, repo: RepositoryRef, image: str, parsed: ParsedManifest, project_wide: bool
    ) -> list[str]:
        """Refuse a manifest whose content is not here; return the non-distributable layers
        the registry holds (referenced like any blob, so they are kept and served)."""
        needed = stored_blobs(parsed)
        foreign = foreign_layers(parsed)
        held: list[str] = []
        if needed or foreign:
            wanted = [*needed, *(layer.digest for layer in foreign)]
            holders = (
                select(blobs.c.digest, blobs.c.size)
                .join(repository_blobs, repository_blobs.c.digest == blobs.c.digest)
                .where(blobs.c.digest.in_(wanted))
            )
            if project_wide:
                holders = holders.join(
                    repositories, repositories.c.id == repository_blobs.c.repository_id
                ).where(repositories.c.project_id == repo.project_id)
            else:
                holders = holders.where(repository_blobs.c.repository_id == repo.id)
            found = {row.digest: row.size for row in await conn.execute(holders.distinct())}
            where = "this project" if project_wide else "this repository"
            missing = [d for d in needed if d not in found]
            if missing:
                raise ManifestBlobUnknown(
                    f"manifest references blob {missing[0]}, which is not in {where}; "
                    "push the blob first",
                    {"missing": missing},
                )
            # A foreign layer the registry lacks must say where clients fetch it, or the
            # image could never be pulled.
            unreachable = [
                layer.digest for layer in foreign if layer.digest not in found and not layer.urls
            ]
            if unreachable:
                raise ManifestBlobUnknown(
                    f"non-distributable layer {unreachable[0]} is not in {where} and has no "
                    "'urls' to fetch it from; push the blob or give the layer an http(s) URL",
                    {"missing": unreachable},
                )
            _check_sizes("blob", parsed.blobs, found)
            held = [layer.digest for layer in foreign if layer.digest in found]
        children = [child.digest for child in parsed.children]
        if children:
            found = {
                row.digest: row.size
                for row in await conn.execute(
                    select(manifests.c.digest, manifests.c.size).where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        manifests.c.digest.in_(children),
                    )
                )
            }
            missing = [d for d in children if d not in found]
            if missing:
                raise ManifestBlobUnknown(
                    f"index references manifest {missing[0]}, which is not in this repository; "
                    "push the platform manifests first",
                    {"missing": missing},
                )
            _check_sizes("manifest", parsed.children, found)
        if parsed.subject is not None:
            # A subject not stored (yet) is accepted, as OCI 1.1 requires; a stored one must
            # have the size the descriptor gives, or the referrer names some other content.
            stored = (
                await conn.execute(
                    select(manifests.c.size).where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        manifests.c.digest == parsed.subject.digest,
                    )
                )
            ).scalar()
            if stored is not None:
                _check_sizes("subject manifest", [parsed.subject], {parsed.subject.digest: stored})
        return held

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
            await self._refuse_protected(conn, repo, image, [tag], "moved to another image")
        await conn.execute(
            self.db.upsert(
                tags, ["repository_id", "image", "name"], {"digest": digest, "updated_at": utcnow()}
            ).values(
                repository_id=repo.id, image=image, name=tag, digest=digest, updated_at=utcnow()
            )
        )
        action = action or ("tag" if current is None else "move")
        await self._event(conn, repo, image, tag, action, current, digest, actor)
        return True

    async def _refuse_protected(
        self, conn: Any, repo: RepositoryRef, image: str, names: list[str], change: str
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

    async def delete_manifest(
        self, repo: RepositoryRef, image: str, reference: str, *, actor: str, client: str | None
    ) -> None:
        """By digest: the manifest and every tag on it (audited as `image.delete`). By tag:
        just the tag (`tag.delete`). A platform manifest that a stored index lists is refused:
        delete the index."""
        async with self.db.write() as conn:
            if is_digest(reference):
                parse_digest(reference)
                parents, total = await manifests_using(
                    conn, indexes_listing(repo.id, image, reference).order_by(manifests.c.id)
                )
                if parents:
                    raise await index_child_refusal(conn, repo, reference, parents, total)
                found = bool(
                    await self.delete_images_in(
                        conn,
                        repo,
                        [(image, reference)],
                        actor=actor,
                        client=client,
                        refuse_protected=True,
                    )
                )
            else:
                old = (
                    await conn.execute(
                        delete(tags)
                        .where(
                            tags.c.repository_id == repo.id,
                            tags.c.image == image,
                            tags.c.name == reference,
                        )
                        .returning(tags.c.digest)
                    )
                ).scalar()
                found = old is not None
                if found:
                    await self._refuse_protected(conn, repo, image, [reference], "deleted")
                    await self._event(conn, repo, image, reference, "untag", old, None, actor)
                    data = content_data(repo, image, actor, tag=reference, digest=old)
                    subject = content_subject(repo, image, reference)
                    await enqueue_event(conn, repo.project_id, TAG_DELETED, data, subject)
                    await audit_content_change(
                        conn, "tag.delete", repo, image, reference, actor=actor, client=client
                    )
            if not found:
                raise ManifestUnknown(
                    f"manifest {reference!r} is not in this repository", {"reference": reference}
                )

    async def delete_image(
        self, repo: RepositoryRef, image: str, digest: str, *, actor: str, client: str | None
    ) -> DeletedImage:
        """The management API's image delete: the manifest and every tag on it, with what goes
        with it as one image (`_what_goes_with`, the rule retention follows): for an index, the
        platform manifests it lists that nothing else holds, and the referrers (signatures,
        SBOMs) of all of these, recursively. A protected tag on any of them refuses the whole
        delete. History records each manifest deleted; the webhook event and the audit entry
        are the image's, naming what went with it (returned).

        /v2's DELETE (`delete_manifest`) deletes only the manifest, as OCI clients expect.
        The 404 says where in the repository the manifest is, in the API's terms
        (`?image=`)."""
        try:
            async with self.db.write() as conn:
                await _refuse_deleting_an_index_child(conn, repo, image, digest)
                goes = await self._what_goes_with(conn, repo, image, digest)
                deleted = await self.delete_images_in(
                    conn,
                    repo,
                    [(image, member) for member in (digest, *goes.platforms, *goes.referrers)],
                    actor=actor,
                    client=client,
                    went_with={(image, member): digest for member in goes.platforms},
                    referrers_with={(image, member): digest for member in goes.referrers},
                    refuse_protected=True,
                )
                for gone in deleted:
                    if gone.digest == digest:
                        return gone
                # Not stored (what named it as a subject goes back with the rollback).
                raise ManifestUnknown(
                    f"manifest {digest!r} is not in this repository", {"digest": digest}
                )
        except ManifestUnknown:
            async with self.db.read() as conn:
                raise await missing_manifest(conn, repo, image, digest, deleting=True) from None

    async def image_deletion(self, repo: RepositoryRef, image: str, digest: str) -> ImageDeletion:
        """What `delete_image` of `digest` would take with it and what it would leave (the
        same rule, read now): for a confirmation to say. Refused as that delete is (404, 409
        for a platform manifest an index lists), except for protected tags, which the delete
        finds as it deletes."""
        async with self.db.read() as conn:
            await _refuse_deleting_an_index_child(conn, repo, image, digest)
            stored = await conn.execute(
                select(manifests.c.id).where(
                    manifests.c.repository_id == repo.id,
                    manifests.c.image == image,
                    manifests.c.digest == digest,
                )
            )
            if stored.first() is None:
                raise await missing_manifest(conn, repo, image, digest, deleting=True)
            goes = await self._what_goes_with(conn, repo, image, digest)
        return ImageDeletion(
            image=image,
            digest=digest,
            platform_manifest_count=len(goes.platforms),
            referrer_count=len(goes.referrers),
            kept=goes.kept[:MAX_LISTED_KEPT],
            kept_count=len(goes.kept),
        )

    async def _what_goes_with(
        self, conn: Any, repo: RepositoryRef, image: str, digest: str
    ) -> _WhatGoes:
        """The platform manifests and the referrers (digests) that go with the image `digest`
        by `IndexListings`' rule: the platform manifests of an index going (down nested
        indexes) and the referrers of any manifest going, however deep (chains deeper than
        MAX_INDEX_DEPTH stored before pushes were refused): one left would be a stray image.
        Everything that could go is read first, a few statements a level, then decided once
        every index going has let go of what it lists; content cannot list or refer to
        itself, so both end. And what of that stays (listed by an index going, or referring
        to a manifest going), with why."""
        children: dict[str, list[str]] = {}  # what each index reached lists
        subjects: dict[str, str] = {}  # the subject of each referrer reached
        reached: set[str] = {digest}
        level = [digest]
        while level:
            listed = await self._listed_manifests(conn, repo, image, level)
            referring = await self._referrers_of(conn, repo, image, level)
            children.update(listed)
            subjects.update(referring)
            below = {child for listing in listed.values() for child in listing}
            level = sorted((below | set(referring)) - reached)
            reached.update(level)
        reached.discard(digest)
        keys = {member: (repo.id, image, member) for member in reached}
        listings = await IndexListings.read(conn, keys.values())
        tagged = await self._tags_of(conn, repo, image, sorted(reached))
        listed_by_some = {child for listing in children.values() for child in listing}
        going = {digest}
        listings.let_go((repo.id, image, digest), children.get(digest, ()))
        platforms: list[str] = []
        referrers: list[str] = []

        def goes(member: str) -> bool:
            key = keys[member]
            if member in listed_by_some and listings.goes_with_its_index(
                key, tagged.get(member, set())
            ):
                platforms.append(member)
            elif subjects.get(member) in going and listings.referrer_goes(key):
                referrers.append(member)
            else:
                return False
            going.add(member)
            listings.let_go(key, children.get(member, ()))
            return True

        settle(sorted(reached), goes)
        listed_by_going = {child for index in going for child in children.get(index, ())}
        kept = [
            KeptManifest(
                digest=member,
                kind="platform_manifest" if member in listed_by_going else "referrer",
                listed_by=listings.listed_by(keys[member]),
                tags=sorted(tagged.get(member, ())) if member in listed_by_going else [],
            )
            for member in sorted(reached - going)
            if member in listed_by_going or subjects.get(member) in going
        ]
        return _WhatGoes(platforms, referrers, kept)

    async def _referrers_of(
        self, conn: Any, repo: RepositoryRef, image: str, subjects: list[str]
    ) -> dict[str, str]:
        """The stored manifests of the image whose subject is one of `subjects` (digests):
        each one's subject, by its digest."""
        rows = await _rows_of_image(
            conn, repo, image, manifests.c.subject_digest, subjects, manifests.c.digest
        )
        return {row.digest: row.subject_digest for row in rows}

    async def _listed_manifests(
        self, conn: Any, repo: RepositoryRef, image: str, indexes: list[str]
    ) -> dict[str, list[str]]:
        """The manifests each of `indexes` (digests) lists, by index digest."""
        listed: dict[str, list[str]] = {}
        for row in await rows_in_chunks(
            conn,
            indexes,
            lambda chunk: (
                select(manifests.c.digest, manifest_references.c.digest.label("child"))
                .join(manifest_references, manifest_references.c.manifest_id == manifests.c.id)
                .where(
                    manifests.c.repository_id == repo.id,
                    manifests.c.image == image,
                    manifests.c.digest.in_(chunk),
                    manifest_references.c.is_manifest,
                )
            ),
        ):
            listed.setdefault(row.digest, []).append(row.child)
        return listed

    async def _tags_of(
        self, conn: Any, repo: RepositoryRef, image: str, digests: list[str]
    ) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for row in await _rows_of_image(conn, repo, image, tags.c.digest, digests, tags.c.name):
            found.setdefault(row.digest, set()).add(row.name)
        return found

    async def _queue_image_deleted_events(
        self, conn: Any, repo: RepositoryRef, images: list[DeletedImage], *, actor: str
    ) -> None:
        """Queue one `io.berth.image.deleted` per image deleted, as every count and list names
        images: an image's event lists the platform manifests and the referrers deleted with
        it (each referrer with its tags), which get none of their own."""
        await enqueue_events(
            conn,
            repo.project_id,
            IMAGE_DELETED,
            [
                (
                    content_data(
                        repo,
                        deleted.image,
                        actor,
                        digest=deleted.digest,
                        tags=deleted.tags,
                        platform_manifests=deleted.platform_manifests,
                        referrers=[
                            DeletedReferrerData(digest=r.digest, tags=r.tags)
                            for r in deleted.referrers
                        ],
                    ),
                    content_subject(repo, deleted.image, deleted.digest),
                )
                for deleted in images
            ],
        )

    async def delete_images_in(
        self,
        conn: Any,
        repo: RepositoryRef,
        manifests_to_delete: list[tuple[str, str]],
        *,
        actor: str,
        client: str | None,
        went_with: Mapping[tuple[str, str], str] | None = None,
        referrers_with: Mapping[tuple[str, str], str] | None = None,
        refuse_protected: bool = False,
    ) -> list[DeletedImage]:
        """In the caller's write transaction, delete manifests, (image, digest) of one
        repository, and every tag on them: a statement per table whatever their number (per
        IN-list chunk), for /v2's DELETE, the API's image delete and retention's runs alike.
        `went_with` names, for each platform manifest deleted with its index, that index's
        digest, and `referrers_with`, for each referrer deleted with its subject, the digest
        of that subject's image: the image gets the one webhook event and the one
        `image.delete` audit entry (with how many went with it); history stays per manifest.
        With `refuse_protected`, a protected tag among those deleted refuses it all (the
        caller's transaction rolls back); retention has checked them itself. Returns the
        images deleted (of what was stored). The caller has checked that no index that stays
        lists any of them."""
        removed_tags: dict[tuple[str, str], list[str]] = defaultdict(list)
        found: set[tuple[str, str]] = set()
        for chunk in chunks(sorted(set(manifests_to_delete))):
            by_image: dict[str, list[str]] = defaultdict(list)
            for image, digest in chunk:
                by_image[image].append(digest)

            def pairs(table: Any, groups: dict[str, list[str]] = by_image) -> Any:
                # Grouped by image: each group is a range of the (repository, image, digest)
                # index (a row-value IN would scan the table on SQLite).
                return or_(
                    *(
                        and_(table.c.image == image, table.c.digest.in_(digests))
                        for image, digests in groups.items()
                    )
                )

            for image, digest, name in await conn.execute(
                delete(tags)
                .where(tags.c.repository_id == repo.id, pairs(tags))
                .returning(tags.c.image, tags.c.digest, tags.c.name)
            ):
                removed_tags[(image, digest)].append(name)
            found.update(
                (image, digest)
                for image, digest in await conn.execute(
                    delete(manifests)
                    .where(manifests.c.repository_id == repo.id, pairs(manifests))
                    .returning(manifests.c.image, manifests.c.digest)
                )
            )
        if refuse_protected:
            # Refused after the delete, so no extra query: the refusal rolls it back.
            tags_by_image: dict[str, set[str]] = defaultdict(set)
            for (image, _digest), removed in removed_tags.items():
                tags_by_image[image].update(removed)
            for image, every in sorted(tags_by_image.items()):
                await self._refuse_protected(conn, repo, image, sorted(every), "deleted")
        if not found:
            return []
        now = utcnow()
        went_with = went_with or {}
        referrers_with = referrers_with or {}
        history: list[tuple[str, str | None, str, str]] = []
        deleted: list[DeletedManifest] = []
        for image, digest in sorted(found):
            names = sorted(removed_tags.get((image, digest), []))
            for name in names:
                history.append((image, name, "untag", digest))
            history.append((image, None, "delete", digest))
            key = (image, digest)
            if key in referrers_with:
                deleted.append(DeletedManifest(image, digest, names, referrers_with[key], True))
            else:
                deleted.append(DeletedManifest(image, digest, names, went_with.get(key)))
        images = deleted_images(deleted)
        audits: list[dict[str, Any]] = []
        for gone in images:
            name_of = f"{repo.name}/{gone.image}" if gone.image else repo.name
            audits.append(
                {
                    "actor": actor,
                    "action": "image.delete",
                    "project_id": repo.project_id,
                    "target": f"{name_of}@{gone.digest}"[:255],
                    "detail": gone.audit_detail(),
                }
            )
        await conn.execute(
            image_events.insert(),
            [
                {
                    "repository_id": repo.id,
                    "image": image,
                    "tag": tag,
                    "action": action,
                    "old_digest": digest,
                    "new_digest": None,
                    "actor": actor,
                    "at": now,
                }
                for image, tag, action, digest in history
            ],
        )
        await self._queue_image_deleted_events(conn, repo, images, actor=actor)
        await write_audit_entries(conn, audits, client=client)
        return images

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


async def _rows_of_image(
    conn: Any, repo: RepositoryRef, image: str, column: Any, values: list[str], *more: Any
) -> list[Any]:
    """`column` and `more` of the rows of its table (`manifests`, `tags`) in the image whose
    `column` is one of `values`."""
    table = column.table
    return await rows_in_chunks(
        conn,
        values,
        lambda chunk: select(column, *more).where(
            table.c.repository_id == repo.id, table.c.image == image, column.in_(chunk)
        ),
    )


def _check_sizes(kind: str, descriptors: list[Descriptor], stored: dict[str, int]) -> None:
    """Refuse a descriptor whose size is not its content's: clients would fail to pull it,
    and readers that trust the size (a config's platform) would read more than declared."""
    for descriptor in descriptors:
        size = stored.get(descriptor.digest)
        if size is not None and descriptor.size != size:
            raise ManifestInvalid(
                f"descriptor of {kind} {descriptor.digest} gives size {descriptor.size}, "
                f"but the stored {kind} is {size} bytes",
                {"digest": descriptor.digest, "size": descriptor.size, "stored_size": size},
            )


async def _refuse_deep_nesting(
    conn: Any, repo: RepositoryRef, image: str, parsed: ParsedManifest
) -> None:
    """MANIFEST_INVALID for an index that would head a chain of more than MAX_INDEX_DEPTH
    indexes (it lists an index that lists an index ...): scans and image listings follow no
    deeper, and no client builds such chains. What its children are stored as decides, level
    by level, reading only the indexes below it."""
    level = sorted({child.digest for child in parsed.children})
    for depth in range(2, MAX_INDEX_DEPTH + 2):
        nested: list[int] = []
        for start in range(0, len(level), 500):
            nested += [
                row.id
                for row in await conn.execute(
                    select(manifests.c.id).where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        manifests.c.digest.in_(level[start : start + 500]),
                        manifests.c.media_type.in_(INDEX_TYPES),
                    )
                )
            ]
        if not nested:
            return
        if depth > MAX_INDEX_DEPTH:
            raise ManifestInvalid(
                f"index nests indexes more than {MAX_INDEX_DEPTH} deep (it lists an index "
                f"that lists an index ...); Berth accepts chains of at most {MAX_INDEX_DEPTH} "
                "indexes, this one included",
                {"max_index_depth": MAX_INDEX_DEPTH},
            )
        level = sorted(
            {
                row.digest
                for row in await conn.execute(
                    select(manifest_references.c.digest)
                    .where(
                        manifest_references.c.manifest_id.in_(nested),
                        manifest_references.c.is_manifest,
                    )
                    .distinct()
                )
            }
        )
