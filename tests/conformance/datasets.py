"""The content kinds upstream's redesigned runner generates (testdata.go) and the round trip
each makes (run.go)."""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from tests.conformance.blob_pushes import (
    PUSH_MODES,
)
from tests.conformance.checks import (
    ACCEPT_ANY_MANIFEST,
    check_blob_get,
    check_blob_head,
    check_digest_header,
    check_error,
    check_manifest_get,
    check_manifest_head,
    delete_blob_checked,
    delete_manifest_checked,
    filters_applied,
    listed,
    random_text,
    referrers,
    same_descriptor,
)
from tests.oci import (
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_LAYER_NONDIST,
    OCI_LAYER_NONDIST_GZIP,
    OCI_MANIFEST,
    OCTET_STREAM,
    Blob,
    assert_status,
    b64,
    describe,
    diff_id,
    digest_of,
    image_config,
    image_index,
    image_manifest,
    layer,
    location,
    manifest_path,
    random_blob,
    referrer_descriptor,
    tags_path,
)

if TYPE_CHECKING:
    pass


EXAMPLE_TYPE_1 = "application/vnd.example.oci.conformance.v1"
EXAMPLE_TYPE_2 = "application/vnd.example.oci.conformance.v2"
TWO_PLATFORMS = [("linux", "amd64"), ("linux", "arm64")]
HELLO = {"org.opencontainers.conformance": "hello conformance test"}


