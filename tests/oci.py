"""OCI content builders and small registry-client helpers shared by the tests.

Content: `Blob` is bytes with the media type a descriptor gives them and their digest; the
builders below make image configs, tar layers, image manifests and indexes as `Blob`s, so a
test can push them and point descriptors at them.

Client: thin wrappers over an `httpx.Client` whose base URL is the registry root. They return
the `httpx.Response` and only assert what a client itself relies on (a Location to follow, a
2xx when asked to `check`), so tests stay free to assert the rest.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCTET_STREAM = "application/octet-stream"

# The digest of `{}`, the OCI empty descriptor's content (image-spec, "Guidance for an Empty
# Descriptor").
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

# The `code` values the distribution spec's error table allows, plus the two legacy Docker
# schema 1 codes the spec says clients may still meet.
SPEC_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
    }
)
LEGACY_ERROR_CODES = frozenset({"TAG_INVALID", "MANIFEST_UNVERIFIED"})


# --- content ---------------------------------------------------------------------------------


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def b64(data: bytes) -> str:
    """Base64 as JSON carries bytes (a descriptor's `data` field)."""
    return base64.b64encode(data).decode()


def to_json(document: Any, indent: str | None = None) -> bytes:
    """Serialize like a Go client would: compact, or pretty-printed with `indent`."""
    if indent is None:
        return json.dumps(document, separators=(",", ":")).encode()
    return json.dumps(document, indent=indent).encode()


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes: a layer, a config, or a manifest (then `media_type` is the
    Content-Type to push it with)."""

    data: bytes
    media_type: str = OCTET_STREAM
    algorithm: str = "sha256"
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", digest_of(self.data, self.algorithm))

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **fields: Any) -> dict[str, Any]:
        """An OCI descriptor for this blob; `fields` adds or overrides members (annotations,
        artifactType, platform, data, ...)."""
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        desc.update(fields)
        return desc


def referrer_descriptor(manifest: Blob) -> dict[str, Any]:
    """The descriptor the referrers API lists for a manifest that has a `subject`: its
    artifactType (for an image manifest without one, its config's media type; for an index
    without one, none) and its annotations."""
    document = json.loads(manifest.data)
    desc = manifest.descriptor()
    artifact_type = document.get("artifactType")
    if not artifact_type and manifest.media_type == OCI_MANIFEST:
        artifact_type = document["config"]["mediaType"]
    if artifact_type:
        desc["artifactType"] = artifact_type
    if document.get("annotations"):
        desc["annotations"] = document["annotations"]
    return desc


def random_blob(size: int, media_type: str = OCTET_STREAM, algorithm: str = "sha256") -> Blob:
    return Blob(os.urandom(size), media_type, algorithm)


def tar_archive(files: Mapping[str, bytes]) -> bytes:
    """A reproducible tar archive (fixed mtime, owner and mode) holding `files`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def layer(
    files: Mapping[str, bytes], *, compressed: bool = True, algorithm: str = "sha256"
) -> Blob:
    """An image layer: a tar of `files`, gzipped (reproducibly) unless `compressed` is false."""
    tar = tar_archive(files)
    if compressed:
        return Blob(gzip.compress(tar, mtime=0), OCI_LAYER_GZIP, algorithm)
    return Blob(tar, OCI_LAYER, algorithm)


def diff_id(layer_blob: Blob) -> str:
    """The digest of a layer's uncompressed tar, as an image config's rootfs lists it."""
    tar = (
        gzip.decompress(layer_blob.data)
        if layer_blob.media_type.endswith("+gzip")
        else layer_blob.data
    )
    return digest_of(tar, layer_blob.algorithm)


def image_config(
    *,
    architecture: str = "amd64",
    os_name: str = "linux",
    diff_ids: Sequence[str] = (),
    author: str | None = None,
    extra: Mapping[str, Any] | None = None,
    media_type: str = OCI_CONFIG,
    algorithm: str = "sha256",
    indent: str | None = None,
) -> Blob:
    document: dict[str, Any] = {}
    if author is not None:
        document["author"] = author
    document.update(
        {
            "architecture": architecture,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }
    )
    document.update(extra or {})
    return Blob(to_json(document, indent), media_type, algorithm)


def image_manifest(
    config: Mapping[str, Any],
    layers: Sequence[Mapping[str, Any]],
    *,
    artifact_type: str | None = None,
    subject: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    declare_media_type: bool = True,
    algorithm: str = "sha256",
    indent: str | None = None,
) -> Blob:
    """An OCI image manifest; without `declare_media_type` the document has no `mediaType`
    member (the Content-Type header alone says what it is)."""
    document: dict[str, Any] = {"schemaVersion": 2}
    if declare_media_type:
        document["mediaType"] = OCI_MANIFEST
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document["config"] = dict(config)
    document["layers"] = [dict(item) for item in layers]
    if subject is not None:
        document["subject"] = dict(subject)
    if annotations:
        document["annotations"] = dict(annotations)
    document.update(extra or {})
    return Blob(to_json(document, indent), OCI_MANIFEST, algorithm)


def image_index(
    manifests: Sequence[Mapping[str, Any]],
    *,
    artifact_type: str | None = None,
    subject: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    algorithm: str = "sha256",
    indent: str | None = None,
) -> Blob:
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX}
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document["manifests"] = [dict(item) for item in manifests]
    if subject is not None:
        document["subject"] = dict(subject)
    if annotations:
        document["annotations"] = dict(annotations)
    document.update(extra or {})
    return Blob(to_json(document, indent), OCI_INDEX, algorithm)


