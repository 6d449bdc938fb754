"""The refusal to delete content that stored manifests still use (a blob a manifest lists, a
platform manifest an index lists), naming the users so the caller knows what to delete first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select

from berth.domain.errors import StateRefusal
from berth.domain.names import joined_name
from berth.domain.references import RepositoryRef
from berth.metadata.tables import tags

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


async def in_use_refusal(
    conn: Any,
    repo: RepositoryRef,
    what: str,
    users: Sequence[Any],
    total: int,
    *,
    index: bool = False,
) -> StateRefusal:
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
    oci_name = joined_name(repo.project, repo.name, first.image)
    tagged = f" (tagged {', '.join(names)})" if names else ""
    others = f" and {total - 1:,} more" if total > 1 else ""
    kind = "index" if index else "manifest"
    todo = "delete the index instead" if index else "delete the images that use it first"
    return StateRefusal(
        f"{what} is referenced by {kind} {oci_name}@{first.digest}{tagged}{others}; {todo}",
        {"referencedBy": [row.digest for row in users]},
    )
