"""Listings of projects and repositories: a project's repositories (all, a page sorted and
filtered, one) with their image count and last change, computed in one grouped pass per
table; projects by name, and with their repository count and maximum; as records."""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select

from berth.domain.errors import InvalidValue, NameUnknown
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.queries import is_image
from berth.metadata.tables import (
    UTCDateTime,
    image_events,
    manifests,
    project_settings,
    projects,
    repositories,
    tags,
)
from berth.services.repository_records import Repository

REPOSITORY_SORTS = ("name", "images", "updated_at")


@dataclass(frozen=True, slots=True)
class ProjectEntry:
    name: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ProjectDetails:
    id: int
    name: str
    created_at: dt.datetime
    repositories: int
    repository_quota: int  # its own, else the server default
    quota_is_default: bool


class RepositoryListings:
    """Listings: a part of `Repositories`."""

    db: Database
    default_quota: int

    async def list(self, project: str) -> list[Repository]:
        """Every repository of a project, by name."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            rows = await conn.execute(self._listing(project_id).order_by(repositories.c.name))
            return [_repository(project, r) for r in rows]

    async def page(
        self,
        project: str,
        *,
        page: int = 1,
        per_page: int = 20,
        sort: str = "name",
        descending: bool = False,
        query: str | None = None,
    ) -> tuple[builtins.list[Repository], int]:
        """One page of a project's repositories and how many there are in all: sorted by
        name, image count or last modification, optionally only names containing `query`."""
        if sort not in REPOSITORY_SORTS:
            raise InvalidValue(f"sort must be one of {', '.join(REPOSITORY_SORTS)}", "sort")
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            listing = self._listing(project_id).subquery()
            matching = select(listing)
            if query:
                matching = matching.where(listing.c.name.contains(query.lower(), autoescape=True))
            key = listing.c[sort]
            rows = await conn.execute(
                matching.order_by(
                    key.desc() if descending else key.asc(),
                    listing.c.name.desc() if descending else listing.c.name.asc(),
                )
                .limit(per_page)
                .offset((page - 1) * per_page)
            )
            items = [_repository(project, r) for r in rows]
            total = (
                await conn.execute(select(func.count()).select_from(matching.subquery()))
            ).scalar()
        return items, int(total or 0)

    def _listing(self, project_id: int) -> Any:
        """Repositories of a project with their image count and when they last changed (the
        settings, or the latest push, tag, tag deletion or image deletion), computed in one
        grouped pass per table."""
        in_project = select(repositories.c.id).where(repositories.c.project_id == project_id)
        # An image is a top-level manifest: an index's children are not counted again.
        image_stats = (
            select(
                manifests.c.repository_id,
                func.count().label("images"),
                func.max(manifests.c.pushed_at).label("pushed_at"),
            )
            .where(manifests.c.repository_id.in_(in_project), is_image())
            .group_by(manifests.c.repository_id)
            .subquery()
        )
        tag_stats = (
            select(tags.c.repository_id, func.max(tags.c.updated_at).label("tagged_at"))
            .where(tags.c.repository_id.in_(in_project))
            .group_by(tags.c.repository_id)
            .subquery()
        )
        # Content changes that leave no row behind (a tag or an image deleted, also by GC)
        # count too: the image history records every one. Per repository, from its index
        # (repository_id, image, at): the history is append-only, so a grouped pass over the
        # project's would read all of it for every repository shown, even one.
        event_at = (
            select(func.max(image_events.c.at))
            .where(image_events.c.repository_id == repositories.c.id)
            .correlate(repositories)
            .scalar_subquery()
        )
        changed = self._latest(
            repositories.c.updated_at,
            func.coalesce(image_stats.c.pushed_at, repositories.c.updated_at),
            func.coalesce(tag_stats.c.tagged_at, repositories.c.updated_at),
            func.coalesce(event_at, repositories.c.updated_at),
        )
        return (
            select(
                repositories.c.id,
                repositories.c.name,
                repositories.c.description,
                repositories.c.public,
                repositories.c.tag_overwrite,
                repositories.c.scan_mode,
                repositories.c.created_at,
                func.coalesce(image_stats.c.images, 0).label("images"),
                changed.label("updated_at"),
            )
            .outerjoin(image_stats, image_stats.c.repository_id == repositories.c.id)
            .outerjoin(tag_stats, tag_stats.c.repository_id == repositories.c.id)
            .where(repositories.c.project_id == project_id)
        )

    def _latest(self, *values: Any) -> ColumnElement[Any]:
        """The latest of several timestamps (SQLite's many-argument max, else greatest)."""
        if self.db.is_sqlite:
            return func.max(*values, type_=UTCDateTime)
        return func.greatest(*values, type_=UTCDateTime)

    async def show(self, project: str, name: str) -> Repository:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            row = (
                await conn.execute(self._listing(project_id).where(repositories.c.name == name))
            ).first()
        if row is None:
            raise NameUnknown(f"repository {project}/{name} does not exist")
        return _repository(project, row)

    async def list_projects(self) -> builtins.list[ProjectEntry]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(projects.c.name, projects.c.created_at).order_by(projects.c.name)
            )
            return [ProjectEntry(r.name, r.created_at) for r in rows]

    async def project(self, name: str) -> ProjectDetails:
        """A project with its repository count and maximum, or NAME_UNKNOWN."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, name)
        [details] = await self.project_details([project_id])
        return details

    async def project_details(
        self, project_ids: Collection[int] | None = None
    ) -> builtins.list[ProjectDetails]:
        """Projects (all, or those with these ids) with their repository count and maximum."""
        counts = (
            select(repositories.c.project_id, func.count().label("repositories"))
            .group_by(repositories.c.project_id)
            .subquery()
        )
        query = (
            select(
                projects.c.id,
                projects.c.name,
                projects.c.created_at,
                func.coalesce(counts.c.repositories, 0).label("repositories"),
                project_settings.c.repository_quota,
            )
            .outerjoin(counts, counts.c.project_id == projects.c.id)
            .outerjoin(project_settings, project_settings.c.project_id == projects.c.id)
            .order_by(projects.c.name)
        )
        if project_ids is not None:
            query = query.where(projects.c.id.in_(project_ids))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ProjectDetails(
                id=r.id,
                name=r.name,
                created_at=r.created_at,
                repositories=int(r.repositories),
                repository_quota=(
                    int(r.repository_quota)
                    if r.repository_quota is not None
                    else self.default_quota
                ),
                quota_is_default=r.repository_quota is None,
            )
            for r in rows
        ]


def _repository(project: str, row: Any) -> Repository:
    return Repository(
        project=project,
        name=row.name,
        description=row.description,
        visibility="public" if row.public else "private",
        tag_overwrite=row.tag_overwrite,
        scan_mode=row.scan_mode,
        images=row.images,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
