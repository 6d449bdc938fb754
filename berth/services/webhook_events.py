"""Webhook events: their types, their CloudEvents 1.0 JSON shape, and the one insert that queues
one. A change writes its event in its own transaction (`enqueue_event`), so an event exists
exactly when the change does; a refusal (which rolls its transaction back) writes its event in a
transaction of its own right after. The delivery job (`webhooks.py`) does the rest, off every
request's path."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import RegistryError
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import utcnow, webhook_events, webhooks

logger = logging.getLogger("berth.webhooks")


def _absent(value: object) -> bool:
    return value is None


def absent_unless_set(description: str) -> Any:
    """A field an event's body carries only when it applies (never as `null`): typed
    `X | SkipJsonSchema[None]`, so the schema shows it as optional and never null, as sent."""
    return Field(None, description=description, exclude_if=_absent)


class GcRunSummary(BaseModel):
    id: int
    state: str = Field(description="succeeded, failed or rolled_back")
    dry_run: bool
    images_deleted: int
    blobs_deleted: int
    bytes_freed: int
    duration_seconds: float


class ScanOutcome(BaseModel):
    status: Literal["done", "no_data", "failed"] = Field(
        description="`no_data`: the vulnerability database was empty, so nothing was checked "
        "(not a clean result; the image is scanned again after the first import)"
    )
    reason: str | SkipJsonSchema[None] = absent_unless_set(
        "failed: why the scan could not finish; no_data: that nothing was checked, and why"
    )
    counts: dict[str, int] | SkipJsonSchema[None] = absent_unless_set(
        "findings by severity: critical, high, medium, low, unknown (absent for no_data)"
    )
    findings: int | SkipJsonSchema[None] = absent_unless_set(
        "how many findings (absent for no_data)"
    )
    packages: int = Field(description="packages found in the image")
    api_path: str = Field(
        description="the scan result with every finding, under the server's address"
    )
    console_path: str = Field(
        description="the console page showing the findings, under the server's address"
    )


class DeletedReferrerData(BaseModel):
    """A referrer deleted with its image."""

    digest: str
    tags: list[str] = Field(
        description="the tags deleted with it, such as cosign's `sha256-<hex>.sig` ([] for none)"
    )


class EventData(BaseModel):
    """What happened. Fields that do not apply to an event type are absent (never null)."""

    model_config = ConfigDict(extra="forbid")

    project: str
    repository: str | SkipJsonSchema[None] = absent_unless_set("repository name in the project")
    image: str | SkipJsonSchema[None] = absent_unless_set(
        "image name inside the repository ('' when it is the repository's own)"
    )
    tag: str | SkipJsonSchema[None] = absent_unless_set("the tag pushed, deleted or restored")
    digest: str | SkipJsonSchema[None] = absent_unless_set("the manifest's digest")
    media_type: str | SkipJsonSchema[None] = absent_unless_set("the manifest's media type")
    size: int | SkipJsonSchema[None] = absent_unless_set("the manifest's size in bytes")
    tags: list[str] | SkipJsonSchema[None] = absent_unless_set(
        "image delete: the tags deleted with it (a platform manifest with a tag of its own "
        "stays; each referrer's are in its `referrers` entry)"
    )
    platform_manifests: list[str] | SkipJsonSchema[None] = absent_unless_set(
        "image delete: the digests of the platform manifests deleted with the index (down "
        "nested indexes; they get no event of their own), [] for none"
    )
    referrers: list[DeletedReferrerData] | SkipJsonSchema[None] = absent_unless_set(
        "image delete: the referrers (signatures, SBOMs) deleted with the image, each with "
        "its digest and the tags deleted with it (its platform manifests' and referrers' "
        "referrers included; they get no event of their own), [] for none"
    )
    actor: str = Field(description="who made the change (a user name, or `system`)")
    message: str | SkipJsonSchema[None] = absent_unless_set("refusals: what the client was told")
    limit: int | SkipJsonSchema[None] = absent_unless_set("refusals: the quota or limit reached")
    gc_run: GcRunSummary | SkipJsonSchema[None] = absent_unless_set("gc.finished: the run")
    scan: ScanOutcome | SkipJsonSchema[None] = absent_unless_set("scan.finished: its outcome")


class CloudEvent(BaseModel):
    """A webhook delivery's body: a CloudEvents 1.0 event in its structured JSON form."""

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(description="unique per event; a retried delivery repeats it")
    source: str = Field(description="`/projects/{project}`")
    type: str = Field(description="one of the event types, e.g. io.berth.image.pushed")
    time: dt.datetime
    subject: str | SkipJsonSchema[None] = absent_unless_set(
        "what the event is about: `repository[/image]:tag` or `@digest` (absent for an event "
        "about no one image)"
    )
    datacontenttype: Literal["application/json"] = "application/json"
    data: EventData


