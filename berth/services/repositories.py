"""Projects and repositories: creation, changes and deletion, and resolving an OCI name to a
repository; their listings are `repository_listings.py`'s (a part of `Repositories`), the
`Repository` record `repository_records.py`'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.expiring import ExpiringCache
from berth.domain.descriptions import description_problem
from berth.domain.errors import (
    ConfirmationRequired,
    Conflict,
    InvalidValue,
    NameInvalid,
    NameUnknown,
    QuotaExceeded,
    StateRefusal,
)
from berth.domain.events import QUOTA_REFUSED
from berth.domain.names import (
    COMPONENT_RULE,
    ImageName,
    is_valid_component,
    name_unknown,
    project_name_problem,
)
from berth.domain.references import RepositoryRef
from berth.domain.wording import counted
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import count_in_project, require_project
from berth.metadata.tables import (
    gc_runs,
    project_settings,
    projects,
    repositories,
    uploads,
    utcnow,
)
from berth.services.gc.restrictions import ensure_writable
from berth.services.repository_listings import RepositoryListings
from berth.services.repository_quota import MAX_REPOSITORY_QUOTA, check_repository_quota
from berth.services.repository_records import Repository, ScanMode
from berth.services.scanning.policy import severity_rank
from berth.services.tag_rules import refuse_protected_repository
from berth.services.webhook_events import report_refusal
from berth.storage.base import BlobStore

# How long a resolved repository is reused. Settings changed by another node or the admin CLI
# take effect after this long; keeps one query off every pull.
REPOSITORY_CACHE_SECONDS = 1.0
REPOSITORY_CACHE_SIZE = 10_000
# A repository name leaves room for the project and an image path in a 255-character OCI name.
MAX_REPOSITORY_NAME = 128
SCAN_MODES: tuple[str, ...] = get_args(ScanMode)


_REPOSITORY = (
    select(
        repositories.c.id,
        repositories.c.project_id,
        repositories.c.public,
        repositories.c.tag_overwrite,
        project_settings.c.refuse_pulls_severity,
    )
    .join(projects, projects.c.id == repositories.c.project_id)
    .outerjoin(project_settings, project_settings.c.project_id == projects.c.id)
    .where(projects.c.name == bindparam("project"), repositories.c.name == bindparam("repository"))
)
_PROJECT_ID = select(projects.c.id).where(projects.c.name == bindparam("project"))


class Repositories(RepositoryListings):
    def __init__(
        self,
        db: Database,
        default_quota: int = 100,
        *,
        store: BlobStore | None = None,
        forget_access: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.default_quota = default_quota
        # A deleted project's uploads in progress lose their scratch files (when a store is
        # given); what is cached of a deleted project or repository goes by `forget_access`.
        self.store = store
        self.forget_access = forget_access
        # Found repositories by (project, name), as `lookup` says.
        self._cache: ExpiringCache[tuple[str, str], RepositoryRef] = ExpiringCache(
            REPOSITORY_CACHE_SIZE, REPOSITORY_CACHE_SECONDS
        )

    async def lookup(
        self, project: str, repository: str
    ) -> tuple[int | None, RepositoryRef | None]:
        """(project id, repository) for a name; None for what does not exist. Found
        repositories are cached briefly; absences are not, so a new repository works at once."""
        key = (project, repository)
        cached = self._cache.get(key)
        if cached is not None:
            return cached.project_id, cached
        async with self.db.read() as conn:
            row = (
                await conn.execute(_REPOSITORY, {"project": project, "repository": repository})
            ).first()
            if row is None:
                project_id = (await conn.execute(_PROJECT_ID, {"project": project})).scalar()
                return project_id, None
        ref = RepositoryRef(
            row.id,
            row.project_id,
            project,
            repository,
            row.public,
            row.tag_overwrite,
            severity_rank(row.refuse_pulls_severity),
        )
        self._cache[key] = ref
        return ref.project_id, ref

    async def project_id(self, project: str) -> int | None:
        """A project's id, or None when there is no such project."""
        async with self.db.read() as conn:
            found = (await conn.execute(_PROJECT_ID, {"project": project})).scalar()
        return int(found) if found is not None else None

    async def project_name(self, project_id: int) -> str | None:
        async with self.db.read() as conn:
            name = (
                await conn.execute(select(projects.c.name).where(projects.c.id == project_id))
            ).scalar()
        return str(name) if name is not None else None

    async def resolve(self, name: ImageName, *, pushing: bool) -> RepositoryRef:
        """The repository an OCI name lives in, or NAME_UNKNOWN (saying how to create it, to
        a client `pushing`)."""
        project_id, repo = await self.lookup(name.project, name.repository)
        if repo is None:
            raise name_unknown(name, project_exists=project_id is not None, pushing=pushing)
        return repo

    async def require(self, project: str, name: str) -> RepositoryRef:
        """A repository by its project and name (as `lookup`, cached), or NAME_UNKNOWN."""
        _project_id, repo = await self.lookup(project, name)
        if repo is None:
            raise NameUnknown(f"repository {project}/{name} does not exist")
        return repo

    async def create_project(self, name: str, *, actor: str, client: str | None = None) -> None:
        """Create a project, audited server-wide as `project.create` (as its delete is: the
        project's own log goes with it)."""
        problem = project_name_problem(name)
        if problem is not None:
            raise NameInvalid(problem, {"name": name[:80]})
        try:
            async with self.db.write() as conn:
                await conn.execute(projects.insert().values(name=name, created_at=utcnow()))
                await write_audit_entry(conn, actor, "project.create", target=name, client=client)
        except IntegrityError:
            raise Conflict(f"project {name!r} already exists") from None

    async def create(
        self,
        project: str,
        name: str,
        *,
        public: bool = False,
        tag_overwrite: bool = True,
        description: str = "",
        scan_mode: str = "manual",
        actor: str,
        client: str | None = None,
    ) -> Repository:
        if not is_valid_component(name) or len(name) > MAX_REPOSITORY_NAME:
            raise NameInvalid(
                f"invalid repository name {name!r}: {COMPONENT_RULE}, "
                f"up to {MAX_REPOSITORY_NAME} characters"
            )
        _check_description(description)
        _check_scan_mode(scan_mode)
        now = utcnow()
        project_id = None
        try:
            async with self.db.write() as conn:
                project_id = (await conn.execute(_PROJECT_ID, {"project": project})).scalar()
                if project_id is None:
                    raise NameUnknown(f"project {project!r} does not exist")
                exists = (
                    await conn.execute(
                        select(repositories.c.id).where(
                            repositories.c.project_id == project_id, repositories.c.name == name
                        )
                    )
                ).first()
                if exists:
                    raise Conflict(f"repository {project}/{name} already exists")
                await ensure_writable(conn, project_id, project)
                await check_repository_quota(conn, project_id, project, self.default_quota)
                await conn.execute(
                    repositories.insert().values(
                        project_id=project_id,
                        name=name,
                        description=description,
                        public=public,
                        tag_overwrite=tag_overwrite,
                        scan_mode=scan_mode,
                        created_at=now,
                        updated_at=now,
                    )
                )
                await write_audit_entry(
                    conn,
                    actor,
                    "repository.create",
                    project_id=project_id,
                    target=name,
                    detail={"visibility": "public" if public else "private"},
                    client=client,
                )
        except QuotaExceeded as refusal:
            if project_id is not None:
                await report_refusal(
                    self.db, project_id, QUOTA_REFUSED, project, actor, refusal, name
                )
            raise
        return await self.show(project, name)

    async def set_quota(
        self, project: str, quota: int | None, *, actor: str, client: str | None = None
    ) -> None:
        """A project's own repository maximum; None returns it to the server default. Audited
        in the project's log as `project.quota`, with the maximum before and after (`old`,
        `new`) and whether each was the server default."""
        if quota is not None and not 0 <= quota <= MAX_REPOSITORY_QUOTA:
            raise InvalidValue(
                f"the repository quota must be from 0 to {MAX_REPOSITORY_QUOTA:,}; not {quota:,}",
                "repository_quota",
            )
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            own = (
                await conn.execute(
                    select(project_settings.c.repository_quota).where(
                        project_settings.c.project_id == project_id
                    )
                )
            ).scalar()
            await conn.execute(
                self.db.upsert(
                    project_settings, ["project_id"], {"repository_quota": quota}
                ).values(project_id=project_id, repository_quota=quota)
            )
            await write_audit_entry(
                conn,
                actor,
                "project.quota",
                project_id=project_id,
                target=project,
                detail={
                    "old": int(own) if own is not None else self.default_quota,
                    "old_is_default": own is None,
                    "new": quota if quota is not None else self.default_quota,
                    "new_is_default": quota is None,
                },
                client=client,
            )

    async def delete_project(
        self,
        project: str,
        *,
        confirm: str | None = None,
        actor: str,
        client: str | None = None,
    ) -> int:
        """Delete a project with everything in it (repositories, images, keys, roles, its
        audit log) and audit it server-wide, in one transaction; returns how many
        repositories it held. Blobs no other project links go at the next garbage
        collection; the scratch files of its uploads in progress go now. Refused while it
        holds repositories unless `confirm` repeats its name, and while a garbage collection
        runs in it."""
        async with self.db.write() as conn:
            held, upload_ids = await self._delete_project_rows(conn, project, confirm)
            await write_audit_entry(
                conn,
                actor,
                "project.delete",
                target=project,
                detail={"repositories": held},
                client=client,
            )
        self.forget_project(project)
        self.forget_access()
        if self.store is not None:
            for upload_id in upload_ids:
                await self.store.delete_upload(upload_id)
        return held

    async def _delete_project_rows(
        self, conn: AsyncConnection, project: str, confirm: str | None
    ) -> tuple[int, list[str]]:
        """(repositories held, ids of uploads in progress) of the project, deleted."""
        project_id = await require_project(conn, project)
        await ensure_writable(conn, project_id, project)
        running = (
            await conn.execute(
                select(gc_runs.c.id).where(
                    gc_runs.c.project_id == project_id, gc_runs.c.state == "running"
                )
            )
        ).first()
        if running is not None:
            raise StateRefusal(
                f"a garbage collection is running in project {project!r}; delete the "
                "project once it has finished"
            )
        held = await count_in_project(conn, repositories, project_id)
        if held and confirm != project:
            raise ConfirmationRequired(
                f"project {project!r} holds {counted(held, 'repository', 'repositories')}; "
                "to delete it with "
                "all of them, confirm by typing the project's name",
                {"repositories": held},
            )
        in_progress = await conn.execute(
            select(uploads.c.id)
            .join(repositories, repositories.c.id == uploads.c.repository_id)
            .where(repositories.c.project_id == project_id)
        )
        upload_ids = list(in_progress.scalars())
        await conn.execute(projects.delete().where(projects.c.id == project_id))
        return int(held), upload_ids

    def forget_project(self, project: str) -> None:
        """Drop the project's cached repositories (once it is deleted)."""
        for key in [k for k in self._cache if k[0] == project]:
            self._cache.pop(key)

    async def update(
        self,
        project: str,
        name: str,
        *,
        public: bool | None = None,
        tag_overwrite: bool | None = None,
        description: str | None = None,
        scan_mode: str | None = None,
        actor: str,
        client: str | None,
    ) -> Repository:
        """Change a repository's settings (its name is fixed once created); the change is
        audited (`repository.update`, its detail the settings given) when there is one."""
        changes: dict[str, Any] = {}
        # The settings as the API names them, in its order.
        audited: dict[str, Any] = {}
        if public is not None:
            changes["public"] = public
            audited["visibility"] = "public" if public else "private"
        if description is not None:
            _check_description(description)
            changes["description"] = audited["description"] = description
        if tag_overwrite is not None:
            changes["tag_overwrite"] = audited["tag_overwrite"] = tag_overwrite
        if scan_mode is not None:
            _check_scan_mode(scan_mode)
            changes["scan_mode"] = audited["scan_mode"] = scan_mode
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            this_repository = (repositories.c.project_id == project_id) & (
                repositories.c.name == name
            )
            current = (
                await conn.execute(
                    select(
                        *(repositories.c[column] for column in changes), repositories.c.id
                    ).where(this_repository)
                )
            ).first()
            if current is None:
                raise NameUnknown(f"repository {project}/{name} does not exist")
            # updated_at says when a setting last changed: a PATCH of settings as they are
            # (or of none) leaves it, and so the order of `sort=updated_at`.
            changed = {
                column: value
                for column, value in changes.items()
                if current._mapping[column] != value
            }
            if changed:
                await conn.execute(
                    repositories.update()
                    .where(this_repository)
                    .values(**changed, updated_at=utcnow())
                )
            if audited:
                await write_audit_entry(
                    conn,
                    actor,
                    "repository.update",
                    project_id=project_id,
                    target=name,
                    detail=audited,
                    client=client,
                )
        self._cache.pop((project, name))
        return await self.show(project, name)

    async def delete(self, project: str, name: str, *, actor: str, client: str | None) -> None:
        """Delete a repository, its images and tags, and audit it; blob data goes at the next GC.
        Refused while an immutable tag rule protects one of its tags."""
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            await ensure_writable(conn, project_id, project)
            await refuse_protected_repository(conn, project_id, name)
            result = await conn.execute(
                repositories.delete().where(
                    repositories.c.project_id == project_id, repositories.c.name == name
                )
            )
            if result.rowcount == 0:
                raise NameUnknown(f"repository {project}/{name} does not exist")
            await write_audit_entry(
                conn, actor, "repository.delete", project_id=project_id, target=name, client=client
            )
        self._cache.pop((project, name))
        self.forget_access()  # its grants


def _check_description(description: str) -> None:
    problem = description_problem(description)
    if problem is not None:
        raise InvalidValue(problem, "description")


def _check_scan_mode(scan_mode: str) -> None:
    if scan_mode not in SCAN_MODES:
        raise InvalidValue(f"scan mode must be one of {', '.join(SCAN_MODES)}", "scan_mode")