@dataclass
class Dataset:
    """Content to push, and what the registry should then answer: upstream `testData`.

    Blobs and manifests are keyed by digest; `order` is the manifest push order (children
    first); `referrers` maps a subject digest to the descriptors its referrers list must hold;
    `corrupt` holds manifests pushed with bytes that do not match their digest."""

    algorithm: str = "sha256"
    embed_data: bool = False
    extra_fields: bool = False
    blobs: dict[str, Blob] = field(default_factory=dict)
    manifests: dict[str, Blob] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    referrers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    corrupt: dict[str, bytes] = field(default_factory=dict)

    def describe(self, blob: Blob, **fields: Any) -> dict[str, Any]:
        if self.embed_data:
            fields["data"] = b64(blob.data)
        return blob.descriptor(**fields)

    def custom(self) -> dict[str, str] | None:
        """A random extra top-level member, registries must keep unknown fields."""
        return {f"org.{random_text(12)}": random_text(16)} if self.extra_fields else None

    def add(self, blob: Blob) -> Blob:
        self.blobs[blob.digest] = blob
        return blob

    def layer(self, number: int, compressed: bool = True) -> Blob:
        text = f"Berth conformance file {number}.\nToday's lucky number is {secrets.randbits(62)}\n"
        files = {f"./conformance-{number}.txt": text.encode()}
        return self.add(layer(files, compressed=compressed, algorithm=self.algorithm))

    def config(self, platform: tuple[str, str], diff_ids: list[str]) -> Blob:
        os_name, architecture = platform
        return self.add(
            image_config(
                architecture=architecture,
                os_name=os_name,
                diff_ids=diff_ids,
                author="Berth conformance test",
                extra=self.custom(),
                algorithm=self.algorithm,
            )
        )

    def _record(self, manifest: Blob, subject: Mapping[str, Any] | None, tag: str | None) -> None:
        self.manifests[manifest.digest] = manifest
        self.order.append(manifest.digest)
        if subject is not None:
            goal = referrer_descriptor(manifest)
            self.referrers.setdefault(subject["digest"], []).append(goal)
        if tag is not None:
            self.tags[tag] = manifest.digest

    @staticmethod
    def _annotations(annotations: Mapping[str, str] | None, unique: bool) -> dict[str, str] | None:
        merged = dict(annotations or {})
        if unique:
            merged[f"org.example.{random_text(12)}"] = random_text(16)
        return merged or None

    def manifest(
        self,
        config: Mapping[str, Any],
        layers: list[Mapping[str, Any]],
        *,
        artifact_type: str | None = None,
        subject: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
        unique_annotation: bool = False,
        tag: str | None = None,
    ) -> Blob:
        manifest = image_manifest(
            config,
            layers,
            artifact_type=artifact_type,
            subject=subject,
            annotations=self._annotations(annotations, unique_annotation),
            extra=self.custom(),
            algorithm=self.algorithm,
        )
        self._record(manifest, subject, tag)
        return manifest

    def manifest_full(
        self,
        *,
        layer_count: int = 2,
        platform: tuple[str, str] = ("linux", "amd64"),
        compressed: bool = True,
        layer_media_type: str | None = None,
        layer_bytes: bytes | None = None,
        config_media_type: str | None = None,
        config_bytes: bytes | None = None,
        **options: Any,
    ) -> Blob:
        """An image (or artifact) with its config and layers, all added to the data set."""
        layers: list[Blob] = []
        diff_ids: list[str] = []
        for number in range(layer_count):
            if layer_media_type is None or layer_media_type.startswith(
                "application/vnd.oci.image.layer.v1."
            ):
                item = self.layer(number, compressed)
                diff_ids.append(diff_id(item))
            elif layer_bytes is not None:
                item = self.add(Blob(layer_bytes, layer_media_type, self.algorithm))
                diff_ids.append(item.digest)
            else:
                item = self.add(random_blob(2048, layer_media_type, self.algorithm))
                diff_ids.append(item.digest)
            layers.append(item)
        if config_media_type in (None, OCI_CONFIG):
            config = self.config(platform, diff_ids)
        else:
            assert config_media_type is not None and config_bytes is not None
            config = self.add(Blob(config_bytes, config_media_type, self.algorithm))
        return self.manifest(
            self.describe(config), [self.describe(item) for item in layers], **options
        )

    def index(
        self,
        children: Sequence[tuple[Blob, tuple[str, str] | None]],
        *,
        artifact_type: str | None = None,
        subject: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
        unique_annotation: bool = False,
        tag: str | None = None,
    ) -> Blob:
        entries = []
        for child, platform in children:
            extra = (
                {"platform": {"architecture": platform[1], "os": platform[0]}} if platform else {}
            )
            entries.append(self.describe(child, **extra))
        index = image_index(
            entries,
            artifact_type=artifact_type,
            subject=subject,
            annotations=self._annotations(annotations, unique_annotation),
            extra=self.custom(),
            algorithm=self.algorithm,
        )
        self._record(index, subject, tag)
        return index

    def index_full(
        self,
        platforms: list[tuple[str, str]] = TWO_PLATFORMS,
        *,
        tag: str | None = None,
        **options: Any,
    ) -> Blob:
        """An index over one image per platform; manifest options (artifactType, subject,
        annotations) apply to the images and the index alike, as upstream's do."""
        index_options = {
            key: options[key]
            for key in ("artifact_type", "subject", "annotations", "unique_annotation")
            if key in options
        }
        children = [(self.manifest_full(platform=p, **options), p) for p in platforms]
        return self.index(children, tag=tag, **index_options)


def _artifact(**options: Any) -> dict[str, Any]:
    """Options of an artifact: the `{}` config and one layer of EXAMPLE_TYPE_1."""
    base = {
        "artifact_type": EXAMPLE_TYPE_1,
        "config_media_type": OCI_EMPTY,
        "config_bytes": EMPTY_JSON,
        "layer_count": 1,
        "layer_media_type": EXAMPLE_TYPE_1,
    }
    base.update(options)
    return base


def _with_subject(data: Dataset) -> None:
    goal = data.describe(data.manifest_full(tag="image"))
    data.manifest_full(subject=goal)
    data.manifest_full(
        **_artifact(subject=goal, annotations=HELLO, unique_annotation=True, tag="tagged-artifact1")
    )
    data.manifest_full(
        **_artifact(
            artifact_type=EXAMPLE_TYPE_2,
            layer_media_type=OCTET_STREAM,
            subject=goal,
            annotations=HELLO,
            unique_annotation=True,
            tag="tagged-artifact2",
        )
    )


def _index_with_subject(data: Dataset) -> None:
    subject = data.index_full(tag="index")
    data.index_full(
        **_artifact(
            subject=data.describe(subject),
            annotations=HELLO,
            unique_annotation=True,
        ),
        tag="tagged-artifact",
    )


