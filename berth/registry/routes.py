"""/v2 handlers. Each parses the request, calls one service method and shapes the response."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from berth.access.identify import SignInPath
from berth.access.permissions import Action
from berth.access.policy import catalog_reach
from berth.access.scopes import CATALOG, CATALOG_SCOPE
from berth.auth.guard import (
    Caller,
    allowed_actions,
    authorize,
    challenge,
    check_login_host,
    client_address,
    identify,
    refuse_catalog,
    require_authenticated,
)
from berth.domain.errors import (
    BlobUnknown,
    Denied,
    DigestInvalid,
    ManifestUnknown,
    PaginationNumberInvalid,
    RangeNotSatisfiable,
    RegistryError,
    Unsupported,
)
from berth.domain.manifests import MAX_MANIFEST_BYTES, OCI_INDEX, accepts, manifest_too_large
from berth.domain.names import ImageName, name_unknown, split_name
from berth.domain.ranges import ByteRange, range_honoured, requested_range
from berth.domain.references import RepositoryRef
from berth.observability.requests import note, with_request_id
from berth.registry.responses import (
    BlobBytesResponse,
    BlobFileResponse,
    BlobHeadResponse,
    BlobStreamResponse,
    ManifestResponse,
    NotModifiedResponse,
    OnSent,
    etag_matches,
)
from berth.services.registry import Page
from berth.state import Services

JSON_TYPE = "application/json"


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# What each route needs, said where the route is (`_target(request, NEEDS_PUSH)`).
NEEDS_PULL = frozenset({Action.PULL})
NEEDS_PUSH = frozenset({Action.PUSH})
NEEDS_DELETE = frozenset({Action.DELETE})


async def _target(
    request: Request, needed: frozenset[Action]
) -> tuple[Services, ImageName, RepositoryRef]:
    """Resolve the OCI name in the path and check the caller may do what the route needs.

    Authorization comes before the existence check, so nothing about a project leaks to
    callers who may not see it.
    """
    services = _services(request)
    host_project = services.host_project(request.headers.get("host"))
    name = split_name(request.path_params["name"], host_project)
    note(request.scope, project=name.project)
    caller = await identify(services, request)
    request.state.caller = caller
    project_id, repo = await services.repositories.lookup(name.project, name.repository)
    await authorize(services, request, caller, name, project_id, repo, needed)
    if repo is None:
        raise name_unknown(
            name, project_exists=project_id is not None, pushing=Action.PUSH in needed
        )
    return services, name, repo


def _actor(request: Request) -> str:
    caller: Caller = request.state.caller
    return caller.principal.user if caller.principal else "anonymous"


async def _sees_project(request: Request, services: Services, repo: RepositoryRef) -> bool:
    """Whether the caller may use any blob in the project (project roles), or only what is
    in this repository (repository roles)."""
    caller: Caller = request.state.caller
    return await services.identity.roles.sees_project(caller.principal, repo.project_id)


def _json(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, media_type: str = JSON_TYPE
) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, headers, media_type)


# The largest page a client may ask for (`?n=`); larger pages are refused, not truncated.
MAX_PAGE = 10_000


# A catalog page when the client gives no `n`, with a Link header to the next, as Distribution
# caps its catalog: an install's whole list in one answer is megabytes, built per request.
# Large enough that most callers still get all they see at once.
CATALOG_PAGE = 1000


def _limit(request: Request) -> int | None:
    raw = request.query_params.get("n")
    if raw is None or raw == "":
        return None
    # ASCII digits only: str.isdigit() also admits '²', which int() refuses.
    if not (raw.isascii() and raw.isdigit()):
        raise PaginationNumberInvalid(f"n must be a non-negative integer, not {raw[:40]!r}")
    if len(raw) > len(str(MAX_PAGE)) or int(raw) > MAX_PAGE:
        raise PaginationNumberInvalid(
            f"n must be at most {MAX_PAGE:,}; follow the Link header for more", {"max": MAX_PAGE}
        )
    return int(raw)


def _page_link(path: str, page: Page, limit: int | None, extra: dict[str, str]) -> dict[str, str]:
    if page.next_last is None or limit is None:
        return {}
    query = urlencode({**extra, "n": limit, "last": page.next_last})
    return {"Link": f'<{path}?{query}>; rel="next"'}


# ---------------------------------------------------------------- base and catalog


async def base(request: Request) -> Response:
    """The login check of every client: signed in, and (on a project host) for this project."""
    services = _services(request)
    caller = await identify(services, request)
    require_authenticated(request, caller)
    assert caller.principal is not None
    if caller.token is None:  # a token was issued for this host, after this same check
        try:
            await check_login_host(services, request, caller.principal)
        except RegistryError as exc:
            key_id = caller.principal.key_id
            if key_id is not None:  # the key is right, but not for this host
                client = client_address(request)
                await services.authenticator.record_failed_key_login(
                    key_id, exc.message, client, SignInPath.REGISTRY_BASIC
                )
            exc.headers["WWW-Authenticate"] = challenge(request)
            raise
    return _json({})


async def catalog(request: Request) -> Response:
    services = _services(request)
    caller = await identify(services, request)
    require_authenticated(request, caller, CATALOG_SCOPE)
    if caller.token is not None and CATALOG not in caller.token.access:
        raise refuse_catalog(request, caller)
    assert caller.principal is not None  # require_authenticated
    limit = _limit(request)
    if limit is None:
        limit = CATALOG_PAGE
    project = services.host_project(request.headers.get("host"))
    reach = catalog_reach(caller.principal)
    page = await services.registry.catalog(project, reach, limit, request.query_params.get("last"))
    headers = _page_link("/v2/_catalog", page, limit, {})
    return _json({"repositories": page.items}, headers=headers)


# ---------------------------------------------------------------- blobs


def _traffic(services: Services, repo: RepositoryRef) -> OnSent | None:
    """What counts a download's outbound bytes, or None when metering is off."""
    meter = services.traffic
    return partial(meter.count, repo.project_id, repo.id) if meter.enabled else None


