"""Blobs, manifests, tags, referrers and the catalog: the registry's content flows."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, false, func, select, update
from sqlalchemy.exc import IntegrityError

from berth.domain.digests import digest_bytes, is_digest, parse_digest
from berth.domain.errors import (
    BlobUnknown,
    Conflict,
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
)
from berth.domain.manifests import (
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    ParsedManifest,
    manifest_too_large,
    parse_manifest,
    stored_blobs,
)
from berth.domain.names import is_valid_tag
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.queries import indexes_listing, is_image
from berth.metadata.tables import (
    blobs,
    image_events,
    manifest_references,
    manifests,
    projects,
    repositories,
    repository_blobs,
    tags,
    utcnow,
)
from berth.services.gc.restrictions import ensure_writable
from berth.storage.base import BlobStore

logger = logging.getLogger("berth.registry")

# Blobs up to this size are hashed before each download (configs, small layers); larger ones
# are checked by size here and fully by the storage check (`berth storage check`, the scrub).
VERIFY_ON_READ_BYTES = 1024 * 1024
# Verified on the event loop itself up to this size (about 20 µs), in a thread above it.
INLINE_VERIFY_BYTES = 64 * 1024
VERIFIED_FILES_KEPT = 100_000  # about 15 MB of (digest, inode, mtime)


def _read_if_whole(path: Path, digest: str) -> bytes | None:
    """The file's bytes if they hash to `digest`, else None (FileNotFoundError if it is gone:
    removed, not damaged)."""
    content = path.read_bytes()
    return content if digest_bytes(content, parse_digest(digest).algorithm) == digest else None


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    next_last: str | None  # set when there is a next page


# The pull path's statements, built once (bindparams); Database.first runs them fastest.
_BLOB_SIZE = (
    select(blobs.c.size)
    .join(repository_blobs, repository_blobs.c.digest == blobs.c.digest)
    .where(
        repository_blobs.c.repository_id == bindparam("repository_id"),
        blobs.c.digest == bindparam("digest"),
    )
)
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


# A refusal to delete content in use names this many of the manifests that use it.
REFERENCED_BY_SHOWN = 10


async def _users(conn: Any, query: Select[Any]) -> tuple[Sequence[Any], int]:
    """The first few rows of `query` (manifests that use some content), and how many in all."""
    users = (await conn.execute(query.limit(REFERENCED_BY_SHOWN))).all()
    total = len(users)
    if total == REFERENCED_BY_SHOWN:
        counted = select(func.count()).select_from(query.order_by(None).subquery())
        total = int((await conn.execute(counted)).scalar_one())
    return users, total


async def _in_use(
    conn: Any,
    repo: RepositoryRef,
    what: str,
    users: Sequence[Any],
    total: int,
    *,
    index: bool = False,
) -> Conflict:
    """The refusal to delete content that stored manifests (`users`: image, digest rows, the
    first few of `total`) still reference, naming them and the first one's tags, so the
    caller knows what to delete first."""
    first = users[0]
    names = (
        (
            await conn.execute(
                select(tags.c.name)
                .where(
                    tags.c.repository_id == repo.id,
                    tags.c.image == first.image,
                    tags.c.digest == first.digest,
                )
                .order_by(tags.c.name)
                .limit(3)
            )
        )
        .scalars()
        .all()
    )
    oci_name = "/".join(part for part in (repo.project, repo.name, first.image) if part)
    tagged = f" (tagged {', '.join(names)})" if names else ""
    others = f" and {total - 1:,} more" if total > 1 else ""
    kind = "index" if index else "manifest"
    todo = "delete the index instead" if index else "delete the images that use it first"
    return Conflict(
        f"{what} is referenced by {kind} {oci_name}@{first.digest}{tagged}{others}; {todo}",
        {"referencedBy": [row.digest for row in users]},
    )


async def count_images(conn: Any, repository_id: int) -> int:
    """Images in a repository: top-level manifests (an index's children are not counted)."""
    count = await conn.execute(
        select(func.count())
        .select_from(manifests)
        .where(manifests.c.repository_id == repository_id, is_image())
    )
    return int(count.scalar() or 0)


class Registry:
    def __init__(self, db: Database, store: BlobStore, max_images: int = 10_000) -> None:
        self.db = db
        self.store = store
        self.max_images = max_images
        # digest -> (inode, mtime) of the blob file last found whole (see verified_blob).
        self._verified: OrderedDict[str, tuple[int, int]] = OrderedDict()

    # ------------------------------------------------------------------ blobs

    async def blob_size(self, repo: RepositoryRef, digest: str) -> int:
        parse_digest(digest)
        row = await self.db.first(_BLOB_SIZE, repository_id=repo.id, digest=digest)
        if row is None:
            raise BlobUnknown(f"blob {digest} is not in this repository", {"digest": digest})
        return int(row[0])

    def blob_path(self, digest: str) -> Path | None:
        return self.store.local_path(digest)

    async def verified_blob(self, digest: str, size: int, path: Path) -> bytes | None:
        """Check a blob's file before serving it: there, of its recorded size and, when small,
        with bytes that hash to its digest. Freshly hashed bytes are returned, to be served
        from memory; None means "serve the file". A file that fails is set aside (missing:
        pushing it again repairs it) and BLOB_UNKNOWN raised, so damaged bytes are never
        served under the digest.

        A file hashed once is not hashed again while it stays the same file (inode and
        modification time): a rewrite or a replaced file is checked anew, bit rot in place is
        the scrub's to find (`berth storage check`)."""
        try:
            stored = os.stat(path)
        except FileNotFoundError:
            raise BlobUnknown(
                f"blob {digest} is missing from storage; push it again", {"digest": digest}
            ) from None
        if stored.st_size == size:
            if size > VERIFY_ON_READ_BYTES:
                return None
            identity = (stored.st_ino, stored.st_mtime_ns)
            if self._verified.get(digest) == identity:
                self._verified.move_to_end(digest)
                return None
            try:
                if size <= INLINE_VERIFY_BYTES:
                    # Once per file and process (then remembered): a page-cache read and a
                    # hash of a few kB cost less than a thread hop.
                    content = _read_if_whole(path, digest)
                else:
                    content = await asyncio.to_thread(_read_if_whole, path, digest)
            except FileNotFoundError:  # removed meanwhile (garbage collection): not damaged
                raise BlobUnknown(
                    f"blob {digest} is missing from storage; push it again", {"digest": digest}
                ) from None
            if content is not None:
                self._verified[digest] = identity
                if len(self._verified) > VERIFIED_FILES_KEPT:
                    self._verified.popitem(last=False)
                return content
        self._verified.pop(digest, None)
        await self.store.quarantine(digest)
        logger.error("blob %s is damaged in storage: set aside until pushed again", digest)
        raise BlobUnknown(
            f"blob {digest} is damaged in storage and was set aside; push it again",
            {"digest": digest},
        )

    async def delete_blob(self, repo: RepositoryRef, digest: str) -> None:
        """Unlink a blob from a repository; its bytes go at the next garbage collection.
        Refused while a manifest of the repository uses it: that image would no longer pull."""
        parse_digest(digest)
        async with self.db.write() as conn:
            users, total = await _users(
                conn,
                select(manifests.c.image, manifests.c.digest)
                .join(manifest_references, manifest_references.c.manifest_id == manifests.c.id)
                .where(
                    manifests.c.repository_id == repo.id,
                    manifest_references.c.digest == digest,
                    ~manifest_references.c.is_manifest,
                )
                .order_by(manifests.c.id),
            )
            if users:
                raise await _in_use(conn, repo, f"blob {digest}", users, total)
            result = await conn.execute(
                delete(repository_blobs).where(
                    repository_blobs.c.repository_id == repo.id, repository_blobs.c.digest == digest
                )
            )
        if result.rowcount == 0:
            raise BlobUnknown(f"blob {digest} is not in this repository", {"digest": digest})

    async def mount(self, repo: RepositoryRef, digest: str, source: RepositoryRef | None) -> bool:
        """Link a blob held by `source` (or, without one, anywhere in the project) to `repo`."""
        parse_digest(digest)
        holder = select(repository_blobs.c.repository_id).where(repository_blobs.c.digest == digest)
        if source is not None:
            holder = holder.where(repository_blobs.c.repository_id == source.id)
        else:
            holder = holder.join(
                repositories, repositories.c.id == repository_blobs.c.repository_id
            ).where(repositories.c.project_id == repo.project_id)
        if await self.store.stat(digest) is None:
            return False  # recorded, but its bytes are missing (set aside): upload them
        now = utcnow()
        try:
            async with self.db.write() as conn:
                if (await conn.execute(holder.limit(1))).first() is None:
                    return False  # a miss writes nothing: no restriction to check
                await ensure_writable(conn, repo.project_id, repo.project)
                # A fresh link time, as for an upload: the grace period covers this push.
                await conn.execute(
                    self.db.upsert(
                        repository_blobs, ["repository_id", "digest"], {"linked_at": now}
                    ).values(repository_id=repo.id, digest=digest, linked_at=now)
                )
        except IntegrityError:
            # Garbage collection of another project removed the blob's last link and row
            # between the check and the link (PostgreSQL): the client uploads it instead.
            return False
        return True

    # ------------------------------------------------------------------ manifests

    async def get_manifest(self, repo: RepositoryRef, image: str, reference: str) -> StoredManifest:
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
        return StoredManifest(row[0], row[1], content)

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
        async with self.db.write() as conn:
            await ensure_writable(conn, repo.project_id, repo.project)
            await self._check_references(conn, repo, image, parsed, project_wide)
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
            if known is None:
                await self._lock_repository(conn, repo)
                await self._insert_manifest(conn, repo, image, digest, body, parsed)
                await self._check_image_limit(conn, repo)
                await self._event(conn, repo, image, None, "push", None, digest, actor)
            if tag is not None:
                await self._move_tag(conn, repo, image, tag, digest, actor)
        return PushedManifest(digest, parsed.subject.digest if parsed.subject else None)

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
            raise Denied(
                f"repository {repo.project}/{repo.name} has reached its limit of {limit:,} images "
                "(max_images_per_repository); delete images or run garbage collection first",
                {"limit": limit},
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
    ) -> None:
        needed = stored_blobs(parsed)
        if needed:
            holders = select(repository_blobs.c.digest).where(repository_blobs.c.digest.in_(needed))
            if project_wide:
                holders = holders.join(
                    repositories, repositories.c.id == repository_blobs.c.repository_id
                ).where(repositories.c.project_id == repo.project_id)
            else:
                holders = holders.where(repository_blobs.c.repository_id == repo.id)
            found = set((await conn.execute(holders.distinct())).scalars())
            missing = [d for d in needed if d not in found]
            if missing:
                where = "this project" if project_wide else "this repository"
                raise ManifestBlobUnknown(
                    f"manifest references blob {missing[0]}, which is not in {where}; "
                    "push the blob first",
                    {"missing": missing},
                )
        children = [child.digest for child in parsed.children]
        if children:
            found = set(
                (
                    await conn.execute(
                        select(manifests.c.digest).where(
                            manifests.c.repository_id == repo.id,
                            manifests.c.image == image,
                            manifests.c.digest.in_(children),
                        )
                    )
                ).scalars()
            )
            missing = [d for d in children if d not in found]
            if missing:
                raise ManifestBlobUnknown(
                    f"index references manifest {missing[0]}, which is not in this repository; "
                    "push the platform manifests first",
                    {"missing": missing},
                )

    async def _insert_manifest(
        self,
        conn: Any,
        repo: RepositoryRef,
        image: str,
        digest: str,
        body: bytes,
        parsed: ParsedManifest,
    ) -> None:
        now = utcnow()
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
        references = {d: False for d in stored_blobs(parsed)}
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
                self.db.insert_ignore(repository_blobs),
                [{"repository_id": repo.id, "digest": d, "linked_at": now} for d in blob_links],
            )

    async def _move_tag(
        self,
        conn: Any,
        repo: RepositoryRef,
        image: str,
        tag: str,
        digest: str,
        actor: str,
        action: str | None = None,
    ) -> None:
        current = (
            await conn.execute(
                select(tags.c.digest).where(
                    tags.c.repository_id == repo.id, tags.c.image == image, tags.c.name == tag
                )
            )
        ).scalar()
        if current == digest:
            return
        if current is not None and not repo.tag_overwrite:
            raise Denied(
                f"tag {tag!r} already exists and tag overwrite is disabled for repository "
                f"{repo.project}/{repo.name}; push a new tag",
                {"tag": tag, "digest": current},
            )
        await conn.execute(
            self.db.upsert(
                tags, ["repository_id", "image", "name"], {"digest": digest, "updated_at": utcnow()}
            ).values(
                repository_id=repo.id, image=image, name=tag, digest=digest, updated_at=utcnow()
            )
        )
        action = action or ("tag" if current is None else "move")
        await self._event(conn, repo, image, tag, action, current, digest, actor)

    async def delete_manifest(
        self, repo: RepositoryRef, image: str, reference: str, *, actor: str = "anonymous"
    ) -> None:
        """By digest: the manifest and every tag on it. By tag: just the tag. A platform
        manifest that a stored index lists is refused: delete the index."""
        async with self.db.write() as conn:
            if is_digest(reference):
                parse_digest(reference)
                parents, total = await _users(
                    conn, indexes_listing(repo.id, image, reference).order_by(manifests.c.id)
                )
                if parents:
                    raise await _in_use(
                        conn, repo, f"manifest {reference}", parents, total, index=True
                    )
                tagged = (
                    (
                        await conn.execute(
                            delete(tags)
                            .where(
                                tags.c.repository_id == repo.id,
                                tags.c.image == image,
                                tags.c.digest == reference,
                            )
                            .returning(tags.c.name)
                        )
                    )
                    .scalars()
                    .all()
                )
                result = await conn.execute(
                    delete(manifests).where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        manifests.c.digest == reference,
                    )
                )
                if result.rowcount:
                    for name in tagged:
                        await self._event(conn, repo, image, name, "untag", reference, None, actor)
                    await self._event(conn, repo, image, None, "delete", reference, None, actor)
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
                result = None
                if old is not None:
                    await self._event(conn, repo, image, reference, "untag", old, None, actor)
            if (result.rowcount if result is not None else old is not None) == 0:
                raise ManifestUnknown(
                    f"manifest {reference!r} is not in this repository", {"reference": reference}
                )

    async def restore_tag(self, repo: RepositoryRef, image: str, tag: str, *, actor: str) -> str:
        """Put a removed tag back on the image it last named, while that image is stored."""
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
            return str(digest)

    # ------------------------------------------------------------------ listing

    async def list_tags(
        self, repo: RepositoryRef, image: str, limit: int | None, last: str | None
    ) -> Page:
        query = (
            select(tags.c.name)
            .where(tags.c.repository_id == repo.id, tags.c.image == image)
            .order_by(tags.c.name)
        )
        if last:
            # Tags hold no NUL (PostgreSQL text cannot): what sorts after `last` sorts after
            # the part before its first NUL.
            query = query.where(tags.c.name > last.split("\x00", 1)[0])
        if limit is not None:
            query = query.limit(limit + 1)
        async with self.db.read() as conn:
            names = list((await conn.execute(query)).scalars())
        if limit is not None and len(names) > limit:
            names = names[:limit]
            return Page(names, names[-1] if names else None)
        return Page(names, None)

    async def referrers(
        self, repo: RepositoryRef, image: str, digest: str, artifact_type: str | None
    ) -> dict[str, Any]:
        parse_digest(digest)
        query = select(
            manifests.c.digest,
            manifests.c.media_type,
            manifests.c.size,
            manifests.c.artifact_type,
            manifests.c.annotations,
        ).where(
            manifests.c.repository_id == repo.id,
            manifests.c.image == image,
            manifests.c.subject_digest == digest,
        )
        if artifact_type:
            # No stored artifact type holds a NUL (PostgreSQL text cannot): match nothing.
            matches = false() if "\x00" in artifact_type else None
            query = query.where(
                manifests.c.artifact_type == artifact_type if matches is None else matches
            )
        async with self.db.read() as conn:
            rows = (await conn.execute(query.order_by(manifests.c.pushed_at, manifests.c.id))).all()
        descriptors = []
        for row in rows:
            descriptor: dict[str, Any] = {
                "mediaType": row.media_type,
                "digest": row.digest,
                "size": row.size,
            }
            if row.artifact_type:
                descriptor["artifactType"] = row.artifact_type
            if row.annotations:
                descriptor["annotations"] = json.loads(row.annotations)
            descriptors.append(descriptor)
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}

    async def catalog(
        self,
        project: str | None,
        limit: int | None,
        last: str | None,
        visible: Callable[[int, RepositoryRef], Awaitable[bool]],
    ) -> Page:
        """OCI names that hold content and that `visible` admits; prefixed with the project in
        path style."""
        query = (
            select(
                projects.c.name.label("project"),
                repositories.c.project_id,
                repositories.c.id,
                repositories.c.name.label("repository"),
                repositories.c.public,
                repositories.c.tag_overwrite,
                manifests.c.image,
            )
            .select_from(manifests)
            .join(repositories, repositories.c.id == manifests.c.repository_id)
            .join(projects, projects.c.id == repositories.c.project_id)
            .distinct()
        )
        if project is not None:
            query = query.where(projects.c.name == project)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        admitted = []
        for row in rows:
            ref = RepositoryRef(
                row.id, row.project_id, row.project, row.repository, row.public, row.tag_overwrite
            )
            if await visible(row.project_id, ref):
                admitted.append(row)
        names = sorted(
            "/".join(
                part
                for part in (
                    None if project is not None else row.project,
                    row.repository,
                    row.image,
                )
                if part
            )
            for row in admitted
        )
        if last:
            names = [n for n in names if n > last]
        if limit is not None and len(names) > limit:
            names = names[:limit]
            return Page(names, names[-1] if names else None)
        return Page(names, None)
