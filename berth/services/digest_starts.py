"""A manifest named by the start of its digest, as listings show it (12 hex digits)."""

from __future__ import annotations

import contextlib

from sqlalchemy import or_, select

from berth.domain.digests import DIGEST_RULE, SHORTEST_DIGEST_START, digest_starts, parse_digest
from berth.domain.errors import DigestInvalid, InvalidValue, ManifestUnknown
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import manifests

_DIGESTS_NAMED = 5


def starts_named(given: str) -> list[str]:
    """`digest_starts` of `given`, refused (as a bad value) when it names none."""
    starts = digest_starts(given)
    if not starts:
        raise InvalidValue(
            f"{given!r} is no digest: expected {DIGEST_RULE}, or its first "
            f"{SHORTEST_DIGEST_START} or more hex digits",
            "digest",
        )
    return starts


async def resolve_digest(db: Database, repo: RepositoryRef, image: str, given: str) -> str:
    """The digest of the manifest of `image` in `repo` that `given` names: a whole digest as
    it is (whoever uses it says whether it is stored), or the start of exactly one stored
    manifest's digest. A start that several digests have is refused naming some of them."""
    with contextlib.suppress(DigestInvalid):
        return str(parse_digest(given))
    starts = starts_named(given)
    async with db.read() as conn:
        found = list(
            (
                await conn.execute(
                    select(manifests.c.digest)
                    .where(
                        manifests.c.repository_id == repo.id,
                        manifests.c.image == image,
                        or_(*(manifests.c.digest.startswith(start) for start in starts)),
                    )
                    .order_by(manifests.c.digest)
                    .limit(_DIGESTS_NAMED + 1)
                )
            ).scalars()
        )
    where = f"image {image!r} of " if image else ""
    if not found:
        raise ManifestUnknown(
            f"no manifest of {where}repository {repo.project}/{repo.name} has a digest "
            f"starting {given}",
            {"digest": given},
        )
    if len(found) > 1:
        more = " and more" if len(found) > _DIGESTS_NAMED else ""
        raise InvalidValue(
            f"{given} starts the digests of several manifests of {where}repository "
            f"{repo.project}/{repo.name} ({', '.join(found[:_DIGESTS_NAMED])}{more}): give "
            "more of the digest",
            "digest",
        )
    return str(found[0])
