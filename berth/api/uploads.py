"""Blob uploads in progress in a project (project admins): who holds them (they count against
max_open_uploads) and cancelling one before upload_expiry would end it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from berth.api.deps import AdminProject, Page, PagingDep
from berth.api.problems import responses
from berth.domain.errors import InvalidValue
from berth.domain.names import MAX_USER_NAME_LENGTH, USER_NAME_PATTERN
from berth.services.uploads.open_uploads import OpenUpload

router = APIRouter(
    prefix="/projects/{project}/uploads", tags=["uploads"], responses=responses(403, 404)
)

UploadId = Annotated[
    str,
    Path(pattern=r"^[0-9a-f]{32}$", description="upload ID (32 lowercase hexadecimal digits)"),
]


@router.get("")
async def list_uploads(ctx: AdminProject, paging: PagingDep) -> Page[OpenUpload]:
    """The project's blob uploads in progress, newest first: a project at `max_open_uploads`
    refuses new ones (429 on /v2) until some finish, are cancelled or expire."""
    items, total = await ctx.services.uploads.open_in_project(
        ctx.project, offset=paging.offset, limit=paging.per_page
    )
    return Page[OpenUpload].of(items, paging, total)


class CancelledUploads(BaseModel):
    cancelled: int = Field(description="how many uploads in progress were cancelled")


@router.delete("", responses=responses(422))
async def cancel_uploads(
    ctx: AdminProject,
    started_by: Annotated[
        str | None,
        Query(
            pattern=USER_NAME_PATTERN,
            max_length=MAX_USER_NAME_LENGTH,
            description="cancel this user's uploads in progress",
        ),
    ] = None,
    all_uploads: Annotated[
        bool, Query(alias="all", description="cancel every upload in progress")
    ] = False,
) -> CancelledUploads:
    """Cancel many uploads at once, each as its client's DELETE would: one user's
    (`started_by`), or every one in the project (`all=true`); one of the two is required.
    Audited as one `upload.cancel` entry. An unknown user is a 404."""
    if (started_by is None) == (not all_uploads):
        raise InvalidValue("give either started_by=USER or all=true", "started_by")
    cancelled = await ctx.services.uploads.cancel_all_in_project(
        ctx.project, started_by=started_by, actor=ctx.actor, client=ctx.caller.client
    )
    return CancelledUploads(cancelled=cancelled)


@router.get("/{upload_id}", responses=responses(422))
async def get_upload(ctx: AdminProject, upload_id: UploadId) -> OpenUpload:
    """One upload in progress. One that is not in progress in the project (unknown, finished,
    cancelled or expired) is a 404 with code BLOB_UPLOAD_UNKNOWN."""
    return await ctx.services.uploads.in_project(ctx.project, upload_id)


@router.delete("/{upload_id}", status_code=204, responses=responses(422))
async def cancel_upload(ctx: AdminProject, upload_id: UploadId) -> Response:
    """Cancel an upload as its client's `DELETE /v2/<name>/blobs/uploads/<id>` would: what it
    stored goes, and its client's next request to it is answered BLOB_UPLOAD_UNKNOWN. Audited
    as `upload.cancel`. One that is not in progress in the project is a 404 with code
    BLOB_UPLOAD_UNKNOWN."""
    await ctx.services.uploads.cancel_in_project(
        ctx.project, upload_id, actor=ctx.actor, client=ctx.caller.client
    )
    return Response(status_code=204)