def _missing_subject(data: Dataset) -> None:
    subject = {"mediaType": OCI_MANIFEST, "size": 123, "digest": digest_of(b"missing content")}
    data.manifest_full(
        **_artifact(
            subject=subject, annotations=HELLO, unique_annotation=True, tag="tagged-artifact"
        )
    )


def _nested_index(data: Dataset) -> None:
    inner = [data.index_full(), data.index_full()]
    data.index([(item, None) for item in inner], tag="index-of-index")


def _nondistributable(data: Dataset) -> None:
    """Two foreign layers (never pushed, with URLs) and one normal layer."""

    def foreign(media_type: str, size: int) -> dict[str, Any]:
        digest = digest_of(os.urandom(256))
        url = f"https://store.example.com/blobs/sha256/{digest.split(':')[1]}"
        return {"mediaType": media_type, "digest": digest, "size": size, "urls": [url]}

    layers = [foreign(OCI_LAYER_NONDIST_GZIP, 123456), foreign(OCI_LAYER_NONDIST, 12345)]
    normal = data.layer(1)
    diff_ids = [digest_of(os.urandom(256)), layers[1]["digest"], diff_id(normal)]
    config = data.config(("linux", "amd64"), diff_ids)
    data.manifest(
        data.describe(config), [*layers, data.describe(normal)], tag="non-distributable-image"
    )


def _bad_digest(data: Dataset) -> None:
    manifest = data.manifest_full()
    data.corrupt[manifest.digest] = manifest.data + b"  "


def _large_manifest(data: Dataset) -> None:
    annotations = {f"large-annotation-{n}": "A" * 10000 for n in range(390)}
    data.manifest_full(tag="large-manifest", annotations=annotations)


DATASETS: dict[str, Callable[[Dataset], Any]] = {
    "image": lambda d: d.manifest_full(tag="image"),
    "image-uncompressed": lambda d: d.manifest_full(tag="image-uncompressed", compressed=False),
    "large-manifest": _large_manifest,
    "index": lambda d: d.index_full(tag="index"),
    "nested-index": _nested_index,
    "empty-index": lambda d: d.index_full([], tag="index"),
    "artifact": lambda d: d.manifest_full(**_artifact(tag="artifact")),
    "artifact-index": lambda d: d.index_full(**_artifact(), tag="artifact-index"),
    "artifact-without-layers": lambda d: d.manifest_full(
        **_artifact(
            layer_bytes=EMPTY_JSON, layer_media_type=OCI_EMPTY, tag="artifact-without-layers"
        )
    ),
    "artifacts-with-subject": _with_subject,
    "index-with-subject": _index_with_subject,
    "missing-subject": _missing_subject,
    "data-field": lambda d: d.manifest_full(tag="data-field"),
    "non-distributable-layers": _nondistributable,
    "custom-fields": lambda d: d.index_full(tag="custom-fields"),
    "no-layers": lambda d: d.manifest_full(tag="no-layers", layer_count=0),
    "sha512": lambda d: d.index_full(),
    "bad-digest-image": _bad_digest,
}


def make_dataset(kind: str) -> Dataset:
    data = Dataset(
        algorithm="sha512" if kind == "sha512" else "sha256",
        embed_data=kind == "data-field",
        extra_fields=kind == "custom-fields",
    )
    DATASETS[kind](data)
    return data


def check_manifest_put(
    client: httpx.Client, name: str, reference: str, manifest: Blob, body: bytes | None = None
) -> None:
    """Upstream `ManifestPut`: 201 (400 for a body that does not match the digest); the
    subject's digest in OCI-Subject; the Location serves the exact bytes pushed."""
    response = client.put(
        manifest_path(name, reference),
        content=manifest.data if body is None else body,
        headers={"Content-Type": manifest.media_type},
    )
    if body is not None:
        assert_status(response, 400)
        check_error(response, "DIGEST_INVALID", "MANIFEST_INVALID")
        return
    assert_status(response, 201)
    subject = json.loads(manifest.data).get("subject")
    if subject:
        assert response.headers.get("OCI-Subject") == subject["digest"], describe(response)
    check_digest_header(response, manifest.digest)
    served = client.get(location(response), headers=ACCEPT_ANY_MANIFEST)
    assert_status(served, 200)
    assert served.content == manifest.data, describe(served)
    assert served.headers.get("Content-Type") == manifest.media_type, describe(served)
    assert served.headers.get("Content-Length") == str(manifest.size), describe(served)


