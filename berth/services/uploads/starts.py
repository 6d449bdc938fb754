"""Starting an upload: refused while garbage collection runs and past max_open_uploads in its
project (half of it for one user), its row and scratch object made before its ID is
handed out."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import TooManyRequests
from berth.domain.references import RepositoryRef
from berth.metadata.tables import projects, repositories, uploads
from berth.services.gc.restrictions import refuse_if_restricted
from berth.services.uploads.faults import StorageFaults
from berth.services.uploads.hashes import new_sha256
from berth.services.uploads.upload import Upload

logger = logging.getLogger("berth.uploads")


class UploadStarts(StorageFaults):
    async def start(self, repo: RepositoryRef, image: str, started_by: int | None = None) -> Upload:
        """A new upload; `started_by`: the user whose request starts it (None: no user's,
        e.g. a tool of the server's own), who may hold half of the project's open uploads."""
        upload = Upload(uuid.uuid4().hex, repo.id, image, 0, None)
        # Refused up front while garbage collection runs, so clients see why at once.
        async with self.db.read() as conn:
            await refuse_if_restricted(conn, repo.project_id, repo.project)
        # By the database's clock, as the expiry cutoffs are (`StorageCheck`, `Decider`).
        now = self.db.clock()
        # Counted and inserted in one transaction that holds the project's turn: counted in
        # one and inserted in another, concurrent POSTs all saw room for one more.
        async with self.db.write() as conn:
            await self._refuse_too_many_open(conn, repo, started_by)
            await conn.execute(
                uploads.insert().values(
                    id=upload.id,
                    repository_id=repo.id,
                    image=image,
                    started_by=started_by,
                    offset=0,
                    started_at=now,
                    updated_at=now,
                )
            )
        # The scratch object exists before its ID is handed out, so any node can pick the
        # upload up.
        try:
            async with self._storage_faults(upload.id):
                writer = await self.store.open_upload(upload.id, 0)
                await writer.close()
        except BaseException:
            await self._discard(upload.id)  # its row, and any file begun
            raise
        if self._read_only_said:
            self._read_only_said = False
            logger.info("the blob store takes writes again")
        self._hashes.put(upload.id, 0, new_sha256())
        return upload

    async def _refuse_too_many_open(
        self, conn: AsyncConnection, repo: RepositoryRef, started_by: int | None
    ) -> None:
        """Each upload keeps a row and a scratch object until it ends or expires: a client
        that only ever starts uploads would fill the database and the store for a day. One
        user may hold half the project's share, so that a user allowed to push to one
        repository cannot stop every push to the project."""
        # The project's turn (SQLite: its one writer's already): a row lock that nothing
        # else takes often, and that the foreign keys' key-share locks do not wait for.
        await conn.execute(
            select(projects.c.id)
            .where(projects.c.id == repo.project_id)
            .with_for_update(key_share=True)
        )
        in_project = uploads.join(repositories, repositories.c.id == uploads.c.repository_id)
        counted = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(uploads.c.started_by == started_by),
                )
                .select_from(in_project)
                .where(repositories.c.project_id == repo.project_id)
            )
        ).one()
        open_uploads, users_open = int(counted[0]), int(counted[1])
        if open_uploads >= self.max_open:
            raise TooManyRequests(
                f"project {repo.project!r} has {open_uploads} uploads in progress, the most "
                f"it may (max_open_uploads = {self.max_open}): finish or cancel some, or wait "
                "for abandoned ones to expire (upload_expiry)"
            )
        per_user = max(1, self.max_open // 2)
        if started_by is not None and users_open >= per_user:
            raise TooManyRequests(
                f"you have {users_open} uploads in progress in project {repo.project!r}, the "
                f"most one user may (half of max_open_uploads = {self.max_open}): finish or "
                "cancel some, or wait for abandoned ones to expire (upload_expiry)"
            )
