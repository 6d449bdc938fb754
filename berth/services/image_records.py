"""The records `Images` returns: images, tags and history events of a repository, as the
management API serves them (their fields and descriptions are its schema)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from berth.services.records import Record
from berth.services.scanning.scans import ScanSummary


class Referrer(Record):
    digest: str
    media_type: str
    artifact_type: str | None = Field(description="e.g. a signature's or an SBOM's type")
    size: int
    pushed_at: dt.datetime


class Image(Record):
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
    scan: ScanSummary = Field(
        description="its vulnerability scan: state, findings by severity, whether newer "
        "data was imported since (`GET .../images/{digest}/scan` has the findings)"
    )


class Child(Record):
    digest: str
    media_type: str
    platform: str | None
    size: int


class Layer(Record):
    digest: str
    media_type: str
    size: int


class ImageDetail(Image):
    manifest_size: int
    children: list[Child] = Field(description="for an index: its platform manifests")
    layers: list[Layer] = Field(description="for an image manifest: its config and layers")
    parents: list[str] = Field(description="digests of the indexes that list this manifest")


class Tag(Record):
    image: str
    tag: str
    digest: str
    updated_at: dt.datetime


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
