"""Manifest parsing: media type, the blobs and child manifests a manifest references, subject."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from berth.domain.descriptions import lone_surrogate
from berth.domain.digests import parse_digest
from berth.domain.errors import DigestInvalid, ManifestInvalid, SizeInvalid

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
SCHEMA1_REFUSED = "Docker schema 1 manifests are not supported; push schema 2 or OCI"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
OCI_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"

INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST, OCI_ARTIFACT_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES
# Layers that live elsewhere by design (Windows base layers); the registry does not hold them.
FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# A media type (RFC 6838, 4.2): a type and a subtype of at most 127 characters each. A pushed
# manifest's artifactType must be one (the image spec says so), and no media type it names may
# be longer: both are stored and the referrers API lists them, a thousand to a page, where
# artifact types of 4 MB each made answers of gigabytes.
MAX_MEDIA_TYPE = 255
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(f"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}")
ARTIFACT_TYPE_RULE = (
    "artifactType must be a media type (RFC 6838): TYPE/SUBTYPE, each up to 127 letters, "
    "digits and !#$&^_.+- (starting with a letter or digit), as application/vnd.example+json"
)
# Indexes in a chain (an index listing an index listing ...), the top one counted: pushes
# deeper are refused, and scans and image listings follow this many. Real images nest one
# (platforms) or two (an index of multi-platform images).
MAX_INDEX_DEPTH = 8


def manifest_too_large() -> SizeInvalid:
    return SizeInvalid(
        f"manifest is larger than the {MAX_MANIFEST_BYTES >> 20} MiB limit", status=413
    )


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()  # where a client fetches a non-distributable layer

    @property
    def is_foreign(self) -> bool:
        return self.media_type in FOREIGN_LAYER_TYPES


@dataclass(slots=True)
class ParsedManifest:
    media_type: str
    blobs: list[Descriptor] = field(default_factory=list)
    children: list[Descriptor] = field(default_factory=list)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    declared_artifact_type: bool = False  # the manifest's own, not its config's media type

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    """A string-to-string map, as the image spec requires (clients built on it, Distribution
    among them, cannot read a manifest with anything else there)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ManifestInvalid(f"{where} must be an object whose values are strings")
    return value or None


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} must be a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}.mediaType must be a non-empty string")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where}.digest must be a string")
    try:
        parse_digest(digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(f"{where}.digest: {exc.message}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    artifact_type = value.get("artifactType")
    if "\x00" in media_type or (isinstance(artifact_type, str) and "\x00" in artifact_type):
        raise ManifestInvalid(f"{where}: media types must not contain NUL characters")
    platform = value.get("platform")
    return Descriptor(
        media_type,
        digest,
        size,
        artifact_type if isinstance(artifact_type, str) else None,
        platform if isinstance(platform, dict) else None,
        _annotations(value.get("annotations"), f"{where}.annotations"),
        _urls(value.get("urls"), f"{where}.urls"),
    )


def _urls(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(url, str) for url in value):
        raise ManifestInvalid(f"{where} must be a list of strings")
    return tuple(value)


def _check_foreign_urls(layer: Descriptor, where: str) -> None:
    """A client fetches a non-distributable layer the registry lacks from its `urls`: one
    that is not http(s) (`file:`, `ftp:`) no client can, or should, fetch."""
    for number, url in enumerate(layer.urls):
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ManifestInvalid(
                f"{where}.urls[{number}] must be an http or https URL, not {url[:200]!r}",
                {"digest": layer.digest, "url": url[:200]},
            )


def _descriptor_list(document: dict[str, Any], key: str, *, required: bool) -> list[Descriptor]:
    value = document.get(key)
    if value is None:
        if required:
            raise ManifestInvalid(f"manifest has no {key!r} list")
        return []
    if not isinstance(value, list):
        raise ManifestInvalid(f"{key!r} must be a list of descriptors")
    return [_descriptor(item, f"{key}[{i}]") for i, item in enumerate(value)]


def _no_json_number(constant: str) -> Any:
    raise ManifestInvalid(
        f"manifest is not valid JSON: {constant} is no JSON number (RFC 8259, section 6)"
    )


def manifest_json(body: bytes) -> Any:
    """A manifest's JSON value, read as clients read it (Go's decoder, in Distribution,
    containerd and docker) and as RFC 8259 has JSON between systems: UTF-8 without a byte order
    mark, no NaN or Infinity, and no lone surrogate (Go reads one as U+FFFD; no database stores
    it). Python's decoder takes each (UTF-16 and UTF-32 by guessing): a manifest clients cannot
    read would be stored. Raise ManifestInvalid saying what is wrong."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise ManifestInvalid("manifest starts with a byte order mark: send the JSON without it")
    # JSON starts with an ASCII character: a NUL byte among the first four (or a byte order
    # mark of theirs) is UTF-16 or UTF-32.
    if b"\x00" in body[:4] or body.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestInvalid(
            "manifest is UTF-16 or UTF-32, not UTF-8: send the JSON as UTF-8 (RFC 8259, "
            "section 8.1), the one encoding clients read"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestInvalid(
            f"manifest is not UTF-8 (byte {exc.start} of the body): send the JSON as UTF-8"
        ) from None
    try:
        document = json.loads(text, parse_constant=_no_json_number)
    except json.JSONDecodeError as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    # Only an escape can make one (UTF-8 holds none): the document is searched only then.
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(document):
        raise ManifestInvalid(
            "manifest holds a lone surrogate, which is no character (half of a UTF-16 pair, "
            "such as \\ud800, escaped alone): clients read it as U+FFFD, and it cannot be stored"
        )
    return document


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _holds_lone_surrogate(document: Any) -> bool:
    """Whether a key or string anywhere in `document` holds a lone surrogate (a pair escaped
    in JSON is decoded as the character it encodes)."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if lone_surrogate(value):
                return True
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def stored_manifest_json(body: bytes) -> Any:
    """A stored manifest's JSON value. Manifests pushed before `manifest_json` refused UTF-16,
    UTF-32, NaN, Infinity and lone surrogates were stored as Python's decoder read them: they
    are read the same way, so they still serve, list and scan as before."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise ManifestInvalid("manifest JSON is nested too deeply") from None


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse a pushed manifest; raise ManifestInvalid with a message a person can act on."""
    document = manifest_json(body)
    parsed = _parsed(document, content_type)
    _check_pushed_shape(document, parsed.media_type)
    return parsed


def _check_pushed_shape(document: dict[str, Any], media_type: str) -> None:
    """ManifestInvalid for a pushed manifest whose body is not the kind its type names, as
    Distribution refuses it. (Pushes only: one stored before is read as it is.)

    A Docker schema 2 manifest or manifest list declares its mediaType in the body (its spec
    requires it): a body without one is an OCI manifest, which a Docker Content-Type alone
    would have served as Docker's. An OCI image manifest holds no `manifests` list and an
    OCI index no `config` or `layers`: a body with both reads as either (CVE-2021-41190)."""
    declared = document.get("mediaType")
    if media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST) and not declared:
        oci = OCI_INDEX if media_type == DOCKER_MANIFEST_LIST else OCI_MANIFEST
        raise ManifestInvalid(
            f"Content-Type is {media_type!r} but the manifest declares no mediaType: a Docker "
            f"schema 2 manifest names its mediaType in the body; push one without it as OCI "
            f"(Content-Type {oci!r})"
        )
    if media_type == OCI_MANIFEST and document.get("manifests") is not None:
        raise ManifestInvalid(
            "an image manifest has no 'manifests' list (an index has): remove it, or push "
            f"an index ({OCI_INDEX!r}) without 'config' and 'layers'"
        )
    if media_type == OCI_INDEX:
        found = [key for key in ("config", "layers") if document.get(key) is not None]
        if found:
            raise ManifestInvalid(
                f"an image index has no {' or '.join(map(repr, found))} (an image manifest "
                f"has): remove it, or push an image manifest ({OCI_MANIFEST!r}) without "
                "'manifests'"
            )


def parse_stored_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse a manifest read from the database (see `stored_manifest_json`)."""
    return _parsed(stored_manifest_json(body), content_type)


def _parsed(document: Any, content_type: str | None) -> ParsedManifest:
    if not isinstance(document, dict):
        raise ManifestInvalid("manifest must be a JSON object")

    declared = document.get("mediaType")
    header = (content_type or "").split(";")[0].strip() or None
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    if declared and header and header in MANIFEST_TYPES and declared != header:
        raise ManifestInvalid(
            f"Content-Type {header!r} does not match the manifest's mediaType {declared!r}"
        )
    # A schema 1 manifest declares no mediaType: its Content-Type names it.
    named = header in MANIFEST_TYPES or header in SCHEMA1_TYPES
    media_type = declared or (header if named else None)
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type in SCHEMA1_TYPES:
        raise ManifestInvalid(SCHEMA1_REFUSED)
    if media_type not in MANIFEST_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {media_type!r}")
    if media_type != OCI_ARTIFACT_MANIFEST and document.get("schemaVersion") != 2:
        if document.get("schemaVersion") == 1:
            raise ManifestInvalid(f"schemaVersion must be 2: {SCHEMA1_REFUSED}")
        raise ManifestInvalid("schemaVersion must be 2")

    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    if artifact_type and "\x00" in artifact_type:
        raise ManifestInvalid("artifactType must not contain NUL characters")
    parsed = ParsedManifest(
        media_type=media_type,
        # An empty artifactType is a missing one (the referrers API falls back as for none).
        artifact_type=artifact_type or None,
        annotations=_annotations(document.get("annotations"), "annotations"),
        declared_artifact_type=bool(artifact_type),
    )
    if "subject" in document and document["subject"] is not None:
        parsed.subject = _descriptor(document["subject"], "subject")

    if media_type in INDEX_TYPES:
        parsed.children = _descriptor_list(document, "manifests", required=True)
    elif media_type == OCI_ARTIFACT_MANIFEST:
        parsed.blobs = _descriptor_list(document, "blobs", required=False)
    else:
        config = _descriptor(document.get("config"), "config")
        layers = _descriptor_list(document, "layers", required=True)
        for number, layer in enumerate(layers):
            if layer.is_foreign:
                _check_foreign_urls(layer, f"layers[{number}]")
        parsed.blobs = [config, *layers]
        if parsed.artifact_type is None and media_type == OCI_MANIFEST:
            # The referrers API reports an image's config media type when it has no artifactType.
            parsed.artifact_type = config.media_type
    return parsed


def check_pushed_types(parsed: ParsedManifest) -> None:
    """ManifestInvalid for a manifest being pushed whose artifactType is not a media type, or
    that names a media type longer than MAX_MEDIA_TYPE. (Checked on push only: a manifest
    stored before is read as it is.)"""
    if parsed.declared_artifact_type and not _MEDIA_TYPE.fullmatch(parsed.artifact_type or ""):
        raise ManifestInvalid(ARTIFACT_TYPE_RULE)
    descriptors = [*parsed.blobs, *parsed.children]
    if parsed.subject is not None:
        descriptors.append(parsed.subject)
    for descriptor in descriptors:
        for media_type in (descriptor.media_type, descriptor.artifact_type or ""):
            if len(media_type) > MAX_MEDIA_TYPE:
                raise ManifestInvalid(
                    f"a media type of {len(media_type):,} characters ({media_type[:40]}...): "
                    f"one is at most {MAX_MEDIA_TYPE} (RFC 6838)"
                )


def stored_blobs(parsed: ParsedManifest) -> list[str]:
    """Digests of blobs the registry must hold for this manifest (foreign layers excluded)."""
    seen: dict[str, None] = {}
    for blob in parsed.blobs:
        if not blob.is_foreign:
            seen.setdefault(blob.digest)
    return list(seen)


def foreign_layers(parsed: ParsedManifest) -> list[Descriptor]:
    """The non-distributable layers of a manifest: the registry may hold them (it then serves
    them like any layer), or the client fetches them from their `urls`."""
    return [blob for blob in parsed.blobs if blob.is_foreign]


# Clients send the same few Accept headers on every pull: parsed once each.
@functools.lru_cache(maxsize=256)
def accepts(accept_header: str | None, media_type: str) -> bool:
    """Whether a client's Accept header admits a manifest of this media type.

    No header, a wildcard, or a non-manifest list (curl's defaults) admits anything: only a
    client that names manifest types and leaves this one out is refused, or one that names
    it (or the wildcard that covers it, the most specific one deciding) with `q=0`, which
    RFC 9110 makes a refusal.
    """
    if not accept_header:
        return True
    offered = _offered_types(accept_header)
    for admitting in (media_type, f"{media_type.partition('/')[0]}/*", "*/*"):
        quality = offered.get(admitting)
        if quality is not None:
            return quality > 0
    return not any(quality > 0 for kind, quality in offered.items() if kind in MANIFEST_TYPES)


# RFC 9110's qvalue.
_QUALITY = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _offered_types(accept_header: str) -> dict[str, float]:
    """The media types an Accept header names, by their quality (1 where it gives none, or
    gives one that is not a qvalue)."""
    offered: dict[str, float] = {}
    for part in accept_header.split(","):
        kind, *parameters = part.split(";")
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q" and _QUALITY.fullmatch(value.strip()):
                quality = float(value)
        offered[kind.strip().lower()] = quality
    return offered
