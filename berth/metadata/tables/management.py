"""Management: project settings, image history, traffic and storage figures, job leases, the
serving processes, failed logins and the facts of an install."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
)

from berth.metadata.tables.schema import DIGEST, UTCDateTime, metadata, utcnow

# Per-project settings and state, one row per project (kept apart from `projects` so that the
# hot name lookups stay narrow). `gc_restricted_by` is set while a garbage collection holds
# the project's write restriction: every write transaction checks it.
project_settings = Table(
    "project_settings",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("repository_quota", Integer),  # NULL: the server's default
    Column("gc_restricted_by", Integer),  # the gc_runs.id holding the write restriction
    Column("last_gc_at", UTCDateTime),
    # Pulls of images whose scan found something this severe or worse are refused; NULL: off.
    Column("refuse_pulls_severity", String(16)),
)


# Every push, tag, untag, tag move, delete and restore, for history and tag restore.
image_events = Table(
    "image_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("image", String(255), nullable=False),
    Column("tag", String(128)),  # NULL for events on an image (push or delete by digest)
    Column("action", String(16), nullable=False),  # push|tag|untag|move|delete|restore
    Column("old_digest", DIGEST),
    Column("new_digest", DIGEST),
    Column("actor", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "repository_id", "image", "at"),
    Index(None, "repository_id", "image", "tag"),
)


# Bytes served to clients, per project, repository and UTC day (flushed from memory).
traffic_daily = Table(
    "traffic_daily",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("repository_id", Integer, primary_key=True),  # no FK: history outlives repositories
    Column("day", Date, primary_key=True),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("requests", BigInteger, nullable=False, default=0),
)


storage_samples = Table(
    "storage_samples",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False, default=utcnow),
    Column("bytes", BigInteger, nullable=False),
    Column("blobs", Integer, nullable=False),
    Column("images", Integer, nullable=False),
    Index(None, "project_id", "at"),
)


# Scheduled jobs run on one node at a time: a lease row per job name.
job_leases = Table(
    "job_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)


# The server processes serving on this database: each writes its row every few seconds while
# it serves and deletes it when it stops (metadata/presence.py). `berth status` lists them, a
# `berth serve` that would migrate the schema waits until none of them is left, and the CLI
# prints the address of the newest one (null: a server of before 0025, or one too long).
serving_processes = Table(
    "serving_processes",
    metadata,
    Column("holder", String(64), primary_key=True),  # host:pid, as a job lease names it
    Column("node_name", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("schema_revision", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("served_at", String(255), nullable=True),  # host:port clients reach it at
    Column("project_host_suffix", String(255), nullable=True),
)


# Failed logins in the current minute per throttle counter ("key:NAME@ADDRESS",
# "client:ADDRESS"): shared by every worker and node (access/throttle.py), written only when a
# login fails; rows of past minutes are pruned hourly.
login_failures = Table(
    "login_failures",
    metadata,
    Column("counter", String(200), primary_key=True),
    Column("window_start", UTCDateTime, nullable=False, index=True),
    Column("failures", Integer, nullable=False),
)


# What the nodes of one install must agree on, by name (`key_fingerprint`: a digest of the
# token signing and secret-hashing keys, written by the first node that starts).
install_facts = Table(
    "install_facts",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False, default=utcnow),
)
