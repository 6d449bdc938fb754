"""Delivering webhook events: the job one node runs at a time (a scheduled job, so its lease
decides which), every second.

A pass first turns queued events (the outbox, `webhook_events`) into one delivery per enabled
endpoint that subscribes to their type, then gives each endpoint with something due a task of
its own that works through its queue in order: an endpoint's next delivery waits until the one
before it is delivered or given up (each attempt has `timeout` seconds). The next pass, a
second later, does not wait for those tasks (it starts tasks for the endpoints that have come
due since), so a slow or dead endpoint holds up only its own queue; the job runs until the last
task has ended, `MAX_PARALLEL_SENDS` attempts at most in flight at once. A refused attempt (no
answer, or not 2xx) is retried after `retry_base` seconds, then twice as long each time (at most
an hour), until a day has passed since the event: then the delivery has failed, and the next
one goes.

A test event (`io.berth.webhook.test`, sent by an operator; a few at most wait per endpoint,
`MAX_PENDING_TESTS`) is outside that order: the endpoint's task sends it before its next
delivery, whatever waits in the queue, and attempts it once (a probe: the operator sends
another). Accepted, it shows the endpoint is back, so the head of its queue is retried at once
instead of at the end of its backoff (up to an hour away).

A redelivery (an operator's "send it again", `Webhooks.redeliver`) is an ordinary delivery of
an earlier one's body, queued last: it goes in the endpoint's order like any other (a
redelivered test event is a test, sent ahead once).

Each delivery is a POST of the CloudEvent (structured JSON) with `X-Berth-Signature:
sha256=<hex HMAC-SHA256 of the body under the endpoint's secret>` when the endpoint has one,
and the CloudEvents binary-mode headers `ce-id`, `ce-type`, `ce-source`, `ce-specversion`
beside it, so a receiver can route without parsing the body.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth import __version__
from berth.domain.errors import RegistryError
from berth.domain.events import TEST
from berth.jobs import Job
from berth.metadata.database import Database
from berth.metadata.tables import (
    utcnow,
    webhook_attempts,
    webhook_deliveries,
    webhook_events,
    webhooks,
)
from berth.observability import metrics
from berth.services.webhook_addresses import check_url
from berth.services.webhook_log import DELIVERED, FAILED, IN_ORDER, PENDING, queue_head

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("berth.webhooks")

PASS_SECONDS = 1.0
RETRY_FOR = dt.timedelta(days=1)
MAX_RETRY_WAIT = 3600.0
KEEP_FINISHED = dt.timedelta(days=7)  # delivered and failed deliveries stay this long
EVENTS_PER_PASS = 500
# Attempts in flight at once, across all endpoints; an endpoint has one at a time.
MAX_PARALLEL_SENDS = 100
SIGNATURE_HEADER = "X-Berth-Signature"


def signature(secret: str, body: bytes) -> str:
    """The X-Berth-Signature value of a body under a secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    status_code: int | None
    duration_ms: int
    error: str | None


