"""Webhooks: a project's endpoints (project admins), their delivery log, a test event, and
sending a past delivery again.

Each delivery's body is a CloudEvents 1.0 event (the `CloudEvent` schema, shown with every
delivery in the log), POSTed with `X-Berth-Signature: sha256=<hex HMAC-SHA256 of the body under
the endpoint's secret>`. docs/operations.md says how to check it, and how retries work.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from berth.api.bodies import RequestBody
from berth.api.deps import AdminProject, Page, PagingDep
from berth.api.problems import responses
from berth.domain.descriptions import DESCRIPTION_RULE, MAX_DESCRIPTION, TEXT_PATTERN
from berth.domain.events import EVENT_TYPES
from berth.domain.references import MAX_ID
from berth.services.webhook_addresses import MAX_URL_LENGTH
from berth.services.webhook_log import MAX_PENDING_TESTS, Delivery
from berth.services.webhooks import (
    MAX_SECRET_LENGTH,
    MIN_SECRET_LENGTH,
    CreatedWebhook,
    Webhook,
)

router = APIRouter(
    prefix="/projects/{project}/webhooks", tags=["webhooks"], responses=responses(403, 404)
)

WebhookId = Annotated[int, Path(ge=1, le=MAX_ID, description="webhook id")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_ID, description="delivery id")]


# Event types are checked by the service with the other fields (one refusal names them all);
# the schema lists the types.
_EVENT_TYPE_ITEMS: dict[str, Any] = {"items": {"type": "string", "enum": list(EVENT_TYPES)}}
_DESCRIPTION_BOUNDS: dict[str, Any] = {"maxLength": MAX_DESCRIPTION, "pattern": TEXT_PATTERN}
# http or https (the scheme in any case, as URLs take it); the rest the service checks.
_URL_BOUNDS: dict[str, Any] = {"maxLength": MAX_URL_LENGTH, "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}


class NewWebhook(RequestBody):
    # Lengths and forms are checked by the service, so one refusal names every field at
    # fault (with the URL's, which needs the network); the schema states the same bounds.
    url: str = Field(
        description="http(s) URL the events are POSTed to; its host must resolve to public "
        "addresses unless the server allows private ones (webhook_allow_private)",
        json_schema_extra=_URL_BOUNDS,
    )
    event_types: list[str] = Field(
        default_factory=list,
        description="the event types to send; empty: every type",
        json_schema_extra=_EVENT_TYPE_ITEMS,
    )
    secret: str | None = Field(
        None,
        description="your own signing secret; without one, a secret is made (with `sign`)",
        json_schema_extra={"minLength": MIN_SECRET_LENGTH, "maxLength": MAX_SECRET_LENGTH},
    )
    sign: bool = Field(
        True, description="sign deliveries (X-Berth-Signature); false, with no secret: unsigned"
    )
    enabled: bool = True
    description: str = Field(
        "", description=DESCRIPTION_RULE, json_schema_extra=_DESCRIPTION_BOUNDS
    )


class WebhookChange(RequestBody):
    url: str | None = Field(None, json_schema_extra=_URL_BOUNDS)
    event_types: list[str] | None = Field(
        None, description="empty: every type", json_schema_extra=_EVENT_TYPE_ITEMS
    )
    enabled: bool | None = None
    description: str | None = Field(
        None, description=DESCRIPTION_RULE, json_schema_extra=_DESCRIPTION_BOUNDS
    )


class EventTypeInfo(BaseModel):
    type: str
    description: str


@router.get("")
async def list_webhooks(ctx: AdminProject) -> list[Webhook]:
    """The project's webhook endpoints (never their secrets)."""
    return await ctx.services.webhooks.list_webhooks(ctx.project)


@router.post("", status_code=201, responses=responses(409, 422))
async def create_webhook(ctx: AdminProject, body: NewWebhook) -> CreatedWebhook:
    """Add an endpoint. The answer carries its signing secret: shown only now. Refused (409)
    when the project has a webhook to the same URL already (scheme and host in any case, a
    host's trailing dot, the default port written or not, an empty path or `/`, `.` and `..`
    segments, percent-escapes in either case; a trailing slash on the path makes another URL):
    it would get every event twice. Audited."""
    return await ctx.services.webhooks.create(
        ctx.project,
        body.url,
        event_types=list(body.event_types),
        secret=body.secret,
        sign=body.sign,
        enabled=body.enabled,
        description=body.description,
        actor=ctx.actor,
        client=ctx.caller.client,
    )


@router.get("/event-types")
async def list_event_types(ctx: AdminProject) -> list[EventTypeInfo]:
    """The event types an endpoint may subscribe to."""
    return [EventTypeInfo(type=name, description=text) for name, text in EVENT_TYPES.items()]


