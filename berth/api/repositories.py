"""Repositories: create, list (paged, sorted, searched), show, update all but the name, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from berth.api.bodies import RequestBody
from berth.api.deps import (
    SEARCH_BOUNDS,
    SEARCH_CHECK,
    ManageProject,
    Page,
    PagingDep,
    ReadProject,
    RepositoryName,
    follows,
)
from berth.api.problems import FieldError, responses
from berth.auth.guard import client_address
from berth.domain.descriptions import (
    DESCRIPTION_RULE,
    MAX_DESCRIPTION,
    TEXT_PATTERN,
    description_problem,
)
from berth.domain.names import REPOSITORY_NAME_PATTERN
from berth.services.repositories import MAX_REPOSITORY_NAME
from berth.services.repository_records import Repository, ScanMode, Visibility

router = APIRouter(prefix="/projects/{project}/repositories", tags=["repositories"])

# Checked by the service's own rule, so a refusal says what a description may be; the schema
# states the same bounds.
Description = Annotated[
    str,
    follows(description_problem),
    Field(
        description=DESCRIPTION_RULE,
        json_schema_extra={"maxLength": MAX_DESCRIPTION, "pattern": TEXT_PATTERN},
    ),
]


class NewRepository(RequestBody):
    name: str = Field(
        pattern=REPOSITORY_NAME_PATTERN,
        max_length=MAX_REPOSITORY_NAME,
        description="lowercase letters and digits with '.', '_', '__' or '-' between them; "
        "fixed once created",
    )
    visibility: Visibility = Field("private", description="public: anyone may pull")
    description: Description = ""
    tag_overwrite: bool = Field(
        True, description="false: an existing tag cannot be moved or deleted"
    )
    scan_mode: ScanMode = Field("manual", description="image scan: on push (auto) or on request")


class RepositoryUpdate(RequestBody):
    name: str | None = Field(None, description="fixed once created: only the same name is accepted")
    visibility: Visibility | None = None
    description: Description | None = None
    tag_overwrite: bool | None = None
    scan_mode: ScanMode | None = None


@router.get("", responses=responses(404))
async def list_repositories(
    ctx: ReadProject,
    paging: PagingDep,
    sort: Annotated[
        Literal["name", "images", "updated_at"], Query(description="sort key")
    ] = "name",
    order: Annotated[Literal["asc", "desc"], Query(description="sort order")] = "asc",
    q: Annotated[
        str,
        Query(
            max_length=MAX_REPOSITORY_NAME,
            description="name contains",
            json_schema_extra=SEARCH_BOUNDS,
        ),
        SEARCH_CHECK,
    ] = "",
) -> Page[Repository]:
    """A page of the project's repositories."""
    items, total = await ctx.services.repositories.page(
        ctx.project,
        page=paging.page,
        per_page=paging.per_page,
        sort=sort,
        descending=order == "desc",
        query=q or None,
    )
    return Page[Repository].of(items, paging, total)


@router.post("", status_code=201, responses=responses(404, 409))
async def create_repository(
    ctx: ManageProject, body: NewRepository, response: Response
) -> Repository:
    """Create a repository; images can be pushed into it afterwards. Past the project's
    repository quota this is refused (403, code QUOTA_EXCEEDED)."""
    created = await ctx.services.repositories.create(
        ctx.project,
        body.name,
        public=body.visibility == "public",
        tag_overwrite=body.tag_overwrite,
        description=body.description,
        scan_mode=body.scan_mode,
        actor=ctx.actor,
        client=ctx.caller.client,
    )
    response.headers["Location"] = f"/api/v1/projects/{ctx.project}/repositories/{body.name}"
    return created


@router.get("/{repository}", responses=responses(404))
async def show_repository(ctx: ReadProject, repository: RepositoryName) -> Repository:
    return await ctx.services.repositories.show(ctx.project, repository)


@router.patch("/{repository}", responses=responses(404))
async def update_repository(
    request: Request, ctx: ManageProject, repository: RepositoryName, body: RepositoryUpdate
) -> Repository:
    """Change a repository's settings; fields left out stay as they are."""
    if body.name is not None and body.name != repository:
        raise FieldError("name", "a repository's name is fixed once created")
    return await ctx.services.repositories.update(
        ctx.project,
        repository,
        public=body.visibility == "public" if body.visibility is not None else None,
        tag_overwrite=body.tag_overwrite,
        description=body.description,
        scan_mode=body.scan_mode,
        actor=ctx.actor,
        client=client_address(request),
    )


@router.delete("/{repository}", status_code=204, responses=responses(404, 409))
async def delete_repository(
    request: Request, ctx: ManageProject, repository: RepositoryName
) -> Response:
    """Delete a repository with its images and tags (their data goes at the next garbage
    collection). Refused (409) while an immutable tag rule protects one of its tags."""
    await ctx.services.repositories.delete(
        ctx.project, repository, actor=ctx.actor, client=client_address(request)
    )
    return Response(status_code=204)