def _held(request: Request, digest: str) -> bool:
    """Whether the request's If-None-Match names the digest's ETag: the client holds it."""
    if_none_match = request.headers.getlist("if-none-match")
    return bool(if_none_match) and etag_matches(if_none_match, digest)


async def get_blob(
    request: Request,
) -> Response | BlobFileResponse | BlobHeadResponse | BlobStreamResponse | NotModifiedResponse:
    try:
        services, _name, repo = await _target(request, NEEDS_PULL)
    except Denied as refused:
        # A HEAD has no body for the reason (skopeo and podman, asking before a push, printed
        # "403 (Forbidden)"): unknown to this caller, and the upload that follows says why.
        if request.method != "HEAD":
            raise
        raise BlobUnknown(f"unknown to this caller: {refused.message}") from None
    digest = request.path_params["digest"]
    size = await services.registry.blob_size(repo, digest)
    if _held(request, digest):
        # Content-addressed, so never modified: answered before any Range or redirect (as
        # RFC 9110 orders the preconditions), nothing read, nothing counted as sent. Like a
        # HEAD, it must not tell the client that storage holds a blob it has lost; a copy in
        # this node's cache, which a GET would be sent from, answers for the store.
        await services.registry.ensure_held(digest, size)
        return NotModifiedResponse(digest)
    if services.settings.blob_redirect != "off" and request.method == "GET":
        return await _redirected_blob(request, services, repo, digest, size)
    path = services.registry.blob_path(digest)
    if path is None:
        return await _streamed_blob(request, services, repo, digest, size)
    content = await services.registry.verified_blob(digest, size, path)
    return _file_blob(request, services, repo, digest, path, size, content)


def _file_blob(
    request: Request,
    services: Services,
    repo: RepositoryRef,
    digest: str,
    path: Path,
    size: int,
    content: bytes | None = None,
) -> BlobFileResponse:
    """A blob, or the range of it asked for, sent from a local file (the filesystem store's,
    or a node's cached copy of an S3 blob), or from the `content` already read and verified."""
    part = _wanted_range(request, digest, size)
    on_sent = _traffic(services, repo)
    if content is not None:  # verified: these bytes, not the file's (changed since?)
        return BlobBytesResponse(content, digest, on_sent, part)
    return BlobFileResponse(str(path), size, digest, on_sent, part)


