"""Listings of the /v2 API: a repository's tags, a manifest's referrers and the catalog."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, false, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from berth.access.policy import CatalogReach
from berth.domain.digests import parse_digest
from berth.domain.errors import NameUnknown
from berth.domain.manifests import OCI_INDEX
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import (
    manifests,
    memberships,
    projects,
    repositories,
    repository_grants,
    tags,
)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    next_last: str | None  # set when there is a next page


# Bounds of one page of the referrers API (OCI distribution 1.1 lets a registry page it with
# a Link header): a referrer may carry up to 4 MiB of annotations, so a subject with many
# would otherwise answer with hundreds of MB, built in memory, to anyone who may pull.
REFERRERS_PER_PAGE = 1000
REFERRERS_PAGE_ANNOTATION_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class ReferrersPage:
    index: dict[str, Any]  # the OCI image index answered
    next_after: int | None  # set when there is a next page: where it starts


class ContentListings:
    """Listings: a part of `Registry`."""

    db: Database

    def _code_point_order(self, text: ColumnElement[str]) -> ColumnElement[str]:
        """`text` compared and ordered by code point. PostgreSQL's default collation follows
        the locale (en_US puts `a-b` after `a.b`, `ab` after `a_b` and `B` after `a`); "C"
        compares bytes, which in UTF-8 is code-point order, Python's and SQLite's (BINARY)."""
        return text if self.db.is_sqlite else text.collate("C")

    async def list_tags(
        self, repo: RepositoryRef, image: str, limit: int | None, last: str | None
    ) -> Page:
        # Lexical (code-point) order, as OCI asks, whatever PostgreSQL's collation: see
        # `_code_point_order`.
        name = self._code_point_order(tags.c.name)
        query = (
            select(tags.c.name)
            .where(tags.c.repository_id == repo.id, tags.c.image == image)
            .order_by(name)
        )
        if last:
            # Tags hold no NUL (PostgreSQL text cannot): what sorts after `last` sorts after
            # the part before its first NUL.
            query = query.where(name > last.split("\x00", 1)[0])
        if limit is not None:
            query = query.limit(limit + 1)
        async with self.db.read() as conn:
            names = list((await conn.execute(query)).scalars())
            if not names and image and not await self._holds_content(conn, repo, image):
                raise NameUnknown(
                    f"{repo.project}/{repo.name}/{image} names no image: nothing was pushed "
                    f"to it in repository {repo.project}/{repo.name}; check the image name",
                    {"project": repo.project, "repository": repo.name, "image": image},
                )
        if limit is not None and len(names) > limit:
            names = names[:limit]
            return Page(names, names[-1] if names else None)
        return Page(names, None)

    async def _holds_content(self, conn: Any, repo: RepositoryRef, image: str) -> bool:
        """Whether an image name of a repository has a manifest or a tag: a name with neither
        is unknown, as a repository nobody created is. (The repository's own name, `image`
        '', is known while the repository exists, empty or not.)"""
        for table in (manifests, tags):
            found = await conn.execute(
                select(table.c.repository_id)
                .where(table.c.repository_id == repo.id, table.c.image == image)
                .limit(1)
            )
            if found.first() is not None:
                return True
        return False

    async def referrers(
        self,
        repo: RepositoryRef,
        image: str,
        digest: str,
        artifact_type: str | None,
        limit: int | None = None,
        after: int | None = None,
    ) -> ReferrersPage:
        """One page of a manifest's referrers, in push order, after the referrer `after` (a
        previous page's `next_after`). A page holds at most `limit` (and REFERRERS_PER_PAGE)
        descriptors, and annotations of at most REFERRERS_PAGE_ANNOTATION_BYTES (though always
        one referrer): one response stays bounded whatever the referrers carry."""
        parse_digest(digest)
        conditions = [
            manifests.c.repository_id == repo.id,
            manifests.c.image == image,
            manifests.c.subject_digest == digest,
        ]
        if artifact_type:
            # No stored artifact type holds a NUL (PostgreSQL text cannot): match nothing.
            conditions.append(
                false() if "\x00" in artifact_type else manifests.c.artifact_type == artifact_type
            )
        if after is not None:
            conditions.append(manifests.c.id > after)
        count = REFERRERS_PER_PAGE if limit is None else min(limit, REFERRERS_PER_PAGE)
        # Annotations' lengths first, not the annotations: a page's rows could otherwise hold
        # hundreds of MB. Stored as ASCII JSON, so characters are bytes.
        query = (
            select(
                manifests.c.id,
                manifests.c.digest,
                manifests.c.media_type,
                manifests.c.size,
                manifests.c.artifact_type,
                func.coalesce(func.length(manifests.c.annotations), 0).label("annotated"),
            )
            .where(*conditions)
            .order_by(manifests.c.id)
            .limit(count + 1)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
            chosen: list[Any] = []
            budget = REFERRERS_PAGE_ANNOTATION_BYTES
            for row in rows[:count]:
                if chosen and row.annotated > budget:
                    break
                budget -= row.annotated
                chosen.append(row)
            annotated = [row.id for row in chosen if row.annotated]
            annotations: dict[int, str] = {}
            if annotated:
                found = await conn.execute(
                    select(manifests.c.id, manifests.c.annotations).where(
                        manifests.c.id.in_(annotated)
                    )
                )
                annotations = {row.id: row.annotations for row in found}
        descriptors = []
        for row in chosen:
            descriptor: dict[str, Any] = {
                "mediaType": row.media_type,
                "digest": row.digest,
                "size": row.size,
            }
            if row.artifact_type:
                descriptor["artifactType"] = row.artifact_type
            if annotations.get(row.id):
                descriptor["annotations"] = json.loads(annotations[row.id])
            descriptors.append(descriptor)
        more = len(chosen) < len(rows)
        return ReferrersPage(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
            chosen[-1].id if more and chosen else None,
        )

    async def catalog(
        self, project: str | None, reach: CatalogReach, limit: int, last: str | None
    ) -> Page:
        """Up to `limit` OCI names that hold content in the repositories `reach` covers (in
        project `project`, on its host), in code-point order of the name the client sees
        (prefixed with the project in path style), after `last`.

        One statement. The caller's repositories are chosen first, from their memberships and
        repository roles (indexed by user), and only their manifests are read (indexed by
        repository): a caller pays for what they may see, not for the install. The sort is of
        those names, since a name's place depends on its project's and repository's names."""
        listed = select(repositories.c.id)
        if project is not None:
            listed = listed.where(
                repositories.c.project_id
                == select(projects.c.id).where(projects.c.name == project).scalar_subquery()
            )
        if reach.key_project_id is not None:
            listed = listed.where(repositories.c.project_id == reach.key_project_id)
        if not reach.every_project:
            member_of = select(memberships.c.project_id).where(
                memberships.c.user_id == reach.user_id
            )
            granted = select(repository_grants.c.repository_id).where(
                repository_grants.c.user_id == reach.user_id
            )
            listed = listed.where(
                or_(repositories.c.project_id.in_(member_of), repositories.c.id.in_(granted))
            )
        # The (repository, image) names that hold content: a manifest.
        images = (
            select(manifests.c.repository_id, manifests.c.image)
            .where(manifests.c.repository_id.in_(listed))
            .distinct()
            .subquery("images")
        )
        # Path style: project/repository[/image]; on a project's host: repository[/image].
        name = (
            repositories.c.name
            if project is not None
            else projects.c.name + "/" + repositories.c.name
        )
        name = name + case((images.c.image == "", ""), else_="/" + images.c.image)
        name = self._code_point_order(name).label("name")
        query = (
            select(name)
            .select_from(images)
            .join(repositories, repositories.c.id == images.c.repository_id)
            .join(projects, projects.c.id == repositories.c.project_id)
            .order_by(name)
            .limit(limit + 1)  # one more: is there a next page?
        )
        if last:
            # OCI names hold no NUL (PostgreSQL text cannot): what sorts after `last` sorts
            # after the part before its first NUL.
            query = query.where(name > last.split("\x00", 1)[0])
        async with self.db.read() as conn:
            names = list((await conn.execute(query)).scalars())
        if len(names) > limit:
            names = names[:limit]
            return Page(names, names[-1] if names else None)
        return Page(names, None)
