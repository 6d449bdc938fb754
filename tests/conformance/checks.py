"""What the conformance workflows share: upstream's checks, the Ginkgo suite's data
(setup.go) and the referrers checks."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from tests.oci import (
    EMPTY_JSON,
    LEGACY_ERROR_CODES,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    SPEC_ERROR_CODES,
    Blob,
    assert_status,
    b64,
    blob_path,
    describe,
    digest_of,
    error_codes,
    image_config,
    image_index,
    image_manifest,
    layer,
    manifest_path,
    push_blob,
    push_manifest,
    random_blob,
    referrers_path,
)

if TYPE_CHECKING:
    from tests.conftest import Repo

# Both manifest types, as upstream's redesigned client asks for them.
ACCEPT_ANY_MANIFEST = [("Accept", OCI_INDEX), ("Accept", OCI_MANIFEST)]
ACCEPT_IMAGE = {"Accept": OCI_MANIFEST}
# A digest no test pushes (upstream: `dummyDigest`).
DUMMY_DIGEST = digest_of(b"hello world")
# An invalid reference (a tag cannot start with "."); upstream expects 404 for it.
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
# Upstream's smallest chunk for multi-chunk uploads (config.go `chunkMin`).
CHUNK_MIN = 1024


def random_text(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


# --- checks shared by the workflows ------------------------------------------------------------


def check_digest_header(response: httpx.Response, digest: str) -> None:
    """Upstream: a Docker-Content-Digest header is optional, but when present must be right."""
    value = response.headers.get("Docker-Content-Digest")
    if value:
        assert value == digest, f"Docker-Content-Digest {value!r} != {digest}: {describe(response)}"


def check_error(response: httpx.Response, *expected: str) -> None:
    """A 4xx body in the spec's JSON error format whose codes are all from the spec's table;
    with `expected`, one of them must be among the codes."""
    codes = error_codes(response)
    unknown = set(codes) - SPEC_ERROR_CODES - LEGACY_ERROR_CODES
    assert not unknown, f"codes outside the spec's table {unknown}: {describe(response)}"
    if expected:
        assert set(codes) & set(expected), f"expected a code in {expected}: {describe(response)}"


def check_blob_head(client: httpx.Client, name: str, blob: Blob) -> None:
    response = client.head(blob_path(name, blob.digest))
    assert_status(response, 200)
    assert response.headers.get("Content-Length") == str(blob.size), describe(response)
    check_digest_header(response, blob.digest)


def check_blob_get(client: httpx.Client, name: str, blob: Blob) -> None:
    response = client.get(blob_path(name, blob.digest))
    assert_status(response, 200)
    assert response.content == blob.data, f"wrong blob content: {describe(response)}"
    assert response.headers.get("Content-Length") == str(blob.size), describe(response)
    check_digest_header(response, blob.digest)


def check_manifest_get(
    client: httpx.Client, name: str, reference: str, manifest: Blob, accept: Any = None
) -> None:
    """GET a manifest: 200, the exact bytes pushed, their media type and length."""
    response = client.get(manifest_path(name, reference), headers=accept or ACCEPT_ANY_MANIFEST)
    assert_status(response, 200)
    assert response.content == manifest.data, f"manifest bytes changed: {describe(response)}"
    assert response.headers.get("Content-Type") == manifest.media_type, describe(response)
    assert response.headers.get("Content-Length") == str(manifest.size), describe(response)
    check_digest_header(response, manifest.digest)


def check_manifest_head(
    client: httpx.Client, name: str, reference: str, manifest: Blob, accept: Any = None
) -> None:
    response = client.head(manifest_path(name, reference), headers=accept or ACCEPT_ANY_MANIFEST)
    assert_status(response, 200)
    assert response.headers.get("Content-Type") == manifest.media_type, describe(response)
    assert response.headers.get("Content-Length") == str(manifest.size), describe(response)
    check_digest_header(response, manifest.digest)


def verify_location(client: httpx.Client, url: str, data: bytes) -> None:
    """Upstream `BlobVerifyLocation`: the Location of a finished push serves the blob."""
    response = client.get(url)
    assert_status(response, 200)
    assert response.content == data, f"Location does not serve the blob: {describe(response)}"


def delete_blob_checked(client: httpx.Client, name: str, digest: str) -> int:
    """Upstream `TestDeleteBlob`: 202, 404 or 405 (unsupported); after a 202 or 404 a HEAD must
    find nothing (deletes are immediate)."""
    response = client.delete(blob_path(name, digest))
    assert_status(response, 202, 404, 405)
    if response.status_code != 405:
        assert_status(client.head(blob_path(name, digest)), 404)
    return response.status_code


def delete_manifest_checked(client: httpx.Client, name: str, reference: str) -> int:
    """Upstream `TestDeleteManifest`/`TestDeleteTag`: 202, 404, or 400/405 (unsupported);
    after a 202 or 404 a HEAD of the reference must be 404."""
    response = client.delete(manifest_path(name, reference))
    assert_status(response, 202, 404, 400, 405)
    if response.status_code in (202, 404):
        assert_status(client.head(manifest_path(name, reference), headers=ACCEPT_ANY_MANIFEST), 404)
    return response.status_code


def assert_teardown_manifest_delete(response: httpx.Response, *, allow_404: bool = False) -> None:
    """Ginkgo teardown: manifests delete with a 2xx, or 405 where deletes are disabled."""
    ok = 200 <= response.status_code < 300 or response.status_code == 405
    ok = ok or (allow_404 and response.status_code == 404)
    assert ok, describe(response)


def assert_teardown_blob_delete(response: httpx.Response) -> None:
    """Ginkgo teardown: blobs delete with a 2xx, 404 or 405."""
    assert 200 <= response.status_code < 300 or response.status_code in (404, 405), describe(
        response
    )


# --- the Ginkgo suite's data (setup.go) ---------------------------------------------------------

ANNOTATION = "org.opencontainers.conformance.test"
ARTIFACT_TYPE_A = "application/vnd.berth.conformance.spread"
ARTIFACT_TYPE_B = "application/vnd.berth.conformance.jam"
ARTIFACT_TYPE_INDEX = "application/vnd.berth.conformance.picnic"
# The same layer in every workflow, as upstream pushes one fixed tarball everywhere.
FIXED_LAYER = layer(
    {"conformance.txt": b"Berth conformance: this layer is the same in every test.\n"}
)


def classic_descriptor(blob: Blob, *, embed: bool = False, unspecified: bytes | None = None) -> Any:
    """A descriptor as the Ginkgo suite writes them: always with a `newUnspecifiedField` member
    the image spec does not define (null unless given), and optionally the content in `data`."""
    fields: dict[str, Any] = {}
    if embed:
        fields["data"] = b64(blob.data)
    fields["newUnspecifiedField"] = None if unspecified is None else b64(unspecified)
    return blob.descriptor(**fields)


def classic_config() -> Blob:
    """An image config made unique by a random author (upstream: one per workflow)."""
    alphabet = string.ascii_letters + string.digits + "-"
    author = "".join(secrets.choice(alphabet) for _ in range(16))
    return image_config(author=author, indent="\t")


def classic_manifest(config: Blob, layers: list[Blob], *, declare_media_type: bool = True) -> Blob:
    return image_manifest(
        classic_descriptor(config, embed=True, unspecified=b"hello world"),
        [classic_descriptor(item) for item in layers],
        declare_media_type=declare_media_type,
        indent="\t",
    )


@dataclass(frozen=True)
class Chunked:
    """A blob cut into two chunks, the first one byte longer (upstream `setupChunkedBlob`)."""

    blob: Blob

    @property
    def cut(self) -> int:
        return self.blob.size // 2 + 1

    @property
    def first(self) -> bytes:
        return self.blob.data[: self.cut]

    @property
    def second(self) -> bytes:
        return self.blob.data[self.cut :]

    @property
    def first_range(self) -> str:
        return f"0-{self.cut - 1}"

    @property
    def second_range(self) -> str:
        return f"{self.cut}-{self.blob.size - 1}"

    def fitted(self, started: httpx.Response) -> Chunked:
        """Regrow the blob when the registry's OCI-Chunk-Min-Length exceeds the first chunk."""
        minimum = started.headers.get("OCI-Chunk-Min-Length")
        if minimum and int(minimum) > len(self.first):
            return Chunked(random_blob(int(minimum) * 2 - 2))
        return self