async def _streamed_blob(
    request: Request, services: Services, repo: RepositoryRef, digest: str, size: int
) -> BlobFileResponse | BlobHeadResponse | BlobStreamResponse:
    """A blob from a store with no local path (S3): read through the store, by byte range
    when one is asked for. A HEAD answers its Range as the GET would (206 or 416), as a blob
    in a local file does."""
    if request.method == "HEAD":
        # Asks the store even with a cached copy: a HEAD tells a client whether to push the
        # blob, which every node needs stored, not only this one.
        await services.registry.ensure_stored(digest, size)
    else:
        cached = await services.registry.cached_blob(digest, size)
        if cached is not None:
            return _file_blob(request, services, repo, digest, cached, size)
    part = _wanted_range(request, digest, size)
    if request.method == "HEAD":
        return BlobHeadResponse(digest, size, part)
    start, end = (part.start, part.end) if part else (0, size)
    chunks = await services.registry.blob_stream(digest, size, start, end)
    return BlobStreamResponse(chunks, digest, size, part, _traffic(services, repo))


def _wanted_range(request: Request, sender_etag_digest: str | None, size: int) -> ByteRange | None:
    """The one range of the blob the request's Range gets, or None for the whole blob (see
    `requested_range`; a 416 raised for one it cannot). An If-Range that does not name the
    ETag of what sends the bytes gets the whole blob, its Range unread (RFC 9110 13.1.5;
    `range_honoured`): Berth's and nginx's ETag of a blob is its digest."""
    if not range_honoured(request.headers.get("if-range"), sender_etag_digest):
        return None
    return requested_range(request.headers.get("range"), size)


ACCEL_LOCATION = "/_berth_blobs/"  # nginx's internal location of the blob directory


async def _redirected_blob(
    request: Request, services: Services, repo: RepositoryRef, digest: str, size: int
) -> Response:
    """A blob GET answered by redirect (`blob_redirect`): a 307 to a presigned URL of the
    object, or an X-Accel-Redirect that nginx serves from the blob directory. Either way the
    bytes asked for are counted as sent now: Berth never sees them go, so what is counted must
    bound what can be sent: a range is counted as a range only when the redirect cannot send
    more (the URL is signed for that Range; nginx honours it)."""
    settings = services.settings
    # nginx's ETag of the blob is Berth's (the digest); an object store's is its own.
    sender = digest if settings.blob_redirect == "accel" else None
    part = _wanted_range(request, sender, size)
    if settings.blob_redirect == "presigned":
        # The URL is signed for the client's own Range, which it sends the store again: only
        # a Range of one range, whose answer the store does not choose otherwise (S3 sends a
        # Range of several whole); else the whole blob is counted.
        header = request.headers.get("range", "")
        if part is not None and "," in header:
            part = None
        signed_range = header.strip() if part else None
        url = await services.registry.download_url(
            digest, size, settings.blob_redirect_ttl, signed_range
        )
        response = Response(
            status_code=307, headers={"Location": url, "Docker-Content-Digest": digest}
        )
    else:
        relative = await services.registry.accel_path(digest, size)
        # nginx serves the file (a Range too) and keeps these headers (see deploy/).
        response = Response(
            headers={
                "X-Accel-Redirect": ACCEL_LOCATION + relative,
                "Content-Type": "application/octet-stream",
                "Docker-Content-Digest": digest,
                "ETag": f'"{digest}"',
            }
        )
    on_sent = _traffic(services, repo)
    if on_sent is not None:
        on_sent(part.length if part else size)
    return response


async def delete_blob(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_DELETE)
    digest = request.path_params["digest"]
    await services.registry.delete_blob(
        repo, name.image, digest, actor=_actor(request), client=client_address(request)
    )
    return Response(status_code=202)


# ---------------------------------------------------------------- uploads


def _upload_headers(name: ImageName, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name.display}/blobs/uploads/{upload_id}",
        "Range": f"0-{max(offset - 1, 0)}",
        "Docker-Upload-UUID": upload_id,
    }


def _blob_created(name: ImageName, digest: str) -> Response:
    return Response(
        status_code=201,
        headers={"Location": f"/v2/{name.display}/blobs/{digest}", "Docker-Content-Digest": digest},
    )


def _body_length(request: Request) -> int | None:
    """The body's length its Content-Length declares (None without one: HTTP/2, chunked)."""
    value = request.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