@router.get("/{webhook_id}")
async def get_webhook(ctx: AdminProject, webhook_id: WebhookId) -> Webhook:
    return await ctx.services.webhooks.get(ctx.project, webhook_id)


@router.patch("/{webhook_id}", responses=responses(409, 422))
async def update_webhook(ctx: AdminProject, webhook_id: WebhookId, body: WebhookChange) -> Webhook:
    """Change an endpoint (what is given). A disabled endpoint gets no new events; what was
    queued for it waits until it is enabled again. A new URL another webhook of the project
    has already (compared as when adding one) is refused (409). Audited."""
    return await ctx.services.webhooks.update(
        ctx.project,
        webhook_id,
        url=body.url,
        event_types=list(body.event_types) if body.event_types is not None else None,
        enabled=body.enabled,
        description=body.description,
        actor=ctx.actor,
        client=ctx.caller.client,
    )


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(ctx: AdminProject, webhook_id: WebhookId) -> Response:
    """Remove an endpoint with its queue and delivery log. Audited."""
    await ctx.services.webhooks.delete(
        ctx.project, webhook_id, actor=ctx.actor, client=ctx.caller.client
    )
    return Response(status_code=204)


class NewSecret(RequestBody):
    secret: str | None = Field(
        None,
        min_length=MIN_SECRET_LENGTH,
        max_length=MAX_SECRET_LENGTH,
        description="your own new secret; without one, a secret is made",
    )


class SigningSecret(BaseModel):
    secret: str = Field(description="the new signing secret: shown only now")


@router.post("/{webhook_id}/secret", responses=responses(422))
async def new_secret(
    ctx: AdminProject, webhook_id: WebhookId, body: NewSecret | None = None
) -> SigningSecret:
    """Replace the endpoint's signing secret (also for an unsigned endpoint: it is signed from
    now on). The new secret is in the answer, and never shown again. Audited."""
    secret = await ctx.services.webhooks.new_secret(
        ctx.project,
        webhook_id,
        secret=body.secret if body else None,
        actor=ctx.actor,
        client=ctx.caller.client,
    )
    return SigningSecret(secret=secret)


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(
    ctx: AdminProject, webhook_id: WebhookId, paging: PagingDep
) -> Page[Delivery]:
    """The endpoint's deliveries, newest first, each with its attempts (status, response code,
    duration, error, next attempt) and the event sent. One waiting behind an earlier delivery
    (the endpoint gets its events in order) names it in `waiting_for`."""
    items, total = await ctx.services.webhooks.deliveries(
        ctx.project, webhook_id, offset=paging.offset, limit=paging.per_page
    )
    return Page[Delivery].of(items, paging, total)


# The OpenAPI descriptions of the two routes that queue test events name the service's limit
# on waiting ones, so they are built from it (a docstring cannot be).
_TESTS_WAITING = f"{MAX_PENDING_TESTS} test events waiting to be sent"


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    responses=responses(409),
    description="Send a delivered or failed delivery's event again (one that failed for good "
    "after a day of retries, or one the receiver lost): a new delivery of the same body, with "
    "the same event id (a receiver can tell it is a repeat), whose `redelivery_of` names this "
    "one, signed with the endpoint's current secret. It joins the end of the endpoint's queue, "
    "as a new event does, and is retried like one for a day: the endpoint gets its events in "
    "order, a re-sent one included, so it never overtakes a delivery that waits. (A test event "
    "sent again is a test: sent at once, attempted once, and refused (409) as a new test is "
    f"while the endpoint has {_TESTS_WAITING}.) Refused (409) for a pending delivery, which is "
    "being sent already, and while the endpoint is disabled. Audited.",
)
async def redeliver(ctx: AdminProject, webhook_id: WebhookId, delivery_id: DeliveryId) -> Delivery:
    return await ctx.services.webhooks.redeliver(
        ctx.project, webhook_id, delivery_id, actor=ctx.actor, client=ctx.caller.client
    )


@router.post(
    "/{webhook_id}/test",
    status_code=202,
    responses=responses(409),
    description="Send an `io.berth.webhook.test` event to the endpoint (whatever types it "
    "takes): it is sent within a second or two, ahead of anything queued for the endpoint (a "
    "test is outside its order), and attempted once, never retried: send another to try "
    "again. Follow its outcome in the delivery log. Accepted, it shows the endpoint is back: "
    "the delivery its queue waits for is retried at once, not at the end of its backoff. "
    "Refused (409) while the endpoint is disabled, and while it has "
    f"{_TESTS_WAITING} already.",
)
async def send_test_event(ctx: AdminProject, webhook_id: WebhookId) -> Delivery:
    return await ctx.services.webhooks.send_test(ctx.project, webhook_id, actor=ctx.actor)
