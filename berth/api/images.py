"""Images (top-level manifests) and tags of a repository, their history, and tag restore.

Image names inside a repository may contain slashes (`{project}/{repository}/team/app`), so
they travel as the `image` query parameter (empty, the default, for the repository's own
name); digests and tags are path segments.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from berth.api.bodies import RequestBody
from berth.api.deps import (
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
from berth.domain.digests import DIGEST_PATTERN, DIGEST_RULE
from berth.domain.names import IMAGE_PATH_PATTERN, TAG_PATTERN
from berth.services.image_records import Event, Image, ImageDeletion, ImageDetail, Tag

router = APIRouter(prefix="/projects/{project}/repositories/{repository}", tags=["images"])


class RestoreRequest(RequestBody):
    image: str = Field("", pattern=IMAGE_PATH_PATTERN, max_length=255)
    tag: str = Field(pattern=TAG_PATTERN)


class RestoredTag(BaseModel):
    image: str
    tag: str
    digest: str


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
    return Page[Image].of(items, paging, total)


@router.get("/images/{digest}", responses=responses(404))
async def show_image(
    ctx: ReadProject,
    repository: RepositoryName,
    digest: Digest,
    images: ImagesDep,
    image: ImageName = "",
) -> ImageDetail:
    """One manifest with its tags, platform manifests, layers and referrers. An index lists
    at most its first 256 manifests (`child_count` says how many it has), an image manifest
    at most its first 256 blobs (`layer_count`)."""
    return await images.image(await ctx.repository(repository), image, digest)


@router.get(
    "/images/{digest}/deletion",
    responses=responses(
        described={
            404: "as the delete's",
            409: "a platform manifest that a stored index lists, as the delete's",
        }
    ),
)
async def image_deletion(
    ctx: ManageProject,
    repository: RepositoryName,
    digest: Digest,
    image: ImageName = "",
) -> ImageDeletion:
    """What deleting the image (`DELETE .../images/{digest}`) would take with it, counted,
    and what it reaches that would stay, with why: a platform manifest another stored index
    lists or that has a tag of its own, a referrer another stored index lists. The same rule
    the delete follows, read now: a confirmation shows it before the delete. A protected tag
    that would refuse the delete is found by the delete."""
    return await ctx.services.registry.image_deletion(
        await ctx.repository(repository), image, digest
    )


@router.delete(
    "/images/{digest}",
    status_code=204,
    response_description="deleted: the manifest, every tag on it and, for an index, the "
    "platform manifests it lists that no other stored index lists and that have no tag of "
    "their own (those stay, as images of their own where no index lists them), and the "
    "referrers (signatures, SBOMs) of all of these, recursively, except one another stored "
    "index lists",
    responses=responses(
        described={
            404: "no such project or repository, or the manifest is not under this image of "
            "the repository: the message names the images it is under and the `?image=` to "
            "pass (and, where an index lists it there, that index, whose delete deletes it too "
            "unless it has a tag of its own)",
            409: "a platform manifest that a stored index lists (the message names the index, "
            "whose delete deletes it too unless it has a tag of its own), or an image a "
            "protected tag names (on it, or on a referrer that would go with it)",
        }
    ),
)
async def delete_image(
    request: Request,
    ctx: ManageProject,
    repository: RepositoryName,
    digest: Digest,
    image: ImageName = "",
) -> Response:
    """Delete an image and every tag on it (its data goes at the next garbage collection).
    Deleting an index deletes with it the platform manifests it lists, except one that
    another stored index lists or that has a tag of its own: that one stays
    (an image of its own once no index lists it). The referrers (signatures, SBOMs) of the
    image and of the platform manifests going with it go too, and theirs, as a retention
    run deletes them: a signature of nothing is no image (one that another stored index
    lists stays, with its own referrers). Each manifest deleted is in the image history; the
    image sends one `io.berth.image.deleted` webhook event, listing the platform manifests
    and referrers (with their tags) deleted with it (`platform_manifests`, `referrers`),
    and the audit log has one `image.delete` entry saying how many went
    (`platform_manifest_count`, `referrer_count`). Deleting a referrer itself deletes it
    (and its own referrers) as an image. A platform manifest of a stored index cannot be
    deleted on its own: delete the index (409 naming it). An image a tag protected by an
    immutable tag rule, or any tag while the repository's tag overwrite is off, names (on
    it or on anything going with it) cannot be deleted (409).

    `DELETE /v2/<name>/manifests/<digest>` deletes only that manifest, as OCI clients
    expect."""
    repo = await ctx.repository(repository)
    await ctx.services.registry.delete_image(
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
    return Page[Tag].of(items, paging, total)


@router.delete("/tags/{tag}", status_code=204, responses=responses(404, 409))
async def delete_tag(
    request: Request,
    ctx: ManageProject,
    repository: RepositoryName,
    tag: TagName,
    image: ImageName = "",
) -> Response:
    """Remove a tag (the image stays); it can be restored while the image is stored. A tag
    protected by an immutable tag rule cannot be removed (409 naming the rule), nor any tag
    while the repository's tag overwrite is off."""
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
    digest: Annotated[
        str | None, Query(pattern=DIGEST_PATTERN, description=f"manifest digest: {DIGEST_RULE}")
    ] = None,
) -> Page[Event]:
    """Image and tag history of the repository, newest first: every push, tag, untag, tag
    move, delete and restore with who did it, when, and the old and new digest."""
    repo = await ctx.repository(repository)
    items, total = await images.history(
        repo, image=image, tag=tag, digest=digest, page=paging.page, per_page=paging.per_page
    )
    return Page[Event].of(items, paging, total)
