"""What a pushed manifest must satisfy before it is stored: its blobs in the project (or the
repository), its platform manifests in the repository, every descriptor's size the stored
content's, and an index nested no deeper than MAX_INDEX_DEPTH."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from berth.domain.errors import ManifestBlobUnknown, ManifestInvalid
from berth.domain.manifests import (
    INDEX_TYPES,
    MAX_INDEX_DEPTH,
    Descriptor,
    ParsedManifest,
    foreign_layers,
    stored_blobs,
)
from berth.domain.references import RepositoryRef
from berth.metadata.tables import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
)


async def check_references(
    conn: Any, repo: RepositoryRef, image: str, parsed: ParsedManifest, project_wide: bool
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


async def refuse_deep_nesting(
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