async def start_upload(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_PUSH)
    params = request.query_params
    mount = params.get("mount")
    if mount:
        source_name = params.get("from")
        source = None
        if source_name:
            source = await _mount_source(request, services, source_name)
        if source is not None and await services.registry.mount(repo, mount, source):
            return _blob_created(name, mount)
        # Automatic mount: the project already holds the blob, for callers who see it all
        # and whose credentials do so too (a token grants named repositories only).
        caller: Caller = request.state.caller
        if (
            caller.token is None
            and await _sees_project(request, services, repo)
            and await services.registry.mount(repo, mount, None)
        ):
            return _blob_created(name, mount)
    caller = request.state.caller
    started_by = caller.principal.user_id if caller.principal else None
    upload = await services.uploads.start(repo, name.image, started_by)
    digest = params.get("digest")
    if digest:
        final = await services.uploads.complete(
            repo, upload, digest, request.stream(), None, _body_length(request)
        )
        return _blob_created(name, final)
    return Response(status_code=202, headers=_upload_headers(name, upload.id, 0))


async def _mount_source(
    request: Request, services: Services, source_name: str
) -> RepositoryRef | None:
    """The repository to mount from, if it exists and the caller may pull from it."""
    try:
        source = split_name(source_name, services.host_project(request.headers.get("host")))
        caller: Caller = request.state.caller
        project_id, repo = await services.repositories.lookup(source.project, source.repository)
        _current, allowed = await allowed_actions(services, caller, source, project_id, repo)
        if repo is not None and Action.PULL in allowed:
            return repo
    except RegistryError:
        pass
    return None  # no mount then: the client uploads the blob


async def upload_status(request: Request) -> Response:
    # An upload is part of pushing, as on Distribution: a caller who may only pull learns
    # nothing of one, not even that it exists, whoever handed them its ID.
    services, name, repo = await _target(request, NEEDS_PUSH)
    upload = await services.uploads.get(repo, name.image, request.path_params["upload_id"])
    return Response(status_code=204, headers=_upload_headers(name, upload.id, upload.offset))


async def patch_upload(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_PUSH)
    upload = await services.uploads.get(repo, name.image, request.path_params["upload_id"])
    try:
        upload = await services.uploads.append(
            upload,
            request.stream(),
            request.headers.get("content-range"),
            _body_length(request),
        )
    except RangeNotSatisfiable as exc:
        exc.headers.update(_upload_headers(name, upload.id, exc.current_size))
        raise
    return Response(status_code=202, headers=_upload_headers(name, upload.id, upload.offset))


async def complete_upload(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_PUSH)
    digest = request.query_params.get("digest")
    if not digest:
        raise DigestInvalid("the final PUT of an upload needs ?digest=<digest>")
    upload = await services.uploads.get(repo, name.image, request.path_params["upload_id"])
    try:
        final = await services.uploads.complete(
            repo,
            upload,
            digest,
            request.stream(),
            request.headers.get("content-range"),
            _body_length(request),
        )
    except RangeNotSatisfiable as exc:
        exc.headers.update(_upload_headers(name, upload.id, exc.current_size))
        raise
    return _blob_created(name, final)


async def cancel_upload(request: Request) -> Response:
    # Cancelling an upload is part of pushing (it deletes no stored content).
    services, name, repo = await _target(request, NEEDS_PUSH)
    upload = await services.uploads.get(repo, name.image, request.path_params["upload_id"])
    await services.uploads.cancel(upload)
    return Response(status_code=204)


# ---------------------------------------------------------------- manifests


async def get_manifest(request: Request) -> ManifestResponse | NotModifiedResponse:
    services, _name, repo = await _target(request, NEEDS_PULL)
    reference = request.path_params["reference"]
    manifest = await services.registry.get_manifest(repo, _name.image, reference)
    if repo.refuse_pulls_at is not None:
        await services.pull_policy.check(repo, _name, manifest)
    if not accepts(",".join(request.headers.getlist("accept")), manifest.media_type):
        raise ManifestUnknown(
            f"manifest {reference!r} is a {manifest.media_type}, which the client's Accept "
            "header does not accept",
            {"mediaType": manifest.media_type},
        )
    digest, media_type, content = manifest.digest, manifest.media_type, manifest.content
    if _held(request, digest):
        # The client holds this manifest: nothing sent, so no pull and no traffic counted.
        return NotModifiedResponse(digest)
    if request.method == "HEAD":
        return ManifestResponse(digest, media_type, content, head=True)
    if services.pulls.enabled:
        services.pulls.pulled(repo.id, _name.image, digest)
    return ManifestResponse(digest, media_type, content, on_sent=_traffic(services, repo))


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise manifest_too_large()
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise manifest_too_large()
        parts.append(chunk)
    return b"".join(parts)