@dataclass(frozen=True)
class Classic:
    """The Ginkgo suite's content (setup.go `init`): configs[i]/manifests[i] for workflow i,
    blobs for the push tests, and referrers of manifests[4] (and one of manifests[3], which is
    never pushed in the discovery workflow)."""

    configs: list[Blob]
    manifests: list[Blob]
    empty_layer_manifest: Blob
    blob_a: Blob
    chunked: Chunked
    empty_json: Blob
    ref_blob_a: Blob
    ref_blob_b: Blob
    refs_a_config: Blob
    refs_b_config: Blob
    refs_a_layer: Blob
    refs_b_layer: Blob
    refs_c_layer: Blob
    refs_index: Blob

    @property
    def layer(self) -> Blob:
        return FIXED_LAYER

    @property
    def annotated_referrers(self) -> dict[str, str]:
        """Digest -> annotation value of each referrer of manifests[4]."""
        referrers = (
            self.refs_a_config,
            self.refs_b_config,
            self.refs_a_layer,
            self.refs_b_layer,
            self.refs_index,
        )
        return {item.digest: json.loads(item.data)["annotations"][ANNOTATION] for item in referrers}


def classic_data() -> Classic:
    configs = [classic_config() for _ in range(5)]
    manifests = [classic_manifest(config, [FIXED_LAYER]) for config in configs]
    empty_json = Blob(EMPTY_JSON, OCI_EMPTY)
    ref_blob_a = Blob(b"Berth test artifact A: a spread for the conformance toast", ARTIFACT_TYPE_A)
    ref_blob_b = Blob(b"Berth test artifact B: jam for the conformance scone", ARTIFACT_TYPE_B)
    subject = classic_descriptor(manifests[4])
    missing_subject = classic_descriptor(manifests[3])

    def config_artifact(content: Blob, note: str) -> Blob:
        """An artifact whose type is its config's media type."""
        return image_manifest(
            classic_descriptor(content),
            [classic_descriptor(empty_json)],
            subject=subject,
            annotations={ANNOTATION: note},
            indent="\t",
        )

    def layer_artifact(content: Blob, note: str | None, on: Any = subject) -> Blob:
        """An artifact with an `artifactType`, the empty config and the content as its layer."""
        return image_manifest(
            classic_descriptor(empty_json),
            [classic_descriptor(content)],
            artifact_type=content.media_type,
            subject=on,
            annotations={ANNOTATION: note} if note else None,
            indent="\t",
        )

    refs_a_config = config_artifact(ref_blob_a, "test config a")
    refs_a_layer = layer_artifact(ref_blob_a, "test layer a")
    refs_index = image_index(
        [classic_descriptor(refs_a_config), classic_descriptor(refs_a_layer)],
        artifact_type=ARTIFACT_TYPE_INDEX,
        subject=subject,
        annotations={ANNOTATION: "test index"},
        indent="\t",
    )
    return Classic(
        configs=configs,
        manifests=manifests,
        empty_layer_manifest=classic_manifest(configs[1], [], declare_media_type=False),
        blob_a=random_blob(42),
        chunked=Chunked(random_blob(42)),
        empty_json=empty_json,
        ref_blob_a=ref_blob_a,
        ref_blob_b=ref_blob_b,
        refs_a_config=refs_a_config,
        refs_b_config=config_artifact(ref_blob_b, "test config b"),
        refs_a_layer=refs_a_layer,
        refs_b_layer=layer_artifact(ref_blob_b, "test layer b"),
        refs_c_layer=layer_artifact(ref_blob_b, None, on=missing_subject),
        refs_index=refs_index,
    )


