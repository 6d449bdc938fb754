"""Query fragments more than one service needs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Exists, Row, Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.metadata.tables import manifest_references, manifests, tags

IN_LIST_CHUNK = 5000  # values per IN (...) list, well under SQLite's and asyncpg's parameter limits

T = TypeVar("T")


def chunks(values: Sequence[T], size: int = IN_LIST_CHUNK) -> Iterable[Sequence[T]]:
    """`values` in slices of at most `size`, one IN (...) list each."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


async def rows_in_chunks(
    conn: AsyncConnection, values: Sequence[T], statement_for: Callable[[Sequence[T]], Select[Any]]
) -> list[Row[Any]]:
    """The rows `statement_for` selects for `values`, given them one IN-list chunk at a time."""
    rows: list[Row[Any]] = []
    for chunk in chunks(values):
        rows.extend(await conn.execute(statement_for(chunk)))
    return rows


def is_index_child() -> Exists:
    """For a row of `manifests`: some index of the same repository and image lists it.

    Part of what an image is: see `is_image()`.
    """
    parent = manifests.alias("parent")
    return (
        select(manifest_references.c.digest)
        .join(parent, parent.c.id == manifest_references.c.manifest_id)
        .where(
            manifest_references.c.is_manifest,
            manifest_references.c.digest == manifests.c.digest,
            # `+ 0` and `|| ''` keep SQLite from reading the parents through their
            # (repository, image) index, which it otherwise picks: every manifest of the
            # image per row, 36 s for a repository of 10,000 images instead of 20 ms. The
            # lookup then starts from the reference's digest and reaches the parent by its id.
            parent.c.repository_id + 0 == manifests.c.repository_id,
            parent.c.image + "" == manifests.c.image,
        )
        .exists()
    )


def is_stored_referrer() -> Exists:
    """For a row of `manifests`: its subject is stored in the same repository and image (a
    lookup in their unique index). A referrer pushed before its subject (OCI allows it) is
    not one yet: until the subject arrives it is an image of its own."""
    subject = manifests.alias("subject")
    return (
        select(subject.c.id)
        .where(
            subject.c.repository_id == manifests.c.repository_id,
            subject.c.image == manifests.c.image,
            subject.c.digest == manifests.c.subject_digest,
        )
        .exists()
    )


def is_tagged() -> Exists:
    """For a row of `manifests`: a tag of its repository and image names it."""
    return (
        select(tags.c.name)
        .where(
            tags.c.repository_id == manifests.c.repository_id,
            tags.c.image == manifests.c.image,
            tags.c.digest == manifests.c.digest,
        )
        .exists()
    )


def is_image() -> ColumnElement[bool]:
    """For a row of `manifests`: it is an image. The one definition every count and listing
    uses (the summary, the repository page, the image list, the image limit, GC's figures):
    a top-level manifest, that is neither a platform manifest of a stored index (it counts
    with its index) nor a referrer of a stored subject (a signature or SBOM: it is listed
    under its subject)."""
    return and_(or_(manifests.c.subject_digest.is_(None), ~is_stored_referrer()), ~is_index_child())


def indexes_listing(repository_id: int, image: str, digest: str) -> Select[tuple[str, str]]:
    """The stored indexes of one image name that list the manifest `digest` (image, digest):
    what keeps a platform manifest from being deleted on its own."""
    return (
        select(manifests.c.image, manifests.c.digest)
        .join(manifest_references, manifest_references.c.manifest_id == manifests.c.id)
        .where(
            manifests.c.repository_id == repository_id,
            manifests.c.image == image,
            manifest_references.c.digest == digest,
            manifest_references.c.is_manifest,
        )
    )
