"""A project's webhook endpoints: making, changing and removing them (audited). Their delivery
log, test events and redeliveries are `webhook_log.py`'s (`WebhookLog`, a part of `Webhooks`).
Events are queued by the changes themselves (`webhook_events.py`) and delivered by the delivery
job (`webhook_delivery.py`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import Field
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.credentials import new_secret_text
from berth.domain.descriptions import description_problem
from berth.domain.errors import Conflict, InvalidValue, Refusals
from berth.domain.events import EVENT_TYPES
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import (
    projects,
    utcnow,
    webhooks,
)
from berth.services.records import Record
from berth.services.webhook_addresses import check_url, endpoint_key
from berth.services.webhook_log import WebhookLog, new_id

MAX_WEBHOOKS = 20  # per project
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 128


class Webhook(Record):
    """A webhook endpoint of a project. Its secret is never shown again after creation."""

    id: int
    project: str
    url: str
    event_types: list[str] = Field(description="the event types sent; empty: every type")
    enabled: bool = Field(description="a disabled endpoint gets no new events; queued ones wait")
    description: str
    signed: bool = Field(description="whether deliveries carry X-Berth-Signature (it has a secret)")
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class CreatedWebhook(Webhook):
    secret: str | None = Field(
        description="the signing secret: shown only now (null: deliveries are not signed)"
    )


def _webhook(row: Any, project: str) -> Webhook:
    return Webhook(
        id=row.id,
        project=project,
        url=row.url,
        event_types=row.event_types.split(),
        enabled=row.enabled,
        description=row.description,
        signed=row.secret is not None,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _event_types(types: list[str] | None) -> str:
    chosen = sorted(set(types or []))
    for event_type in chosen:
        if event_type not in EVENT_TYPES:
            raise InvalidValue(
                f"unknown event type {event_type!r}; the types are {', '.join(EVENT_TYPES)}",
                "event_types",
            )
    return " ".join(chosen)


def _check_secret(secret: str) -> None:
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH or not secret.isprintable():
        raise InvalidValue(
            f"a secret is {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} printable characters",
            "secret",
        )


def _check_description(description: str) -> None:
    problem = description_problem(description)
    if problem is not None:
        raise InvalidValue(problem, "description")


class Webhooks(WebhookLog):
    def __init__(
        self,
        db: Database,
        *,
        allow_private: bool,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        """`clock`: when a delivery is queued (a test event, a redelivery), in the delivery
        job's time (`WebhookDelivery`'s clock; the tests drive both)."""
        super().__init__(db, clock=clock)
        self.allow_private = allow_private

    async def create(
        self,
        project: str,
        url: str,
        *,
        event_types: list[str] | None = None,
        secret: str | None = None,
        sign: bool = True,
        enabled: bool = True,
        description: str = "",
        actor: str,
        client: str | None = None,
    ) -> CreatedWebhook:
        """Add an endpoint. With `sign` and no `secret`, a secret is made; it is returned now
        and never again."""
        refusals = Refusals()
        with refusals.check():
            await check_url(url, allow_private=self.allow_private)
        types = ""
        with refusals.check():
            types = _event_types(event_types)
        with refusals.check():
            _check_description(description)
        if secret is not None:
            with refusals.check():
                _check_secret(secret)
        refusals.refuse()
        if secret is None and sign:
            secret = new_secret_text(32)
        now = utcnow()
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            others = await _endpoints_locked(conn, project_id)
            _refuse_same_url(project, url, others)
            if len(others) >= MAX_WEBHOOKS:
                raise InvalidValue(
                    f"project {project!r} has {MAX_WEBHOOKS} webhooks, the most it may have; "
                    "delete one first"
                )
            result = await conn.execute(
                webhooks.insert().values(
                    project_id=project_id,
                    url=url,
                    secret=secret,
                    event_types=types,
                    enabled=enabled,
                    description=description,
                    created_by=actor,
                    created_at=now,
                    updated_at=now,
                )
            )
            webhook_id = new_id(result)
            await write_audit_entry(
                conn,
                actor,
                "webhook.create",
                project_id=project_id,
                target=url[:255],
                detail={"id": webhook_id, "event_types": types.split(), "enabled": enabled},
                client=client,
            )
            row = await self._row(conn, project_id, project, webhook_id)
        shown = _webhook(row, project)
        return CreatedWebhook(**shown.model_dump(), secret=secret)

    async def list_webhooks(self, project: str) -> list[Webhook]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            rows = await conn.execute(
                select(webhooks).where(webhooks.c.project_id == project_id).order_by(webhooks.c.id)
            )
            return [_webhook(row, project) for row in rows]

    async def get(self, project: str, webhook_id: int) -> Webhook:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            return _webhook(await self._row(conn, project_id, project, webhook_id), project)

    async def update(
        self,
        project: str,
        webhook_id: int,
        *,
        url: str | None = None,
        event_types: list[str] | None = None,
        enabled: bool | None = None,
        description: str | None = None,
        actor: str,
        client: str | None = None,
    ) -> Webhook:
        """Change what is given (None: unchanged; `event_types` [] means every type)."""
        values: dict[str, Any] = {}
        refusals = Refusals()
        if url is not None:
            with refusals.check():
                await check_url(url, allow_private=self.allow_private)
                values["url"] = url
        if event_types is not None:
            with refusals.check():
                values["event_types"] = _event_types(event_types)
        if enabled is not None:
            values["enabled"] = enabled
        if description is not None:
            with refusals.check():
                _check_description(description)
                values["description"] = description
        refusals.refuse()
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            row = await self._row(conn, project_id, project, webhook_id)
            # Refused only for a new address: a database from before the check may hold the
            # same URL twice, and either endpoint may still be changed (disabled, say).
            if url is not None and endpoint_key(url) != endpoint_key(row.url):
                others = await _endpoints_locked(conn, project_id)
                _refuse_same_url(project, url, [o for o in others if o.id != webhook_id])
            if values:
                await conn.execute(
                    update(webhooks)
                    .where(webhooks.c.id == webhook_id)
                    .values(**values, updated_at=utcnow())
                )
                changed = {
                    key: value.split() if key == "event_types" else value
                    for key, value in values.items()
                }
                await write_audit_entry(
                    conn,
                    actor,
                    "webhook.update",
                    project_id=project_id,
                    target=str(values.get("url", row.url))[:255],
                    detail={"id": webhook_id, **changed},
                    client=client,
                )
            row = await self._row(conn, project_id, project, webhook_id)
        return _webhook(row, project)

    async def new_secret(
        self,
        project: str,
        webhook_id: int,
        *,
        secret: str | None = None,
        actor: str,
        client: str | None = None,
    ) -> str:
        """Give the endpoint a new signing secret (made, or `secret`), returned now and never
        again; deliveries from now on are signed with it. Audited."""
        if secret is not None:
            _check_secret(secret)
        else:
            secret = new_secret_text(32)
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            row = await self._row(conn, project_id, project, webhook_id)
            await conn.execute(
                update(webhooks)
                .where(webhooks.c.id == webhook_id)
                .values(secret=secret, updated_at=utcnow())
            )
            await write_audit_entry(
                conn,
                actor,
                "webhook.secret",
                project_id=project_id,
                target=str(row.url)[:255],
                detail={"id": webhook_id},
                client=client,
            )
        return secret

    async def delete(
        self, project: str, webhook_id: int, *, actor: str, client: str | None = None
    ) -> None:
        """Remove the endpoint with its queue and delivery log."""
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            row = await self._row(conn, project_id, project, webhook_id)
            # Its queue and delivery log go with it (ON DELETE CASCADE).
            await conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id))
            await write_audit_entry(
                conn,
                actor,
                "webhook.delete",
                project_id=project_id,
                target=str(row.url)[:255],
                detail={"id": webhook_id},
                client=client,
            )


async def _endpoints_locked(conn: AsyncConnection, project_id: int) -> list[Any]:
    """The project's endpoints (id, url), read after locking the project's row against another
    writer of its endpoints until this transaction ends, so that two requests adding the same
    URL at once cannot both find it free. (PostgreSQL: FOR NO KEY UPDATE, which pushes into
    the project, only reading its key, do not wait for; SQLite has one writer at a time.)"""
    await conn.execute(
        select(projects.c.id).where(projects.c.id == project_id).with_for_update(key_share=True)
    )
    found = await conn.execute(
        select(webhooks.c.id, webhooks.c.url)
        .where(webhooks.c.project_id == project_id)
        .order_by(webhooks.c.id)
    )
    return list(found)


def _refuse_same_url(project: str, url: str, others: list[Any]) -> None:
    """Conflict if one of `others` has the same URL (`endpoint_key`): its every event would be
    sent twice."""
    key = endpoint_key(url)
    for other in others:
        if endpoint_key(other.url) == key:
            raise Conflict(
                f"project {project!r} has a webhook to this URL already: webhook {other.id} "
                f"({other.url}); a second would get every event twice. Change or delete that "
                "one instead",
                field="url",
            )
