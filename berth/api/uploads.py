"""Blob uploads in progress in a project (project admins): who holds them (they count against
max_open_uploads) and cancelling one before upload_expiry would end it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from berth.api.deps import AdminProject, Page, PagingDep
from berth.api.problems import responses
from berth.services.uploads import OpenUpload

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
    return Page[OpenUpload](items=items, page=paging.page, per_page=paging.per_page, total=total)


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
