"""A webhook endpoint's delivery log: what is shown of a delivery and its attempts, the states
a delivery goes through and the endpoint's ordered queue (`queue_head`, which the delivery job
works through), and what an operator queues on it: a test event, and a redelivery of an earlier
delivery (audited). The endpoints themselves are `webhooks.py`'s."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import NotFound, StateRefusal
from berth.domain.events import TEST
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import (
    utcnow,
    webhook_attempts,
    webhook_deliveries,
    webhooks,
)
from berth.services.records import Record
from berth.services.webhook_events import CloudEvent, EventData, event_json, new_event

# Test events waiting to be sent to one endpoint: each may take the whole webhook_timeout, and
# a probe needs no queue (the operator sends another once these are sent).
MAX_PENDING_TESTS = 5
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


def new_id(result: Any) -> int:
    return int(result.inserted_primary_key[0])


class WebhookLog:
    """The delivery log of a project's endpoints; `Webhooks` adds the endpoints."""

    def __init__(self, db: Database, *, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

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
            delivery_id = new_id(result)
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
            redelivery_id = new_id(result)
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
