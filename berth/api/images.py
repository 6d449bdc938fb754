"""Images (top-level manifests) and tags of a repository, their history, and tag restore.

Image names inside a repository may contain slashes (`{project}/{repository}/team/app`), so
they travel as the `image` query parameter (empty, the default, for the repository's own
name); digests and tags are path segments.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from berth.api.deps import (
    DIGEST_PATTERN,
    IMAGE_PATTERN,
    TAG_PATTERN,
    Digest,
    ImageFilter,
    ImageName,
    ImagesDep,
    ManageProject,
    Page,
    PagingDep,
    ReadProject,
    RepositoryName,
    TagName,
)
from berth.api.problems import responses
from berth.auth.guard import client_address

router = APIRouter(prefix="/projects/{project}/repositories/{repository}", tags=["images"])


class Referrer(BaseModel):
    digest: str
    media_type: str
    artifact_type: str | None = Field(description="e.g. a signature's or an SBOM's type")
    size: int
    pushed_at: dt.datetime


class Image(BaseModel):
    image: str = Field(description="image name inside the repository ('' for the repository)")
    digest: str
    media_type: str
    artifact_type: str | None
    subject: str | None = Field(description="for a referrer: the digest it refers to")
    tags: list[str]
    size: int = Field(
        description="bytes of the manifest and every blob it needs (an index: with its "
        "platform manifests), each blob counted once"
    )
    platforms: list[str] = Field(
        description="os/architecture[/variant]: of each entry of an index; of a single-platform "
        "image, its own (from its config)"
    )
    pushed_at: dt.datetime
    referrer_count: int
    referrers: list[Referrer] = Field(description="signatures, SBOMs, ... that refer to it")


class Child(BaseModel):
    digest: str
    media_type: str
    platform: str | None
    size: int


class Layer(BaseModel):
    digest: str
    media_type: str
    size: int


class ImageDetail(Image):
    manifest_size: int
    children: list[Child] = Field(description="for an index: its platform manifests")
    layers: list[Layer] = Field(description="for an image manifest: its config and layers")
    parents: list[str] = Field(description="digests of the indexes that list this manifest")


class Tag(BaseModel):
    image: str
    tag: str
    digest: str
    updated_at: dt.datetime


class Event(BaseModel):
    id: int
    image: str
    tag: str | None = Field(description="null for events on an image (push, delete)")
    action: Literal["push", "tag", "untag", "move", "delete", "restore"]
    old_digest: str | None
    new_digest: str | None
    actor: str
    at: dt.datetime
    restorable: bool = Field(description="an untag whose tag can be restored now")


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field("", pattern=IMAGE_PATTERN, max_length=255)
    tag: str = Field(pattern=TAG_PATTERN)


class RestoredTag(BaseModel):
    image: str
    tag: str
    digest: str


def _image(item: dict[str, Any]) -> Image:
    return Image.model_validate({**item, "referrer_count": len(item["referrers"])})


@router.get("/images", responses=responses(404))
async def list_images(
    ctx: ReadProject,
    repository: RepositoryName,
    images: ImagesDep,
    paging: PagingDep,
    image: ImageFilter = None,
    referrers: Annotated[
        bool,
        Query(
            description="true: also list signatures, SBOMs and other referrers as rows of "
            "their own (they are always listed under the images they refer to, and are not "
            "images: the total and every image count leave them out)"
        ),
    ] = False,
    order: Annotated[Literal["asc", "desc"], Query(description="by push time")] = "desc",
) -> Page[Image]:
    """A page of the repository's images, newest first. An image is a top-level manifest: an
    index counts once with its platform manifests; a referrer (signature, SBOM) is listed
    under its subject. The repository's image count, the project summary and the image limit
    count the same."""
    repo = await ctx.repository(repository)
    items, total = await images.list_images(
        repo,
        image=image,
        referrers=referrers,
        page=paging.page,
        per_page=paging.per_page,
        descending=order == "desc",
    )
    return Page[Image](
        items=[_image(i) for i in items], page=paging.page, per_page=paging.per_page, total=total
    )


@router.get("/images/{digest}", responses=responses(404))
async def show_image(
    ctx: ReadProject,
    repository: RepositoryName,
    digest: Digest,
    images: ImagesDep,
    image: ImageName = "",
) -> ImageDetail:
    """One manifest with its tags, platform manifests, layers and referrers."""
    repo = await ctx.repository(repository)
    found = await images.image(repo, image, digest)
    parents = await images.parents(repo, image, digest)
    return ImageDetail.model_validate(
        {**found, "referrer_count": len(found["referrers"]), "parents": parents}
    )


@router.delete("/images/{digest}", status_code=204, responses=responses(404, 409))
async def delete_image(
    request: Request,
    ctx: ManageProject,
    repository: RepositoryName,
    digest: Digest,
    image: ImageName = "",
) -> Response:
    """Delete an image and every tag on it (its data goes at the next garbage collection). A
    platform manifest of a stored index cannot be deleted on its own: delete the index."""
    repo = await ctx.repository(repository)
    await ctx.services.registry.delete_manifest(
        repo, image, digest, actor=ctx.actor, client=client_address(request)
    )
    return Response(status_code=204)


@router.get("/tags", responses=responses(404))
async def list_tags(
    ctx: ReadProject,
    repository: RepositoryName,
    images: ImagesDep,
    paging: PagingDep,
    image: ImageFilter = None,
) -> Page[Tag]:
    """A page of the repository's tags, by image name and tag."""
    repo = await ctx.repository(repository)
    items, total = await images.list_tags(
        repo, image=image, page=paging.page, per_page=paging.per_page
    )
    return Page[Tag](
        items=[Tag.model_validate(i) for i in items],
        page=paging.page,
        per_page=paging.per_page,
        total=total,
    )


@router.delete("/tags/{tag}", status_code=204, responses=responses(404))
async def delete_tag(
    request: Request,
    ctx: ManageProject,
    repository: RepositoryName,
    tag: TagName,
    image: ImageName = "",
) -> Response:
    """Remove a tag (the image stays); it can be restored while the image is stored."""
    repo = await ctx.repository(repository)
    await ctx.services.registry.delete_manifest(
        repo, image, tag, actor=ctx.actor, client=client_address(request)
    )
    return Response(status_code=204)


@router.post("/tags/restore", responses=responses(404, 409))
async def restore_tag(
    request: Request, ctx: ManageProject, repository: RepositoryName, body: RestoreRequest
) -> RestoredTag:
    """Put a removed tag back on the image it last named, while that image is stored: 409
    when the tag exists, 404 when it has no history or its image is gone."""
    repo = await ctx.repository(repository)
    digest = await ctx.services.registry.restore_tag(
        repo, body.image, body.tag, actor=ctx.actor, client=client_address(request)
    )
    return RestoredTag(image=body.image, tag=body.tag, digest=digest)


@router.get("/history", responses=responses(404))
async def history(
    ctx: ReadProject,
    repository: RepositoryName,
    images: ImagesDep,
    paging: PagingDep,
    image: ImageFilter = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN)] = None,
    digest: Annotated[str | None, Query(pattern=DIGEST_PATTERN, max_length=160)] = None,
) -> Page[Event]:
    """Image and tag history of the repository, newest first: every push, tag, untag, tag
    move, delete and restore with who did it, when, and the old and new digest."""
    repo = await ctx.repository(repository)
    items, total = await images.history(
        repo, image=image, tag=tag, digest=digest, page=paging.page, per_page=paging.per_page
    )
    return Page[Event](
        items=[Event.model_validate(i) for i in items],
        page=paging.page,
        per_page=paging.per_page,
        total=total,
    )