def populate(repo: Repo, *blobs: Blob) -> None:
    """Upstream "Populate registry with test blob": POST, then PUT with the digest; 2xx."""
    for blob in blobs:
        push_blob(repo.client, repo.name, blob)


def populate_manifest(repo: Repo, reference: str, manifest: Blob) -> httpx.Response:
    return push_manifest(repo.client, repo.name, reference, manifest)


PULL_TAG = "tagtest0"


def referrers(client: httpx.Client, name: str, digest: str, **params: str) -> httpx.Response:
    """GET the referrers of `digest`: 200, an OCI index (Content-Type, mediaType and
    schemaVersion)."""
    response = client.get(referrers_path(name, digest), params=params)
    assert_status(response, 200)
    assert response.headers.get("Content-Type") == OCI_INDEX, describe(response)
    index = response.json()
    assert index.get("mediaType") == OCI_INDEX, describe(response)
    assert index.get("schemaVersion") == 2, describe(response)
    assert isinstance(index.get("manifests"), list), describe(response)
    return response


def listed(response: httpx.Response) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = response.json()["manifests"]
    return manifests


def same_descriptor(found: Mapping[str, Any], goal: Mapping[str, Any]) -> bool:
    """Upstream's referrer match: digest, media type, size, artifactType (absent means empty),
    and at least the expected annotations."""
    annotations = found.get("annotations") or {}
    return (
        found.get("digest") == goal["digest"]
        and found.get("mediaType") == goal["mediaType"]
        and found.get("size") == goal["size"]
        and (found.get("artifactType") or "") == (goal.get("artifactType") or "")
        and all(annotations.get(k) == v for k, v in (goal.get("annotations") or {}).items())
    )


def filters_applied(response: httpx.Response) -> bool:
    header = response.headers.get("OCI-Filters-Applied", "")
    return "artifactType" in (item.strip() for item in header.split(","))
