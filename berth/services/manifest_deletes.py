"""Deleting manifests and tags: /v2's DELETE (a manifest or a tag), the management API's
image delete with what goes with the image (and what it would take, for a confirmation), and
the batch delete every one of them and retention's runs go through. Every change is written to
the image history in its transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, or_, select

from berth.domain.digests import is_digest, parse_digest
from berth.domain.errors import ManifestUnknown
from berth.domain.events import IMAGE_DELETED, TAG_DELETED
from berth.domain.references import RepositoryRef
from berth.metadata.audit import write_audit_entries
from berth.metadata.database import Database
from berth.metadata.queries import chunks, indexes_listing, rows_in_chunks
from berth.metadata.tables import image_events, manifest_references, manifests, tags, utcnow
from berth.services.content_audit import audit_content_change
from berth.services.content_in_use import index_child_refusal, manifests_using, missing_manifest
from berth.services.image_records import MAX_LISTED_KEPT, ImageDeletion, KeptManifest
from berth.services.manifests import (
    reference_named,
    refuse_protected_tags,
    write_image_event,
)
from berth.services.platform_manifests import (
    DeletedImage,
    DeletedManifest,
    IndexListings,
    deleted_images,
    settle,
)
from berth.services.webhook_events import (
    DeletedReferrerData,
    content_data,
    content_subject,
    enqueue_event,
    enqueue_events,
)


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


class ManifestDeletes:
    """Manifest and tag deletes: a part of `Registry`."""

    db: Database

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
                    await refuse_protected_tags(conn, repo, image, [reference], "deleted")
                    await write_image_event(conn, repo, image, reference, "untag", old, None, actor)
                    data = content_data(repo, image, actor, tag=reference, digest=old)
                    subject = content_subject(repo, image, reference)
                    await enqueue_event(conn, repo.project_id, TAG_DELETED, data, subject)
                    await audit_content_change(
                        conn, "tag.delete", repo, image, reference, actor=actor, client=client
                    )
            if not found:
                raise ManifestUnknown(
                    f"{reference_named(reference)} is not in this repository",
                    {"reference": reference},
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
                await refuse_protected_tags(conn, repo, image, sorted(every), "deleted")
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
