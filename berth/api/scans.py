"""Image scans: an image's result with its findings, a scan on request, and its SBOM.

As in images.py, the image name inside the repository travels as the `image` query
parameter (empty, the default, for the repository's own name).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from berth.api.deps import Digest, ImageName, ManageProject, ReadProject, RepositoryName
from berth.api.problems import responses
from berth.auth.guard import client_address
from berth.domain.errors import NotFound
from berth.domain.names import joined_name
from berth.services.sbom_referrers import AttachedSbom, SbomReferrers
from berth.services.scanning.results import ScanResult
from berth.services.scanning.sbom import MEDIA_TYPE, cyclonedx_json

router = APIRouter(
    prefix="/projects/{project}/repositories/{repository}/images/{digest}", tags=["scans"]
)


def _full_name(project: str, repository: str, image: str) -> str:
    return joined_name(project, repository, image)


@router.get("/scan", responses=responses(404))
async def scan_result(
    ctx: ReadProject, repository: RepositoryName, digest: Digest, image: ImageName = ""
) -> ScanResult:
    """The image's scan: its state (`queued`, `scanning`, `done`, `failed` with the reason),
    counts by severity and each finding (package, installed and fixed version, advisory, its
    aliases, severity, link), most severe first. `stale`: vulnerability data was imported
    after it was made (it is scanned again by the next rescan). 404 when it was never scanned."""
    repo = await ctx.repository(repository)
    result = await ctx.services.scans.result(repo.id, image, digest)
    if result is None:
        raise NotFound(
            f"image {_full_name(ctx.project, repository, image)}@{digest} has not been "
            "scanned; POST to this address to scan it"
        )
    return result


@router.post("/scan", status_code=202, responses=responses(404))
async def request_scan(
    request: Request,
    ctx: ManageProject,
    repository: RepositoryName,
    digest: Digest,
    image: ImageName = "",
) -> ScanResult:
    """Queue a scan of the image (an index: each platform); it runs in the background. A scan
    already queued or running is left as it is."""
    repo = await ctx.repository(repository)
    await ctx.services.scans.request_scan(
        repo, image, digest, ctx.actor, client=client_address(request)
    )
    result = await ctx.services.scans.result(repo.id, image, digest)
    assert result is not None
    return result


@router.get(
    "/sbom",
    responses={
        **responses(404),
        200: {"content": {MEDIA_TYPE: {}}, "description": "a CycloneDX 1.6 JSON document"},
    },
    response_class=Response,
)
async def sbom(
    ctx: ReadProject, repository: RepositoryName, digest: Digest, image: ImageName = ""
) -> Response:
    """The packages a scan found in the image (an image manifest, not an index: its platform
    manifests have their own) as CycloneDX JSON. 404 until the image has been scanned."""
    repo = await ctx.repository(repository)
    await ctx.services.scans.result(repo.id, image, digest)  # 404 when it is not in the repo
    inventory = await ctx.services.scans.sbom(digest)
    name = _full_name(ctx.project, repository, image)
    if inventory is None:
        raise NotFound(f"image {name}@{digest} has no SBOM yet: scan it (an index: its platforms)")
    return Response(cyclonedx_json(name, digest, inventory), media_type=MEDIA_TYPE)


@router.post(
    "/sbom/referrer",
    status_code=201,
    responses={
        **responses(404, 409),
        200: {"model": AttachedSbom, "description": "attached already: the same referrer"},
    },
)
async def attach_sbom(
    ctx: ManageProject,
    repository: RepositoryName,
    digest: Digest,
    response: Response,
    image: ImageName = "",
) -> AttachedSbom:
    """Attach the image's SBOM to it as an OCI 1.1 referrer in the same repository, so
    `/v2/<name>/referrers/<digest>` (oras discover, other registries' tools) finds it:
    `artifactType` `application/vnd.cyclonedx+json`, one layer with the CycloneDX document, the
    empty config, `subject` the image. A push like any other (garbage collection's write
    restriction, image limit, webhooks); it goes when the image is deleted. The same SBOM
    attached again is the same referrer (200, `created` false). 404 until the image has been
    scanned; an index's platforms each have their own."""
    repo = await ctx.repository(repository)
    attached = await SbomReferrers(
        ctx.services.registry, ctx.services.uploads, ctx.services.scans
    ).attach(repo, image, digest, ctx.actor)
    if not attached.created:
        response.status_code = 200
    return attached
