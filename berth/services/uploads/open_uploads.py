"""The uploads in progress: counted, listed for a project's admins (with when each expires)
and cancelled, by its client or by an admin (audited)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from pydantic import Field
from sqlalchemy import delete, func, select

from berth.domain.errors import BlobUploadUnknown, Unavailable
from berth.domain.names import UPLOAD_ID_RE, joined_name
from berth.metadata.audit import write_audit_entry
from berth.metadata.lookups import require_project, require_user
from berth.metadata.tables import repositories, uploads, users
from berth.services.records import Record
from berth.services.uploads.upload import CancelNote, Upload, UploadPart

STORE_QUESTIONS = 16  # asked at once about the uploads listed (bytes_stored)


class OpenUpload(Record):
    """An upload in progress, as the project's admins see it."""

    id: str = Field(description="the upload's ID, as in its /v2/.../blobs/uploads/{id} URL")
    repository: str
    image: str = Field(description="the image path inside the repository ('' for its own name)")
    started_by: str | None = Field(
        description="the user whose request started it (null: the server's own, e.g. an SBOM)"
    )
    started_at: dt.datetime
    bytes_received: int = Field(description="bytes received and acknowledged so far")
    bytes_stored: int | None = Field(
        default=None,
        description="bytes the blob store holds for it now, with those of a request still "
        "sending its bytes (acknowledged only once that request ends); null if the store "
        "could not be asked",
    )
    updated_at: dt.datetime = Field(description="last activity: started, or a chunk received")
    expires_at: dt.datetime = Field(
        description="from when it counts as abandoned unless a chunk arrives first "
        "(upload_expiry): the hourly abandoned-uploads job removes it"
    )


_WITH_REPOSITORY = uploads.join(repositories, repositories.c.id == uploads.c.repository_id)
# Uploads with their repository's and starter's names (filtered by project).
_OPEN_UPLOADS = select(
    uploads, repositories.c.name.label("repository"), users.c.name.label("user")
).select_from(_WITH_REPOSITORY.outerjoin(users, users.c.id == uploads.c.started_by))


def _not_in_progress(project: str, upload_id: str) -> BlobUploadUnknown:
    return BlobUploadUnknown(
        f"upload {upload_id!r} is not in progress in project {project!r} "
        "(unknown, finished or cancelled)",
        {"project": project, "upload_id": upload_id},
    )


