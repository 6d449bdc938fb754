"""A project's webhook endpoints: making, changing and removing them (audited), their delivery
log, and a test event. Events are queued by the changes themselves (`webhook_events.py`) and
delivered by the delivery job (`webhook_delivery.py`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.credentials import new_secret_text
from berth.domain.descriptions import description_problem
from berth.domain.errors import Conflict, InvalidValue, NotFound, Refusals, StateRefusal
from berth.domain.events import EVENT_TYPES, TEST
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import (
    projects,
    utcnow,
    webhook_attempts,
    webhook_deliveries,
    webhooks,
)
from berth.services.records import Record
from berth.services.webhook_addresses import check_url, endpoint_key
from berth.services.webhook_events import CloudEvent, EventData, event_json, new_event

MAX_WEBHOOKS = 20  # per project
# Test events waiting to be sent to one endpoint: each may take the whole webhook_timeout, and
# a probe needs no queue (the operator sends another once these are sent).
MAX_PENDING_TESTS = 5
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 128
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# The deliveries an endpoint gets in order: all but test events, which are sent at once,
# whatever waits, and attempted once.
IN_ORDER = webhook_deliveries.c.event_type != TEST


def queue_head(query: Select[Any], webhook_id: int) -> Select[Any]:
    """`query` narrowed to the head of the endpoint's ordered queue (test events are outside
    it): its oldest pending delivery, the one the others wait for."""
    return (
        query.where(
            webhook_deliveries.c.webhook_id == webhook_id,
            webhook_deliveries.c.state == PENDING,
            IN_ORDER,
        )
        .order_by(webhook_deliveries.c.id)
        .limit(1)
    )


class WebhookDisabled(StateRefusal):
    """A test or redelivery for a disabled endpoint: nothing would send it. Each surface says
    how to enable it (the CLI prints the command)."""

    def __init__(self, webhook_id: int) -> None:
        super().__init__(f"webhook {webhook_id} is disabled; enable it to send it events")
        self.webhook_id = webhook_id


class TooManyPendingTests(StateRefusal):
    """A test event (or a test's redelivery) for an endpoint that has `MAX_PENDING_TESTS`
    waiting to be sent already. Each surface says where to follow them."""

    def __init__(self, webhook_id: int) -> None:
        super().__init__(
            f"webhook {webhook_id} has {MAX_PENDING_TESTS} test events waiting to be sent, the "
            "most it may have; send another once they are sent (each within the webhook "
            "timeout): their outcomes are in its delivery log"
        )
        self.webhook_id = webhook_id


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


class Attempt(Record):
    at: dt.datetime
    outcome: Literal["delivered", "retry", "failed"] = Field(
        description="retry: not accepted, tried again at next_attempt_at; failed: given up "
        "(a test event is attempted once: not accepted, it has failed)"
    )
    status_code: int | None = Field(description="the endpoint's HTTP status (null: no answer)")
    duration_ms: int
    error: str | None
    next_attempt_at: dt.datetime | None


class Delivery(Record):
    """One event sent (or being sent) to one endpoint, with every attempt, newest first."""

    id: int
    webhook_id: int
    event_id: str
    event_type: str
    state: Literal["pending", "delivered", "failed"] = Field(
        description="pending: queued, waiting to be retried, or waiting behind an earlier "
        "delivery (waiting_for); delivered: the endpoint answered 2xx; failed: given up after "
        "a day of retries, or a test event the endpoint did not accept (tests are not retried)"
    )
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None = Field(
        description="pending: when it is next attempted (due now, if past); null once it has "
        "ended, and while it waits behind an earlier delivery (waiting_for)"
    )
    waiting_for: int | None = Field(
        description="pending behind an earlier delivery to the endpoint (its oldest pending "
        "one, being sent or retried): that delivery's id. An endpoint gets its events in "
        "order, so this one is sent once that one is delivered or given up. Null otherwise "
        "(a test event never waits)"
    )
    finished_at: dt.datetime | None
    redelivery_of: int | None = Field(
        description="a redelivery (its event sent again at an operator's request): the id of "
        "the delivery it re-sends, which may have been pruned since; null otherwise"
    )
    attempt_log: list[Attempt]
    event: CloudEvent = Field(
        description="the body sent (the same on every attempt and redelivery); a field that "
        "does not apply to the event is absent, as in the body"
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


def _new_id(result: Any) -> int:
    return int(result.inserted_primary_key[0])


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


class Webhooks:
    def __init__(
        self,
        db: Database,
        *,
        allow_private: bool,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        """`clock`: when a delivery is queued (a test event, a redelivery), in the delivery
        job's time (`WebhookDelivery`'s clock; the tests drive both)."""
        self.db = db
        self.allow_private = allow_private
        self.clock = clock

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
            webhook_id = _new_id(result)
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

    async def _row(
        self, conn: AsyncConnection, project_id: int, project: str, webhook_id: int
    ) -> Any:
        row = (
            await conn.execute(
                select(webhooks).where(
                    webhooks.c.id == webhook_id, webhooks.c.project_id == project_id
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"project {project!r} has no webhook {webhook_id}")
        return row

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

    async def send_test(self, project: str, webhook_id: int, *, actor: str) -> Delivery:
        """Queue a test event (`io.berth.webhook.test`) for the endpoint, whatever event types
        it subscribes to. The delivery job sends it at its next pass, ahead of what is queued
        for the endpoint (a test is outside the endpoint's order), and attempts it once: it is
        a probe, not retried. Accepted, it also brings the retry of the endpoint's queue
        forward (`WebhookDelivery`). Refused while the endpoint is disabled (nothing would
        send it)."""
        event = new_event(TEST, EventData(project=project, actor=actor), None)
        now = self.clock()
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            row = await self._row(conn, project_id, project, webhook_id)
            if not row.enabled:
                raise WebhookDisabled(webhook_id)
            await _refuse_too_many_tests(conn, webhook_id)
            result = await conn.execute(
                webhook_deliveries.insert().values(
                    webhook_id=webhook_id,
                    event_id=event.id,
                    event_type=TEST,
                    payload=event_json(event),
                    state=PENDING,
                    attempts=0,
                    created_at=now,
                    next_attempt_at=now,
                )
            )
            delivery_id = _new_id(result)
        sent, _ = await self._deliveries(project, webhook_id, delivery_id=delivery_id)
        return sent[0]

    async def redeliver(
        self,
        project: str,
        webhook_id: int,
        delivery_id: int,
        *,
        actor: str,
        client: str | None = None,
    ) -> Delivery:
        """Send a delivered or failed delivery's event again: a new delivery of the same body
        (the same event id, so a receiver can tell a repeat), naming the one it re-sends,
        signed at each attempt with the endpoint's secret of then. It joins the end of the
        endpoint's queue, as a new event would, and is retried like one, for a day from now:
        an endpoint gets the events it is sent in order, and one sent again is no exception
        (it would otherwise overtake the deliveries that wait, or arrive while an earlier
        one is retried). A test event sent again is a test again: sent at once, once.
        Refused for a pending delivery (it is being sent already) and while the endpoint is
        disabled (nothing would send it). Audited."""
        now = self.clock()
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            endpoint = await self._row(conn, project_id, project, webhook_id)
            if not endpoint.enabled:
                raise WebhookDisabled(webhook_id)
            sent = (
                await conn.execute(
                    select(webhook_deliveries).where(
                        webhook_deliveries.c.id == delivery_id,
                        webhook_deliveries.c.webhook_id == webhook_id,
                    )
                )
            ).first()
            if sent is None:
                raise NotFound(f"webhook {webhook_id} has no delivery {delivery_id}")
            if sent.state == PENDING:
                raise StateRefusal(
                    f"delivery {delivery_id} is still pending: it is being sent (and retried) "
                    "already; redeliver it once it is delivered or has failed"
                )
            if sent.event_type == TEST:  # sent again, a test is a test: sent ahead, once
                await _refuse_too_many_tests(conn, webhook_id)
            result = await conn.execute(
                webhook_deliveries.insert().values(
                    webhook_id=webhook_id,
                    event_id=sent.event_id,
                    event_type=sent.event_type,
                    payload=sent.payload,
                    state=PENDING,
                    attempts=0,
                    created_at=now,
                    next_attempt_at=now,
                    redelivery_of=delivery_id,
                )
            )
            redelivery_id = _new_id(result)
            await write_audit_entry(
                conn,
                actor,
                "webhook.redeliver",
                project_id=project_id,
                target=str(endpoint.url)[:255],
                detail={
                    "id": webhook_id,
                    "delivery": delivery_id,
                    "redelivery": redelivery_id,
                    "event_id": sent.event_id,
                    "event_type": sent.event_type,
                },
                client=client,
            )
        queued, _ = await self._deliveries(project, webhook_id, delivery_id=redelivery_id)
        return queued[0]

    async def deliveries(
        self, project: str, webhook_id: int, *, offset: int = 0, limit: int = 20
    ) -> tuple[list[Delivery], int]:
        """The endpoint's deliveries, newest first, and how many it has."""
        return await self._deliveries(project, webhook_id, offset=offset, limit=limit)

    async def _deliveries(
        self,
        project: str,
        webhook_id: int,
        *,
        offset: int = 0,
        limit: int = 1,
        delivery_id: int | None = None,
    ) -> tuple[list[Delivery], int]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            await self._row(conn, project_id, project, webhook_id)
            where = [webhook_deliveries.c.webhook_id == webhook_id]
            if delivery_id is not None:
                where.append(webhook_deliveries.c.id == delivery_id)
            total = (
                await conn.execute(
                    select(func.count()).select_from(webhook_deliveries).where(*where)
                )
            ).scalar() or 0
            rows = (
                await conn.execute(
                    select(webhook_deliveries)
                    .where(*where)
                    .order_by(webhook_deliveries.c.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
            # The head of the endpoint's ordered queue: the one the others wait for.
            head = (
                await conn.execute(queue_head(select(webhook_deliveries.c.id), webhook_id))
            ).scalar()
            attempts: dict[int, list[Attempt]] = {row.id: [] for row in rows}
            if rows:
                found = await conn.execute(
                    select(webhook_attempts)
                    .where(webhook_attempts.c.delivery_id.in_(list(attempts)))
                    .order_by(webhook_attempts.c.id.desc())
                )
                for attempt in found:
                    attempts[attempt.delivery_id].append(
                        Attempt(
                            at=attempt.at,
                            outcome=attempt.outcome,
                            status_code=attempt.status_code,
                            duration_ms=attempt.duration_ms,
                            error=attempt.error,
                            next_attempt_at=attempt.next_attempt_at,
                        )
                    )
        return [_delivery(row, head, attempts[row.id]) for row in rows], int(total)


async def _refuse_too_many_tests(conn: AsyncConnection, webhook_id: int) -> None:
    """TooManyPendingTests if the endpoint has `MAX_PENDING_TESTS` waiting to be sent: read
    with its row locked until this transaction ends, so that tests sent at once cannot all
    find room (PostgreSQL; SQLite has one writer at a time)."""
    await conn.execute(
        select(webhooks.c.id).where(webhooks.c.id == webhook_id).with_for_update(key_share=True)
    )
    waiting = (
        await conn.execute(
            select(func.count())
            .select_from(webhook_deliveries)
            .where(
                webhook_deliveries.c.webhook_id == webhook_id,
                webhook_deliveries.c.state == PENDING,
                webhook_deliveries.c.event_type == TEST,
            )
        )
    ).scalar_one()
    if waiting >= MAX_PENDING_TESTS:
        raise TooManyPendingTests(webhook_id)


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


def _delivery(row: Any, head: int | None, attempts: list[Attempt]) -> Delivery:
    """A delivery as shown; one pending behind the head of its endpoint's queue names the
    head instead of a next attempt (its stored one is when it was queued: long past)."""
    waiting_for = None
    if row.state == PENDING and row.event_type != TEST and head is not None and row.id > head:
        waiting_for = head
    return Delivery(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        event_type=row.event_type,
        state=row.state,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=None if waiting_for is not None else row.next_attempt_at,
        waiting_for=waiting_for,
        finished_at=row.finished_at,
        redelivery_of=row.redelivery_of,
        attempt_log=attempts,
        event=CloudEvent.model_validate_json(row.payload),
    )