def linux_index(*images: tuple[Blob, str]) -> Blob:
    """An index of image manifests, each given with its architecture (os linux)."""
    return image_index(
        [
            image.descriptor(platform={"os": "linux", "architecture": architecture})
            for image, architecture in images
        ]
    )


def buildx_index(built: Blob, provenance: Blob) -> Blob:
    """An index as docker buildx pushes it: the amd64 image, and its provenance as an entry of
    platform unknown/unknown annotated as the image's attestation."""
    return image_index(
        [
            built.descriptor(platform={"os": "linux", "architecture": "amd64"}),
            provenance.descriptor(
                platform={"os": "unknown", "architecture": "unknown"},
                annotations={
                    "vnd.docker.reference.digest": built.digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
            ),
        ]
    )


# --- client ----------------------------------------------------------------------------------


def uploads_path(name: str) -> str:
    return f"/v2/{name}/blobs/uploads/"


def blob_path(name: str, digest: str) -> str:
    return f"/v2/{name}/blobs/{digest}"


def manifest_path(name: str, reference: str) -> str:
    return f"/v2/{name}/manifests/{reference}"


def tags_path(name: str) -> str:
    return f"/v2/{name}/tags/list"


def referrers_path(name: str, digest: str) -> str:
    return f"/v2/{name}/referrers/{digest}"


def describe(response: httpx.Response) -> str:
    """One line for assertion messages: the request, the status and the start of the body."""
    request = response.request
    body = "" if request.method == "HEAD" else response.content[:300].decode(errors="replace")
    return (
        f"{request.method} {request.url.raw_path.decode()} -> {response.status_code} {body}".strip()
    )


def location(response: httpx.Response) -> str:
    """The Location header a client must follow next; fails the test when it is missing."""
    value: str | None = response.headers.get("Location")
    assert value, f"no Location header: {describe(response)}"
    return value


def relative(url: str) -> str:
    """The path and query of a Location that may be absolute or relative."""
    return httpx.URL(url).raw_path.decode()


def path_of(url: str) -> str:
    """Only the path of a Location that may be absolute or relative."""
    return httpx.URL(url).path


def assert_status(response: httpx.Response, *codes: int) -> None:
    assert response.status_code in codes, f"expected one of {codes}: {describe(response)}"


def assert_success(response: httpx.Response) -> None:
    assert 200 <= response.status_code < 300, f"expected 2xx: {describe(response)}"


def error_codes(response: httpx.Response) -> list[str]:
    """The `code`s of a spec error body, after checking the body has the spec's shape:
    {"errors": [{"code": ..., "message": ..., "detail": ...}, ...]}."""
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {describe(response)}") from None
    assert isinstance(body, dict), f"error body is not an object: {describe(response)}"
    errors = body.get("errors")
    assert isinstance(errors, list) and errors, f"no `errors` list: {describe(response)}"
    codes = []
    for error in errors:
        assert isinstance(error, dict), f"error entry is not an object: {describe(response)}"
        code = error.get("code")
        assert isinstance(code, str), f"error without a string code: {describe(response)}"
        assert code and all(c.isupper() or c == "_" for c in code), f"bad code {code!r}"
        message = error.get("message")
        assert message is None or isinstance(message, str), f"message not a string: {message!r}"
        codes.append(code)
    return codes


def start_upload(
    client: httpx.Client, name: str, params: Mapping[str, str] | None = None
) -> httpx.Response:
    """POST /v2/<name>/blobs/uploads/ with an empty body (the chunked-upload form)."""
    return client.post(uploads_path(name), params=params, headers={"Content-Length": "0"})


def put_upload(
    client: httpx.Client,
    url: str,
    digest: str,
    data: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """PUT <upload location>?digest=..., closing an upload (with an optional last chunk)."""
    sent = {"Content-Type": OCTET_STREAM, "Content-Length": str(len(data))}
    sent.update(headers or {})
    return client.put(url, params={"digest": digest}, content=data, headers=sent)


def patch_upload(
    client: httpx.Client, url: str, data: bytes, content_range: str | None = None
) -> httpx.Response:
    """PATCH a chunk; with `content_range` ("start-end", inclusive) it is a chunked upload."""
    headers = {"Content-Type": OCTET_STREAM, "Content-Length": str(len(data))}
    if content_range is not None:
        headers["Content-Range"] = content_range
    return client.patch(url, content=data, headers=headers)


def push_blob(client: httpx.Client, name: str, blob: Blob, *, check: bool = True) -> httpx.Response:
    """Push a blob monolithically, POST then PUT; returns the PUT response (2xx when `check`)."""
    started = client.post(uploads_path(name))
    if check:
        assert_status(started, 202)
    response = put_upload(client, location(started), blob.digest, blob.data)
    if check:
        assert_success(response)
    return response


def push_blobs(client: httpx.Client, name: str, blobs: Iterable[Blob]) -> None:
    for blob in blobs:
        push_blob(client, name, blob)


def push_manifest(
    client: httpx.Client,
    name: str,
    reference: str,
    manifest: Blob,
    *,
    content_type: str | None = None,
    check: bool = True,
) -> httpx.Response:
    """PUT a manifest under a tag or its digest (2xx when `check`)."""
    response = client.put(
        manifest_path(name, reference),
        content=manifest.data,
        headers={"Content-Type": content_type or manifest.media_type},
    )
    if check:
        assert_success(response)
    return response


def tag_list(client: httpx.Client, name: str, **params: str | int) -> list[str]:
    response = client.get(tags_path(name), params=params)
    assert_status(response, 200)
    tags = response.json().get("tags")
    return list(tags or [])


# ---------------------------------------------------------------- quick builders
# For tests that need "some pushed image" rather than particular content.


def push_bytes(client: httpx.Client, name: str, data: bytes) -> str:
    """Push bytes with a single POST (?digest=) and return their digest."""
    digest = digest_of(data)
    response = client.post(uploads_path(name), params={"digest": digest}, content=data)
    assert response.status_code == 201, describe(response)
    return digest


def random_image(client: httpx.Client, name: str, layers: int = 1, **extra: Any) -> bytes:
    """Push a unique config and `layers` random layers; return an image manifest naming them."""
    config = to_json({"architecture": "amd64", "os": "linux", "rand": os.urandom(8).hex()})
    push_bytes(client, name, config)
    layer_blobs = [Blob(os.urandom(1024), OCI_LAYER) for _ in range(layers)]
    for blob in layer_blobs:
        push_bytes(client, name, blob.data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Blob(config, OCI_CONFIG).descriptor(),
        "layers": [blob.descriptor() for blob in layer_blobs],
        **extra,
    }
    return to_json(manifest)


def put_manifest(
    client: httpx.Client, name: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
) -> httpx.Response:
    return client.put(
        manifest_path(name, reference), content=body, headers={"Content-Type": media_type}
    )


def error_code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["code"])


class SlowBody:
    """A request body sent in pieces with pauses, so that requests started together are all
    in flight at once."""

    def __init__(self, data: bytes, pieces: int = 8, pause: float = 0.02) -> None:
        self.data, self.pieces, self.pause = data, pieces, pause

    def __iter__(self) -> Iterator[bytes]:
        size = -(-len(self.data) // self.pieces)
        for start in range(0, len(self.data), size):
            time.sleep(self.pause)
            yield self.data[start : start + size]


def race_patches(
    new_client: Callable[[], httpx.Client], upload: str, offset: int, bodies: Sequence[bytes]
) -> list[httpx.Response]:
    """PATCH each of `bodies` (all one size) to the upload from `offset`, all at once, each
    from a client of its own; the responses in the order of `bodies`."""
    size = len(bodies[0])
    barrier = threading.Barrier(len(bodies))
    responses: list[httpx.Response | BaseException | None] = [None] * len(bodies)

    def send(number: int) -> None:
        try:
            with new_client() as client:
                barrier.wait()
                responses[number] = client.patch(
                    upload,
                    content=SlowBody(bodies[number]),
                    headers={
                        "Content-Type": OCTET_STREAM,
                        "Content-Length": str(size),
                        "Content-Range": f"{offset}-{offset + size - 1}",
                    },
                )
        except BaseException as exc:
            responses[number] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answered = [r for r in responses if isinstance(r, httpx.Response)]
    assert len(answered) == len(bodies), responses
    return answered


def assert_one_patch_taken(responses: Sequence[httpx.Response], held: str) -> int:
    """Of PATCHes raced from one offset, exactly one was taken (202) and every other was
    refused with 416 BLOB_UPLOAD_INVALID naming the range `held` ("0-<end>"); which was taken."""
    statuses = [response.status_code for response in responses]
    taken = [n for n, status in enumerate(statuses) if status == 202]
    assert len(taken) == 1, statuses
    for number, response in enumerate(responses):
        if number != taken[0]:
            assert response.status_code == 416, describe(response)
            assert error_code(response) == "BLOB_UPLOAD_INVALID"
            assert response.headers["Range"] == held
    return taken[0]


# How a blob of RANGED_SIZE bytes answers a Range, the same on every store and through nginx
# (`blob_redirect = "accel"`): the status, and for a 206 the bytes [first, last] it sends.
RANGED_SIZE = 5000
RANGE_ANSWERS: list[tuple[str, int, tuple[int, int] | None]] = [
    ("bytes=100-199", 206, (100, 199)),
    ("Bytes=100-199", 206, (100, 199)),  # a unit is case-insensitive
    ("bytes=-10", 206, (4990, 4999)),
    ("bytes=4990-99999", 206, (4990, 4999)),
    ("bytes=0-1,5-6", 200, None),  # several ranges: the whole blob, no multipart answer
    ("bytes=0-1, 5-6", 200, None),
    ("bytes=0-0,0-0", 200, None),
    ("bytes=6000-,0-1", 206, (0, 1)),  # of several, the one the blob can satisfy
    ("bytes=0-1,6000-7000", 206, (0, 1)),
    ("items=0-1", 200, None),  # another unit: ignored (RFC 9110 14.2)
    ("bytes 0-1", 200, None),
    ("bytes=abc", 416, None),  # no byte range set: refused, as Distribution does
    ("bytes=", 416, None),
    ("bytes=-", 416, None),
    ("bytes=1-2;3", 416, None),
    ("bytes=0-1,", 416, None),
    ("bytes=1-x", 416, None),
    ("bytes=5-2", 416, None),  # inverted (RFC 9110 14.1.1)
    ("bytes=0-1,5-2", 416, None),
    ("bytes=5000-", 416, None),  # past the end
    ("bytes=6000-6100,7000-", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=0-" + "9" * 20, 416, None),  # past 2**63 - 1, as nginx and Distribution refuse
    ("bytes=0-" + "9" * 5000, 416, None),  # more digits than int() takes
    (f"bytes={'9' * 5000}-", 416, None),
    (f"bytes=-{'9' * 5000}", 416, None),
]


def check_range_answer(
    response: httpx.Response, data: bytes, header: str, status: int, part: tuple[int, int] | None
) -> None:
    """That a GET (or HEAD) of the blob `data` with Range `header` got `status`, its headers
    and its body: a 206 of the bytes `part`, a 200 of all of them, or a 416 in the OCI error
    format with the blob's size in its Content-Range."""
    shown = header[:30]
    assert response.status_code == status, (shown, describe(response))
    head = response.request.method == "HEAD"
    if status == 416:
        assert response.headers["Content-Range"] == f"bytes */{len(data)}", shown
        if not head:
            assert response.headers["Content-Type"] == "application/json", shown
            assert error_codes(response) == ["RANGE_NOT_SATISFIABLE"], shown
        return
    sent = data if part is None else data[part[0] : part[1] + 1]
    assert response.headers["Content-Length"] == str(len(sent)), shown
    assert response.content == (b"" if head else sent), shown
    if part is None:
        assert "Content-Range" not in response.headers, shown
    else:
        assert response.headers["Content-Range"] == f"bytes {part[0]}-{part[1]}/{len(data)}"
