"""The records `Images` returns: images, tags and history events of a repository, as the
management API serves them (their fields and descriptions are its schema)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from berth.services.records import Record
from berth.services.scanning.results import ScanSummary

# What one image may put in a response, whatever its manifests hold (an index may list
# 18,000 entries in 4 MiB); a count says how many there are beyond.
MAX_LISTED_PLATFORMS = 64  # distinct platforms listed per image
MAX_LISTED_CHILDREN = 256  # platform manifests listed in an image's details
MAX_LISTED_LAYERS = 256  # blobs (config and layers) listed in an image's details
MAX_LISTED_KEPT = 64  # manifests listed that an image's delete leaves


class Referrer(Record):
    digest: str
    media_type: str
    artifact_type: str | None = Field(description="e.g. a signature's or an SBOM's type")
    size: int
    pushed_at: dt.datetime


class ProtectingRule(Record):
    """The immutable tag rule that keeps a tag where it is: the first of the project's rules
    that matches it, the one a refused move or delete names."""

    id: int
    tag_pattern: str
    repository_pattern: str | None = Field(description="null: every repository of the project")


class ProtectedTag(Record):
    tag: str
    protected_by: ProtectingRule


class Image(Record):
    image: str = Field(description="image name inside the repository ('' for the repository)")
    digest: str
    media_type: str
    artifact_type: str | None
    subject: str | None = Field(description="for a referrer: the digest it refers to")
    tags: list[str]
    protected_tags: list[ProtectedTag] = Field(
        description="those of `tags` an immutable tag rule protects, each with the rule: "
        "deleting the image is refused while it has one (as is any change of a tag of a "
        "repository whose `tag_overwrite` is off)"
    )
    child_tags: list[str] = Field(
        description="for an index: the tags on manifests it lists (a platform manifest pushed "
        "under a tag of its own, as `docker manifest create` and podman's manifest push ask; "
        "a nested index and its entries); `children` says which manifest has which"
    )
    size: int = Field(
        description="bytes of the manifest and every blob it needs (an index: with the "
        "manifests it lists, a nested index's included), each counted once"
    )
    platforms: list[str] = Field(
        description="os/architecture[/variant]: of each entry of an index (a nested index's "
        "entries included; not attestations); of a single-platform image, its own (from its "
        "config). Each once, in the index's order; at most "
        f"{MAX_LISTED_PLATFORMS} (`platform_count` says how many there are)"
    )
    platform_count: int = Field(description="distinct platforms, listed or not")
    pushed_at: dt.datetime
    referrer_count: int
    referrers: list[Referrer] = Field(description="signatures, SBOMs, ... that refer to it")
    scan: ScanSummary = Field(
        description="its vulnerability scan: state, findings by severity, whether newer "
        "data was imported since (`GET .../images/{digest}/scan` has the findings)"
    )


class Child(Record):
    digest: str
    media_type: str
    platform: str | None = Field(description="as the index lists it; null for an attestation")
    attestation: bool = Field(
        description="a build attestation (provenance, SBOM) that docker buildx lists in the "
        "index as platform unknown/unknown: not a platform"
    )
    attests: str | None = Field(
        description="for an attestation: the digest of the manifest it describes"
    )
    tags: list[str] = Field(description="the tags on this manifest")
    size: int = Field(description="bytes of it and all it needs (a nested index: its entries)")


class Layer(Record):
    digest: str
    media_type: str
    size: int


class ImageDetail(Image):
    manifest_size: int
    children: list[Child] = Field(
        description="for an index: the manifests it lists (platform manifests, attestations, "
        f"nested indexes), in its order; at most {MAX_LISTED_CHILDREN} (`child_count` says how "
        "many there are)"
    )
    child_count: int = Field(description="manifests an index lists, listed here or not")
    layers: list[Layer] = Field(
        description="for an image manifest: its config and layers, in its order; at most "
        f"{MAX_LISTED_LAYERS} (`layer_count` says how many there are)"
    )
    layer_count: int = Field(description="blobs an image manifest lists, listed here or not")
    parents: list[str] = Field(description="digests of the indexes that list this manifest")


class KeptManifest(Record):
    digest: str
    kind: Literal["platform_manifest", "referrer"] = Field(
        description="a platform manifest an index going lists, or a referrer of a manifest going"
    )
    listed_by: list[str] = Field(description="the stored indexes that stay and list it")
    tags: list[str] = Field(
        description="a platform manifest's own tags, which keep it as an image of its own "
        "(a referrer's tags keep nothing: they go with it)"
    )


class ImageDeletion(Record):
    """What deleting an image through the management API takes with it and what it leaves, by
    the rule the delete follows."""

    image: str
    digest: str
    platform_manifest_count: int = Field(
        description="platform manifests going with it (down nested indexes)"
    )
    referrer_count: int = Field(
        description="referrers (signatures, SBOMs) going with it: its own, those of the "
        "platform manifests going, and theirs"
    )
    kept: list[KeptManifest] = Field(
        description="what it reaches that stays, and why: a platform manifest another stored "
        "index lists or that has a tag of its own, a referrer another stored index lists; at "
        f"most {MAX_LISTED_KEPT} (`kept_count` says how many there are)"
    )
    kept_count: int


class Tag(Record):
    image: str
    tag: str
    digest: str
    updated_at: dt.datetime
    protected_by: ProtectingRule | None = Field(
        description="the immutable tag rule that protects the tag: deleting it (or its image) "
        "and pushing another image under it are refused; null: no rule does (a repository "
        "whose `tag_overwrite` is off fixes every tag all the same)"
    )


class Event(Record):
    id: int
    image: str
    tag: str | None = Field(description="null for events on an image (push, delete)")
    action: Literal["push", "tag", "untag", "move", "delete", "restore"]
    old_digest: str | None
    new_digest: str | None
    actor: str
    at: dt.datetime
    restorable: bool = Field(description="an untag whose tag can be restored now")
