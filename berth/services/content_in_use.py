"""The refusal to delete content that stored manifests still use (a blob a manifest lists, a
platform manifest an index lists), naming the users so the caller knows what to delete first;
and where in a repository a manifest asked for under the wrong image is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select

from berth.domain.errors import ManifestUnknown, StateRefusal
from berth.domain.names import joined_name
from berth.domain.references import RepositoryRef
from berth.metadata.queries import indexes_listing
from berth.metadata.tables import manifests, tags

# A refusal to delete content in use names this many of the manifests that use it.
REFERENCED_BY_SHOWN = 10


async def manifests_using(conn: Any, query: Select[Any]) -> tuple[Sequence[Any], int]:
    """The first few rows of `query` (manifests that use some content), and how many in all."""
    users = (await conn.execute(query.limit(REFERENCED_BY_SHOWN))).all()
    total = len(users)
    if total == REFERENCED_BY_SHOWN:
        counted = select(func.count()).select_from(query.order_by(None).subquery())
        total = int((await conn.execute(counted)).scalar_one())
    return users, total


async def _named_users(conn: Any, repo: RepositoryRef, users: Sequence[Any], total: int) -> str:
    """The first of `users` (image, digest rows, the first few of `total`) by its OCI name,
    digest and first tags, and how many more there are."""
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
    oci_name = joined_name(repo.project, repo.name, first.image)
    tagged = f" (tagged {', '.join(names)})" if names else ""
    others = f" and {total - 1:,} more" if total > 1 else ""
    return f"{oci_name}@{first.digest}{tagged}{others}"


async def in_use_refusal(
    conn: Any, repo: RepositoryRef, what: str, users: Sequence[Any], total: int
) -> StateRefusal:
    """The refusal to delete content that stored manifests (`users`: image, digest rows, the
    first few of `total`) still reference, naming them and the first one's tags, so the
    caller knows what to delete first."""
    named = await _named_users(conn, repo, users, total)
    return StateRefusal(
        f"{what} is referenced by manifest {named}; delete the images that use it first",
        {"referencedBy": [row.digest for row in users]},
    )


def _index_takes_it(total: int) -> str:
    """What deleting the indexes that list a platform manifest (`total` of them) through the
    management API does to it (`Registry.delete_image`)."""
    if total > 1:
        return "deleting the last of them deletes it too, unless it has a tag of its own"
    return "which deletes it too, unless it has a tag of its own"


async def index_child_refusal(
    conn: Any,
    repo: RepositoryRef,
    digest: str,
    parents: Sequence[Any],
    total: int,
    *,
    index_takes_it: bool = False,
) -> StateRefusal:
    """The refusal to delete a platform manifest that stored indexes (`parents`, the first
    few of `total`) list: the index goes first. `index_takes_it` for the management API,
    whose index delete deletes it too (unless another index lists it, or it has a tag); /v2's
    deletes only the index."""
    named = await _named_users(conn, repo, parents, total)
    these = "those indexes" if total > 1 else "the index"
    if index_takes_it:
        then = f"delete {these}{':' if total > 1 else ','} {_index_takes_it(total)}"
    else:
        then = f"delete {these} first"
    return StateRefusal(
        f"manifest {digest} is a platform manifest of index {named}: it cannot be deleted "
        f"while an index lists it; {then}",
        {"referencedBy": [row.digest for row in parents]},
    )


# A manifest missing under the image asked for names the images it is under, up to this many.
_IMAGES_NAMED = 5


async def missing_manifest(
    conn: Any, repo: RepositoryRef, image: str, digest: str, *, deleting: bool = False
) -> ManifestUnknown:
    """The management API's 404 for a manifest not stored under `image` of `repo`: not in
    the repository at all, or under other images (a manifest belongs to one image name, and
    `?image=` says which). Deleting one that an index lists there: the management API's
    delete of that index deletes it too (unless another index lists it, or it has a tag)."""
    where = f"image {image!r} of " if image else ""
    missing = f"manifest {digest} is not in {where}repository {repo.project}/{repo.name}"
    holders = [
        str(holder)
        for holder in (
            await conn.execute(
                select(manifests.c.image)
                .where(manifests.c.repository_id == repo.id, manifests.c.digest == digest)
                .order_by(manifests.c.image)
                .limit(_IMAGES_NAMED + 1)
            )
        ).scalars()
    ]
    if not holders:
        return ManifestUnknown(missing, {"digest": digest})
    if not image:
        missing += " itself"
    names = ", ".join(
        repr(holder) if holder else "'' (the repository itself)"
        for holder in holders[:_IMAGES_NAMED]
    )
    more = " and others" if len(holders) > _IMAGES_NAMED else ""
    plural = "s" if len(holders) > 1 else ""
    held = f"{missing}: it is under image{plural} {names}{more}"
    ask = f"pass ?image={holders[0]}" if holders[0] else "leave ?image= out"
    parents: Sequence[Any] = []
    if deleting:
        query = indexes_listing(repo.id, holders[0], digest).order_by(manifests.c.id)
        parents, total = await manifests_using(conn, query)
    if not parents:
        return ManifestUnknown(f"{held} ({ask})", {"digest": digest})
    named = await _named_users(conn, repo, parents, total)
    these = "those indexes" if total > 1 else "that index"
    return ManifestUnknown(
        f"{held}, a platform manifest of index {named}: delete {these} ({ask})"
        f"{':' if total > 1 else ','} {_index_takes_it(total)}",
        {"digest": digest},
    )