def check_tag_listing(client: httpx.Client, name: str, tags: Mapping[str, str]) -> None:
    """Upstream `TestList`: every tag is listed (or the list is a 404 when none is expected),
    and `last` set to the middle tag lists exactly the tags after it."""
    response = client.get(tags_path(name))
    assert_status(response, 200, 404)
    listed_tags: list[str] = (
        (response.json().get("tags") or []) if response.status_code == 200 else []
    )
    missing = set(tags) - set(listed_tags)
    assert not missing, f"tags missing from the list: {missing}"
    if len(listed_tags) >= 2:
        ordered = sorted(listed_tags)
        middle = len(ordered) // 2
        last = ordered[middle - 1]
        rest = client.get(tags_path(name), params={"last": last})
        assert_status(rest, 200)
        after = set(rest.json().get("tags") or [])
        assert not after & set(ordered[:middle]), f"tags up to {last!r} listed: {after}"
        assert set(ordered[middle:]) <= after, f"tags after {last!r} missing: {after}"


def check_referrers(
    client: httpx.Client, name: str, subject: str, goals: list[dict[str, Any]]
) -> None:
    """Upstream `TestReferrers`: every expected referrer is listed with the right descriptor;
    filtered by each artifactType, the filter is announced in OCI-Filters-Applied (a warning
    if not: unsupported) and only that type is returned."""
    found = listed(referrers(client, name, subject))
    for goal in goals:
        assert any(same_descriptor(item, goal) for item in found), (goal, found)
    for artifact_type in {goal.get("artifactType") for goal in goals} - {None}:
        assert artifact_type is not None
        response = referrers(client, name, subject, artifactType=artifact_type)
        applied = filters_applied(response)
        if not applied:
            warnings.warn("referrers: no OCI-Filters-Applied for artifactType", stacklevel=1)
        found = listed(response)
        for goal in goals:
            if not applied or goal.get("artifactType") == artifact_type:
                assert any(same_descriptor(item, goal) for item in found), (goal, found)
        if applied:
            wrong = [item for item in found if item.get("artifactType") != artifact_type]
            assert not wrong, f"filter {artifact_type} returned {wrong}"


def run_dataset(client: httpx.Client, name: str, data: Dataset) -> None:
    """Push (blobs, manifests by digest, then tags), list, HEAD, pull, referrers, delete."""
    for number, blob in enumerate(data.blobs.values()):
        PUSH_MODES[number % len(PUSH_MODES)](client, name, blob.data, blob.digest)
    for digest in data.order:
        check_manifest_put(client, name, digest, data.manifests[digest], data.corrupt.get(digest))
    for tag, digest in data.tags.items():
        check_manifest_put(client, name, tag, data.manifests[digest])

    check_tag_listing(client, name, data.tags)

    good = [digest for digest in data.order if digest not in data.corrupt]
    for tag, digest in data.tags.items():
        check_manifest_head(client, name, tag, data.manifests[digest])
        check_manifest_get(client, name, tag, data.manifests[digest])
    for digest in good:
        check_manifest_head(client, name, digest, data.manifests[digest])
        check_manifest_get(client, name, digest, data.manifests[digest])
    for blob in data.blobs.values():
        check_blob_head(client, name, blob)
        check_blob_get(client, name, blob)

    for subject, goals in data.referrers.items():
        check_referrers(client, name, subject, goals)

    for tag in data.tags:
        delete_manifest_checked(client, name, tag)
    for digest in reversed(data.order):
        delete_manifest_checked(client, name, digest)
    for digest in data.blobs:
        delete_blob_checked(client, name, digest)
