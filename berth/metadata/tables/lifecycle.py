"""Lifecycle: retention policies and runs, and immutable tag rules."""

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

# A project's retention policy: its rules (JSON, domain/retention.py) and its schedule.
retention_policies = Table(
    "retention_policies",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("rules", Text, nullable=False),
    Column("schedule", String(64)),  # NULL: runs only by hand; "daily HH:MM" or a cron line
    Column("next_run_at", UTCDateTime),  # when the schedule next runs the policy
    Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
    Column("updated_by", String(64), nullable=False, default=""),
)


# Every retention run, dry or real: the rules it applied and what it deleted (or would).
retention_runs = Table(
    "retention_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("actor", String(64), nullable=False),  # a user, or "schedule"
    Column("dry_run", Boolean, nullable=False),
    Column("started_at", UTCDateTime, nullable=False, default=utcnow),
    Column("finished_at", UTCDateTime),
    Column("rules", Text, nullable=False),
    Column("deleted", Text, nullable=False, default="[]"),  # JSON list of images
    Column("images_deleted", Integer, nullable=False, default=0),
    Column("images_skipped", Integer, nullable=False, default=0),
    # Images some rule covers and keeps, and images no rule covers (null: a run recorded
    # before revision 0023, which did not keep them).
    Column("images_kept", Integer),
    Column("images_outside_rules", Integer),
    Column("error", Text),
    # running (recorded when it starts, its counts updated as each batch commits), succeeded,
    # failed, or interrupted: its process stopped mid-run (`holder`, host:pid, held its lease).
    Column("state", String(16), nullable=False, server_default="succeeded"),
    Column("holder", String(64)),
    Index(None, "project_id", "started_at"),
)


# A project's immutable tag rules (`domain/tag_rules.py`): a tag matching `tag_pattern`, in a
# repository matching `repository_pattern` (NULL: every repository), cannot be moved or removed.
immutable_tag_rules = Table(
    "immutable_tag_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("tag_pattern", String(128), nullable=False),
    Column("repository_pattern", String(255)),
    Column("created_by", String(64), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "project_id"),
)
