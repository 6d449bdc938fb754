"""Listings of the /v2 API: a repository's tags, a manifest's referrers and the catalog."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import false, select

from berth.domain.digests import parse_digest
from berth.domain.manifests import OCI_INDEX
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import manifests, projects, repositories, tags


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    next_last: str | None  # set when there is a next page


class ContentListings:
    """Listings: a part of `Registry`."""

    db: Database

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
        # Asked once per repository, not once per image of it: visibility is a repository's.
        shown: dict[int, bool] = {}
        for row in rows:
            if row.id not in shown:
                ref = RepositoryRef(
                    row.id,
                    row.project_id,
                    row.project,
                    row.repository,
                    row.public,
                    row.tag_overwrite,
                )
                shown[row.id] = await visible(row.project_id, ref)
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
            for row in rows
            if shown[row.id]
        )
        if last:
            names = [n for n in names if n > last]
        if limit is not None and len(names) > limit:
            names = names[:limit]
            return Page(names, names[-1] if names else None)
        return Page(names, None)