async def put_manifest(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_PUSH)
    body = await _read_limited(request, MAX_MANIFEST_BYTES)
    pushed = await services.registry.put_manifest(
        repo,
        name.image,
        request.path_params["reference"],
        body,
        request.headers.get("content-type"),
        project_wide=await _sees_project(request, services, repo),
        actor=_actor(request),
    )
    headers = {
        "Location": f"/v2/{name.display}/manifests/{pushed.digest}",
        "Docker-Content-Digest": pushed.digest,
    }
    if pushed.subject:
        headers["OCI-Subject"] = pushed.subject
    return Response(status_code=201, headers=headers)


async def delete_manifest(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_DELETE)
    reference = request.path_params["reference"]
    await services.registry.delete_manifest(
        repo, name.image, reference, actor=_actor(request), client=client_address(request)
    )
    return Response(status_code=202)


# ---------------------------------------------------------------- listings


async def list_tags(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_PULL)
    limit = _limit(request)
    page = await services.registry.list_tags(
        repo, name.image, limit, request.query_params.get("last")
    )
    headers = _page_link(f"/v2/{name.display}/tags/list", page, limit, {})
    return _json({"name": name.display, "tags": page.items}, headers=headers)


def _after(request: Request) -> int | None:
    """Where a page of referrers starts: the `after` of the Link header of the one before."""
    raw = request.query_params.get("after")
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise PaginationNumberInvalid(
            f"after must be the value a Link header gave, not {raw[:40]!r}", {"after": raw[:40]}
        )
    return int(raw)


async def referrers(request: Request) -> Response:
    services, name, repo = await _target(request, NEEDS_PULL)
    artifact_type = request.query_params.get("artifactType")
    digest = request.path_params["digest"]
    limit = _limit(request)
    page = await services.registry.referrers(
        repo, name.image, digest, artifact_type, limit, _after(request)
    )
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    if page.next_after is not None:
        query: dict[str, str | int] = {"artifactType": artifact_type} if artifact_type else {}
        if limit is not None:
            query["n"] = limit
        query["after"] = page.next_after
        path = f"/v2/{name.display}/referrers/{digest}"
        headers["Link"] = f'<{path}?{urlencode(query)}>; rel="next"'
    return _json(page.index, headers=headers, media_type=OCI_INDEX)


async def not_found(request: Request) -> Response:
    raise Unsupported(f"no registry endpoint at {request.url.path}", status=404)


def error_response(exc: RegistryError) -> Response:
    return JSONResponse(with_request_id(exc.body()), exc.status, exc.headers)


NAME = "/v2/{name:path}"
# Routes are tried in order: the pulls that dominate traffic come first.
routes = [
    Route(f"{NAME}/blobs/{{digest}}", get_blob, methods=["GET", "HEAD"]),
    Route(f"{NAME}/manifests/{{reference}}", get_manifest, methods=["GET", "HEAD"]),
    Route("/v2/", base, methods=["GET"]),
    Route("/v2/_catalog", catalog, methods=["GET"]),
    Route(f"{NAME}/tags/list", list_tags, methods=["GET"]),
    Route(f"{NAME}/manifests/{{reference}}", put_manifest, methods=["PUT"]),
    Route(f"{NAME}/manifests/{{reference}}", delete_manifest, methods=["DELETE"]),
    Route(f"{NAME}/blobs/uploads/", start_upload, methods=["POST"]),
    Route(f"{NAME}/blobs/uploads", start_upload, methods=["POST"]),
    Route(f"{NAME}/blobs/uploads/{{upload_id}}", upload_status, methods=["GET"]),
    Route(f"{NAME}/blobs/uploads/{{upload_id}}", patch_upload, methods=["PATCH"]),
    Route(f"{NAME}/blobs/uploads/{{upload_id}}", complete_upload, methods=["PUT"]),
    Route(f"{NAME}/blobs/uploads/{{upload_id}}", cancel_upload, methods=["DELETE"]),
    Route(f"{NAME}/blobs/{{digest}}", delete_blob, methods=["DELETE"]),
    Route(f"{NAME}/referrers/{{digest}}", referrers, methods=["GET"]),
    Route("/v2/{path:path}", not_found, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
]
