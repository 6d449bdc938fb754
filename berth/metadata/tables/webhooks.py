"""Webhooks: endpoints, the outbox of events, deliveries and their attempts."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from berth.metadata.tables.schema import UTCDateTime, metadata, utcnow

# A project's webhook endpoints. `secret` signs each delivery's body (HMAC-SHA256), so it is
# kept as given (it cannot be hashed like an access key's); it is shown once, at creation.
# `event_types` is a space-separated list of event types.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("secret", String(128)),
    Column("event_types", Text, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("description", String(100), nullable=False, default=""),
    Column("created_by", String(64), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "project_id"),
)


# The outbox: an event written in the transaction of the change it reports (one insert on the
# change's path). The delivery job turns each into a delivery per subscribed endpoint.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", Text, nullable=False),  # the CloudEvent, as JSON
)


# One event to one endpoint: the queue (state `pending`, delivered in id order per endpoint)
# and, once `delivered` or `failed`, the record of it. A test event (`io.berth.webhook.test`)
# is outside the order: the (state, event_type) index finds the pending ones at once, however
# long the queues they skip. A redelivery (an operator's "send it again") is a new delivery of
# an earlier one's event; `redelivery_of` names that one (no foreign key: the log it is in is
# pruned, and the redelivery still says what it re-sent).
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("webhook_id", ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("next_attempt_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("redelivery_of", Integer),
    Index(None, "webhook_id", "state", "id"),
    Index(None, "state", "event_type"),
)


# Every attempt at a delivery: its outcome, the endpoint's status code, how long it took.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("delivery_id", ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False, default=utcnow),
    Column("outcome", String(16), nullable=False),  # delivered | retry | failed
    Column("status_code", Integer),
    Column("duration_ms", Integer, nullable=False, default=0),
    Column("error", String(500)),
    Column("next_attempt_at", UTCDateTime),
    Index(None, "delivery_id"),
)