class OpenUploads(UploadPart):
    async def in_progress(self) -> int:
        """Uploads started and neither finished nor cancelled, on every node."""
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(uploads))).scalar_one())

    async def open_in_project(
        self, project: str, *, offset: int = 0, limit: int = 20
    ) -> tuple[list[OpenUpload], int]:
        """A page of the project's uploads in progress, newest first, and how many there are:
        what counts against max_open_uploads, and who holds them."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            in_project = repositories.c.project_id == project_id
            rows = await conn.execute(
                _OPEN_UPLOADS.where(in_project)
                .order_by(uploads.c.started_at.desc(), uploads.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            items = [self._open_upload(row) for row in rows]
            total = await conn.execute(
                select(func.count()).select_from(_WITH_REPOSITORY).where(in_project)
            )
        return await self._with_bytes_stored(items), int(total.scalar_one())

    async def _with_bytes_stored(self, items: list[OpenUpload]) -> list[OpenUpload]:
        """`items` with what the store holds for each (a few at a time: on S3 a listing or
        two each), so that an admin sees the bytes of a PATCH still being received."""
        asking = asyncio.Semaphore(STORE_QUESTIONS)

        async def held(item: OpenUpload) -> OpenUpload:
            async with asking:
                try:
                    stored = await self.store.upload_bytes_held(item.id)
                except (Unavailable, OSError):
                    return item
            return item.model_copy(update={"bytes_stored": stored})

        return list(await asyncio.gather(*(held(item) for item in items)))

    def _open_upload(self, row: Any) -> OpenUpload:
        return OpenUpload(
            id=row.id,
            repository=row.repository,
            image=row.image,
            started_by=row.user,
            started_at=row.started_at,
            bytes_received=row.offset,
            updated_at=row.updated_at,
            expires_at=row.updated_at + dt.timedelta(seconds=self.expiry),
        )

    async def in_project(self, project: str, upload_id: str) -> OpenUpload:
        """One of the project's uploads in progress, or BLOB_UPLOAD_UNKNOWN (404)."""
        _, row = await self._find_in_project(project, upload_id)
        return (await self._with_bytes_stored([self._open_upload(row)]))[0]

    async def require_in_project(self, project: str, upload_id: str) -> None:
        """Refuse as `cancel_in_project` would an upload not in progress in the project (or
        a project that does not exist): asked before a cancel is confirmed."""
        await self._find_in_project(project, upload_id)

    async def cancel(self, upload: Upload, *, audited_as: CancelNote | None = None) -> bool:
        """End an upload and remove what it stored (a client's DELETE, or an admin's cancel,
        audited in the same transaction). False when it had ended already. At once: not in
        the upload's turn (`_lock`), which a request sending its bytes holds for as long as
        its client takes; that request stops within CANCEL_CHECK_SECONDS, answered
        BLOB_UPLOAD_UNKNOWN, and removes what it stored meanwhile."""
        return await self._discard(upload.id, audited_as)

    async def cancel_in_project(
        self, project: str, upload_id: str, *, actor: str, client: str | None
    ) -> OpenUpload:
        """Cancel one of the project's uploads as its client's DELETE would (its scratch and
        pieces go), audited as `upload.cancel`; its client's next request is answered
        BLOB_UPLOAD_UNKNOWN. Returns the upload as it was."""
        project_id, row = await self._find_in_project(project, upload_id)
        cancelled = self._open_upload(row)
        name = joined_name(cancelled.repository, cancelled.image)
        note = CancelNote(
            actor,
            client,
            project_id,
            f"{name}@{upload_id}",
            {"started_by": cancelled.started_by, "bytes_received": cancelled.bytes_received},
        )
        if not await self.cancel(Upload.of(row), audited_as=note):
            raise _not_in_progress(project, upload_id)  # its client ended it meanwhile
        return cancelled

    async def cancel_all_in_project(
        self, project: str, *, started_by: str | None, actor: str, client: str | None
    ) -> int:
        """Cancel the project's uploads in progress that the user `started_by` started (None:
        every one), as `cancel_in_project` cancels one; audited as one `upload.cancel` entry.
        Returns how many there were. NAME_UNKNOWN for an unknown project, NOT_FOUND user."""
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            ending = delete(uploads).where(
                uploads.c.repository_id.in_(
                    select(repositories.c.id).where(repositories.c.project_id == project_id)
                )
            )
            if started_by is not None:
                ending = ending.where(uploads.c.started_by == await require_user(conn, started_by))
            ended = list((await conn.execute(ending.returning(uploads.c.id))).scalars())
            if ended:
                await write_audit_entry(
                    conn,
                    actor,
                    "upload.cancel",
                    project_id=project_id,
                    target=f"uploads started by {started_by}" if started_by else "all uploads",
                    detail={"started_by": started_by, "uploads": len(ended)},
                    client=client,
                )
        for upload_id in ended:
            self._hashes.drop(upload_id)
            await self._remove_scratch(upload_id)
        return len(ended)

    async def _find_in_project(self, project: str, upload_id: str) -> tuple[int, Any]:
        """The project's id and the upload's row (with its repository's and starter's names),
        or NAME_UNKNOWN for the project, BLOB_UPLOAD_UNKNOWN for the upload."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            row = None
            if UPLOAD_ID_RE.fullmatch(upload_id):
                row = (
                    await conn.execute(
                        _OPEN_UPLOADS.where(
                            uploads.c.id == upload_id, repositories.c.project_id == project_id
                        )
                    )
                ).first()
        if row is None:
            raise _not_in_progress(project, upload_id)
        return project_id, row