def content_subject(repo: RepositoryRef, image: str, reference: str | None) -> str:
    """`repository[/image]:tag` or `repository[/image]@digest`, as a client names it."""
    name = f"{repo.name}/{image}" if image else repo.name
    if reference is None:
        return name
    return f"{name}{'@' if ':' in reference else ':'}{reference}"


def new_event(event_type: str, data: EventData, subject: str | None) -> CloudEvent:
    return CloudEvent(
        id=str(uuid.uuid4()),
        source=f"/projects/{data.project}",
        type=event_type,
        time=utcnow(),
        subject=subject,
        data=data,
    )


def event_json(event: CloudEvent) -> str:
    """The body sent: fields that do not apply are left out (`absent_unless_set`)."""
    return event.model_dump_json()


async def enqueue_event(
    conn: AsyncConnection,
    project_id: int,
    event_type: str,
    data: EventData,
    subject: str | None = None,
) -> None:
    """Queue an event in the caller's transaction: one insert, if an endpoint takes it."""
    if await _taken(conn, project_id, event_type):
        await _insert(conn, project_id, event_type, data, subject)


async def enqueue_events(
    conn: AsyncConnection,
    project_id: int,
    event_type: str,
    events: list[tuple[EventData, str | None]],
) -> None:
    """Queue many events of one type (data, subject) in the caller's transaction: one read
    and, if an endpoint takes them, one insert."""
    if events and await _taken(conn, project_id, event_type):
        await conn.execute(
            webhook_events.insert(),
            [
                {
                    "project_id": project_id,
                    "type": event_type,
                    "payload": event_json(new_event(event_type, data, subject)),
                }
                for data, subject in events
            ],
        )


async def enqueue_event_now(
    db: Database,
    project_id: int,
    event_type: str,
    data: EventData,
    subject: str | None = None,
) -> None:
    """Queue an event in a transaction of its own (after a refusal rolled its own back, or a
    run ended), if an endpoint takes it. A failure is logged, never raised: the caller's
    answer stands either way."""
    try:
        async with db.read() as conn:
            if not await _taken(conn, project_id, event_type):
                return
        async with db.write() as conn:
            await _insert(conn, project_id, event_type, data, subject)
    except Exception:
        logger.exception(
            "could not queue the webhook event %s of project %s", event_type, project_id
        )


async def _taken(conn: AsyncConnection, project_id: int, event_type: str) -> bool:
    """Whether an enabled endpoint of the project takes this type. Most projects have no
    webhooks: their pushes and deletes read this (a few rows by index) instead of writing an
    event that the delivery job would claim its lease and a write transaction to throw away."""
    found = await conn.execute(
        select(webhooks.c.event_types).where(
            webhooks.c.project_id == project_id, webhooks.c.enabled.is_(True)
        )
    )
    return any(not types or event_type in types.split() for types in found.scalars())


async def _insert(
    conn: AsyncConnection,
    project_id: int,
    event_type: str,
    data: EventData,
    subject: str | None,
) -> None:
    event = new_event(event_type, data, subject)
    await conn.execute(
        webhook_events.insert().values(
            project_id=project_id, type=event_type, payload=event_json(event)
        )
    )


def content_data(repo: RepositoryRef, image: str, actor: str, **fields: Any) -> EventData:
    return EventData(project=repo.project, repository=repo.name, image=image, actor=actor, **fields)


async def report_refusal(
    db: Database,
    project_id: int,
    event_type: str,
    project: str,
    actor: str,
    refusal: RegistryError,
    repository: str | None = None,
) -> None:
    """Queue the event of a refused change (a quota or limit reached), after its transaction
    rolled back."""
    detail = refusal.detail if isinstance(refusal.detail, dict) else {}
    limit = detail.get("quota", detail.get("limit"))
    data = EventData(
        project=project,
        repository=repository,
        actor=actor,
        message=refusal.message,
        limit=limit if isinstance(limit, int) else None,
    )
    await enqueue_event_now(db, project_id, event_type, data)