class WebhookDelivery:
    def __init__(
        self,
        db: Database,
        *,
        allow_private: bool,
        timeout: float,
        retry_base: float,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.allow_private = allow_private
        self.timeout = timeout
        self.retry_base = retry_base
        self.clock = clock

    def jobs(self) -> list[Job]:
        """Its scheduled jobs: a pass every second (events wait a second at most), claimed
        only by a node that finds work (idle, the nodes only read), and the hourly prune."""
        return [
            Job("webhook-delivery", PASS_SECONDS, self.run, has_work=self.has_work),
            Job("webhook-prune", 3600, self.prune),
        ]

    async def run(self) -> None:
        """Deliver until nothing is left to send now. Each endpoint with something due (a
        test event, or the head of its queue) gets a task of its own that drains it; a pass
        every second fans out the queued events and starts a task for each endpoint that
        has come due and has none, without waiting for the tasks already running. So a slow
        or dead endpoint holds up only its own queue, and the job (with its lease) goes on
        until the last endpoint's task has ended."""
        await self.fan_out()
        due = await self._endpoints_with_work()
        if not due:
            return
        # Loaded here: a worker that never sends a webhook never loads it (~7 MB); in a
        # thread, as its first import takes a second or more that the worker's requests
        # would otherwise wait out.
        httpx = await asyncio.to_thread(importlib.import_module, "httpx")
        sends = asyncio.Semaphore(MAX_PARALLEL_SENDS)
        draining: dict[int, asyncio.Task[None]] = {}
        async with httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": f"Berth-Webhooks/{__version__}"},
            # As many connections as attempts may be in flight: none waits for the pool.
            limits=httpx.Limits(max_connections=MAX_PARALLEL_SENDS),
        ) as client:
            try:
                while True:
                    for webhook_id in due:
                        if webhook_id not in draining:
                            draining[webhook_id] = asyncio.create_task(
                                self._drain(client, sends, webhook_id),
                                name=f"webhook {webhook_id}",
                            )
                    await asyncio.wait(draining.values(), timeout=PASS_SECONDS)
                    draining = {w: task for w, task in draining.items() if not task.done()}
                    if not draining:
                        return
                    due = await self._next_pass()
            finally:
                # Stopping (this node shuts down, or lost the lease): an attempt cut short
                # stays pending, and is sent again by the node that runs the job next.
                for task in draining.values():
                    task.cancel()
                await asyncio.gather(*draining.values(), return_exceptions=True)

    async def _next_pass(self) -> list[int]:
        """A pass while endpoints are being drained: the endpoints that have come due. A
        failure (the database away) skips the pass; the sends under way go on."""
        try:
            await self.fan_out()
            return await self._endpoints_with_work()
        except Exception:
            logger.exception("webhook delivery: a pass failed")
            return []

    async def _endpoints_with_work(self) -> list[int]:
        """The endpoints with a test event to send or their queue's head due."""
        async with self.db.read() as conn:
            tests = await self._pending_tests_in(conn)
            due = set(await self._due_endpoints_in(conn)) | set(tests)
        return sorted(due)

    async def fan_out(self) -> int:
        """Queued events become deliveries of the endpoints that take them; returns how many
        deliveries were made."""
        made = 0
        async with self.db.read() as conn:  # most passes find none: no write lock for them
            if (await conn.execute(select(webhook_events.c.id).limit(1))).first() is None:
                return 0
        async with self.db.write() as conn:
            events = (
                await conn.execute(
                    select(webhook_events).order_by(webhook_events.c.id).limit(EVENTS_PER_PASS)
                )
            ).all()
            if not events:
                return 0
            projects = {event.project_id for event in events}
            endpoints = (
                await conn.execute(
                    select(webhooks.c.id, webhooks.c.project_id, webhooks.c.event_types).where(
                        webhooks.c.project_id.in_(projects), webhooks.c.enabled.is_(True)
                    )
                )
            ).all()
            now = self.clock()
            rows: list[dict[str, Any]] = []
            for event in events:
                for endpoint in endpoints:
                    types = endpoint.event_types.split()
                    if endpoint.project_id == event.project_id and (
                        not types or event.type in types
                    ):
                        rows.append(
                            {
                                "webhook_id": endpoint.id,
                                "event_id": json.loads(event.payload)["id"],
                                "event_type": event.type,
                                "payload": event.payload,
                                "state": PENDING,
                                "attempts": 0,
                                "created_at": now,
                                "next_attempt_at": now,
                            }
                        )
            if rows:
                await conn.execute(webhook_deliveries.insert(), rows)
                made = len(rows)
            # By id: on PostgreSQL an event with a smaller id may commit after these.
            await conn.execute(
                delete(webhook_events).where(webhook_events.c.id.in_([e.id for e in events]))
            )
        return made

    async def has_work(self) -> bool:
        """Whether a pass would do anything (an event queued, a test event to send, or an
        endpoint's next delivery due): read by every node each second, so that only a node
        with work claims the job."""
        async with self.db.read() as conn:
            if (await conn.execute(select(webhook_events.c.id).limit(1))).first() is not None:
                return True
            if await self._pending_tests_in(conn, limit=1):
                return True
            return bool(await self._due_endpoints_in(conn, limit=1))

    async def _pending_tests_in(
        self, conn: AsyncConnection, limit: int | None = None
    ) -> dict[int, list[int]]:
        """The test events waiting to be sent to enabled endpoints, oldest first, by endpoint:
        through the (state, event_type) index, not over the queues they skip."""
        found = await conn.execute(
            select(webhook_deliveries.c.webhook_id, webhook_deliveries.c.id)
            .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
            .where(
                webhook_deliveries.c.state == PENDING,
                webhook_deliveries.c.event_type == TEST,
                webhooks.c.enabled.is_(True),
            )
            .order_by(webhook_deliveries.c.id)
            .limit(limit)
        )
        tests: dict[int, list[int]] = {}
        for webhook_id, delivery_id in found:
            tests.setdefault(int(webhook_id), []).append(int(delivery_id))
        return tests

    async def _due_endpoints_in(self, conn: AsyncConnection, limit: int | None = None) -> list[int]:
        """The enabled endpoints whose oldest pending delivery (in order: tests aside) is due:
        from the endpoints (a few per project) through the (webhook_id, state, id) index, not
        over the log."""
        head_due_at = (
            select(webhook_deliveries.c.next_attempt_at)
            .where(
                webhook_deliveries.c.webhook_id == webhooks.c.id,
                webhook_deliveries.c.state == PENDING,
                IN_ORDER,
            )
            .order_by(webhook_deliveries.c.id)
            .limit(1)
            .scalar_subquery()
        )
        found = await conn.execute(
            select(webhooks.c.id)
            .where(webhooks.c.enabled.is_(True), head_due_at <= self.clock())
            .order_by(webhooks.c.id)
            .limit(limit)
        )
        return [int(webhook_id) for webhook_id in found.scalars()]

    async def _drain(
        self, client: httpx.AsyncClient, sends: asyncio.Semaphore, webhook_id: int
    ) -> None:
        """Send the endpoint's test events, then its due deliveries in order, until it has
        nothing due; a test event queued meanwhile goes before the next delivery."""
        try:
            while True:
                tests = await self._pending_tests_of(webhook_id)
                if await self._send_tests(client, sends, tests):
                    await self._retry_head_now(webhook_id)
                if not await self._deliver_next(client, sends, webhook_id) and not tests:
                    return
        except Exception:
            logger.exception("webhook %s: delivery failed", webhook_id)

    async def _pending_tests_of(self, webhook_id: int) -> list[int]:
        """The endpoint's test events waiting to be sent, oldest first (none while it is
        disabled)."""
        async with self.db.read() as conn:
            found = await conn.execute(
                select(webhook_deliveries.c.id)
                .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
                .where(
                    webhook_deliveries.c.webhook_id == webhook_id,
                    webhook_deliveries.c.state == PENDING,
                    webhook_deliveries.c.event_type == TEST,
                    webhooks.c.enabled.is_(True),
                )
                .order_by(webhook_deliveries.c.id)
            )
            return [int(delivery_id) for delivery_id in found.scalars()]

    async def _send_tests(
        self, client: httpx.AsyncClient, sends: asyncio.Semaphore, tests: list[int]
    ) -> bool:
        """Attempt each of these test events once; whether the endpoint accepted one."""
        accepted = False
        for delivery_id in tests:
            async with self.db.read() as conn:
                test = (
                    await conn.execute(
                        _with_endpoint().where(
                            webhook_deliveries.c.id == delivery_id,
                            webhook_deliveries.c.state == PENDING,
                        )
                    )
                ).first()
            if test is None or not test.enabled:  # removed, or disabled, since it was read
                continue
            async with sends:
                outcome = await self.attempt(client, test.url, test.secret, test.payload)
            await self._record(test, outcome)
            accepted = accepted or outcome.delivered
        return accepted

    async def _retry_head_now(self, webhook_id: int) -> None:
        """The endpoint accepted a test event: it is back, so the delivery its queue waits for
        is due now rather than at the end of its backoff. (Refused again, it waits longer
        next time, as after any refusal.)"""
        now = self.clock()
        async with self.db.write() as conn:
            head = (
                await conn.execute(
                    queue_head(
                        select(webhook_deliveries.c.id, webhook_deliveries.c.next_attempt_at),
                        webhook_id,
                    )
                )
            ).first()
            if head is None or head.next_attempt_at is None or head.next_attempt_at <= now:
                return
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == head.id)
                .values(next_attempt_at=now)
            )
        logger.info(
            "webhook %s: a test event was accepted; delivery %s is retried now",
            webhook_id,
            head.id,
        )

    async def _deliver_next(
        self, client: httpx.AsyncClient, sends: asyncio.Semaphore, webhook_id: int
    ) -> bool:
        """Attempt the endpoint's oldest pending delivery (in order: tests aside) if it is
        due; False when there is none or it must wait."""
        async with self.db.read() as conn:
            head = (await conn.execute(queue_head(_with_endpoint(), webhook_id))).first()
        now = self.clock()
        if head is None or not head.enabled:
            return False
        if head.next_attempt_at is not None and head.next_attempt_at > now:
            return False
        async with sends:
            outcome = await self.attempt(client, head.url, head.secret, head.payload)
        return await self._record(head, outcome) != PENDING

    async def attempt(
        self, client: httpx.AsyncClient, url: str, secret: str | None, payload: str
    ) -> Outcome:
        """POST the event to the endpoint once: at the address just checked."""
        import httpx  # loaded by run() already; here for its exceptions

        started = time.monotonic()
        body = payload.encode()
        event = json.loads(payload)
        try:
            target = await check_url(url, allow_private=self.allow_private)
        except RegistryError as refusal:
            return Outcome(False, None, _ms(started), refusal.message)
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/cloudevents+json; charset=utf-8",
            "ce-id": event["id"],
            "ce-type": event["type"],
            "ce-source": event["source"],
            "ce-specversion": event["specversion"],
        }
        if secret is not None:
            headers[SIGNATURE_HEADER] = signature(secret, body)
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = client.build_request(
            "POST", target.pinned_url, content=body, headers=headers, extensions=extensions
        )
        try:
            # The whole exchange within the timeout (httpx's applies to each read); the
            # answer's body is never read: only its status counts.
            status = await asyncio.wait_for(self._status(client, request), self.timeout)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(False, None, _ms(started), f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return Outcome(False, None, _ms(started), f"{type(exc).__name__}: {exc}"[:500])
        delivered = 200 <= status < 300
        error = None if delivered else f"the endpoint answered {status}"
        return Outcome(delivered, status, _ms(started), error)

    @staticmethod
    async def _status(client: httpx.AsyncClient, request: httpx.Request) -> int:
        response = await client.send(request, stream=True)
        await response.aclose()
        return response.status_code

    def retry_wait(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` refused ones."""
        return min(self.retry_base * 2.0 ** (attempts - 1), MAX_RETRY_WAIT)

    async def _record(self, head: Any, outcome: Outcome) -> str:
        """Log the attempt and move the delivery on; returns its state now."""
        now = self.clock()
        attempts = head.attempts + 1
        next_at: dt.datetime | None = None
        label: metrics.WebhookOutcome
        if outcome.delivered:
            state, label = DELIVERED, "delivered"
        elif head.event_type == TEST:
            state, label = FAILED, "failed"  # a probe: the operator sends another
        else:
            next_at = now + dt.timedelta(seconds=self.retry_wait(attempts))
            if next_at > head.created_at + RETRY_FOR:
                state, label, next_at = FAILED, "failed", None
            else:
                state, label = PENDING, "retry"
        async with self.db.write() as conn:
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == head.id)
                .values(
                    state=state,
                    attempts=attempts,
                    next_attempt_at=next_at,
                    finished_at=None if state == PENDING else now,
                )
            )
            await conn.execute(
                webhook_attempts.insert().values(
                    delivery_id=head.id,
                    at=now,
                    outcome=label,
                    status_code=outcome.status_code,
                    duration_ms=outcome.duration_ms,
                    error=outcome.error,
                    next_attempt_at=next_at,
                )
            )
        metrics.webhook_attempted(label)
        if label != "delivered":
            if next_at is not None:
                then = f"next attempt at {next_at.isoformat()}"
            else:
                then = "not retried (a test)" if head.event_type == TEST else "given up"
            logger.info(
                "webhook %s: delivery %s of %s not accepted (%s); %s",
                head.webhook_id,
                head.id,
                head.event_type,
                outcome.error,
                then,
            )
        return state

    async def prune(self) -> int:
        """Forget deliveries finished more than a week ago; returns how many."""
        cutoff = self.clock() - KEEP_FINISHED
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(webhook_deliveries).where(
                    webhook_deliveries.c.state != PENDING,
                    webhook_deliveries.c.finished_at < cutoff,
                )
            )
        return int(result.rowcount or 0)


def _with_endpoint() -> Select[Any]:
    """Deliveries with what sending one needs of its endpoint."""
    return select(webhook_deliveries, webhooks.c.url, webhooks.c.secret, webhooks.c.enabled).join(
        webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id
    )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
