"""Schema. Alembic migrations under migrations/versions are written against these tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    literal,
    type_coerce,
)
from sqlalchemy.sql.elements import ColumnElement


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def database_clock(dialect: str, seconds_from_now: float = 0.0) -> ColumnElement[dt.datetime]:
    """Now (or `seconds_from_now` later), by the database's clock, for a statement on a
    database of `dialect` to write or compare. Times every node compares (job leases, serving
    processes' heartbeats) are taken from the one clock they share: a node whose own clock runs
    ahead would otherwise see a live holder's lease or heartbeat as lapsed. PostgreSQL's is the
    time its statement started; an SQLite database is on this machine, whose clock it is."""
    if dialect == "sqlite":
        return literal(utcnow() + dt.timedelta(seconds=seconds_from_now), UTCDateTime())
    now = func.statement_timestamp(type_=UTCDateTime())
    if not seconds_from_now:
        return now
    return type_coerce(
        now + literal(dt.timedelta(seconds=seconds_from_now), Interval()), UTCDateTime()
    )


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

DIGEST = String(160)

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("description", String(100), nullable=False, default=""),
    Column("public", Boolean, nullable=False, default=False),
    Column("tag_overwrite", Boolean, nullable=False, default=True),
    Column("scan_mode", String(16), nullable=False, default="manual"),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
    UniqueConstraint("project_id", "name"),
)

# A blob's bytes exist once in storage; this row says they are there and how big.
blobs = Table(
    "blobs",
    metadata,
    Column("digest", DIGEST, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    # Made anew with each row (NULL on rows older than it): a push that stored the blob's
    # object links it only if the row it held before storing is still the same row, not one
    # garbage collection deleted, with its object, meanwhile (`services/uploads.py`).
    Column("token", String(32)),
)

# Which repositories may serve a blob: uploads, mounts and manifest pushes link it.
repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("digest", ForeignKey("blobs.digest"), primary_key=True),
    Column("linked_at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("image", String(255), nullable=False),
    Column("digest", DIGEST, nullable=False),
    Column("media_type", String(255), nullable=False),
    Column("artifact_type", String(255)),
    Column("subject_digest", DIGEST),
    Column("size", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("annotations", Text),
    Column("pushed_at", UTCDateTime, nullable=False, default=utcnow),
    # When a client last GET this manifest, to the minute (services/pulls.py); NULL: never.
    Column("last_pulled_at", UTCDateTime),
    UniqueConstraint("repository_id", "image", "digest"),
    Index(None, "repository_id", "image", "subject_digest"),
)

# What a manifest needs: blobs (config, layers) and, for an index, child manifests.
manifest_references = Table(
    "manifest_references",
    metadata,
    Column("manifest_id", ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True),
    Column("digest", DIGEST, primary_key=True),
    Column("is_manifest", Boolean, nullable=False),
    Index(None, "digest"),
)

tags = Table(
    "tags",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("digest", DIGEST, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "repository_id", "image", "digest"),
)

# An upload in progress. `offset` is what the client has been told; the scratch object may
# hold more after a crash, and is cut back to it. `digest_at_offset` is the running digest
# at `offset`, so a final PUT with no body needs no re-hash on another node or after restart.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    # Indexed: a new upload counts its project's open ones (max_open_uploads).
    Column(
        "repository_id",
        ForeignKey("repositories.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("image", String(255), nullable=False),
    # Who started it: one user may hold at most half of the project's open uploads. Their
    # uploads go with them (no one else may go on with them).
    Column("started_by", ForeignKey("users.id", ondelete="CASCADE"), index=True),
    Column("offset", BigInteger, nullable=False, default=0),
    Column("digest_at_offset", DIGEST),
    # The running SHA-256 at `offset` (domain.hash_state), so any node can take the next PATCH.
    Column("hash_state", LargeBinary),
    Column("started_at", UTCDateTime, nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
)

# The stored pieces (object names, in order) that hold an upload's first `offset` bytes, on
# stores that keep an upload as pieces (S3). Recorded with the offset, so a piece written by a
# PATCH that was never acknowledged (its node died) is never part of the blob.
upload_pieces = Table(
    "upload_pieces",
    metadata,
    Column("upload_id", ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(128), primary_key=True),
)

# ---------------------------------------------------------------- identity and access

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255)),  # argon2id; NULL for service accounts
    Column("is_admin", Boolean, nullable=False, default=False),  # administers every project
    Column("is_service_account", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

memberships = Table(
    "memberships",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),  # admin | member | reader
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "user_id"),
)

repository_grants = Table(
    "repository_grants",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),  # member | viewer
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "user_id"),
)

# The secret is stored only as HMAC-SHA256 under a server key: secrets are long random values,
# so a fast keyed hash compared in constant time is the right tool (not a password hash).
access_keys = Table(
    "access_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("last_used_at", UTCDateTime),
    Index(None, "user_id", "project_id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False, default=utcnow),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE")),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(255), nullable=False, default=""),
    Column("detail", Text),
    Column("client", String(64)),
    Index(None, "project_id", "at"),
)

# ---------------------------------------------------------------- management

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

gc_runs = Table(
    "gc_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    # running: marking (restricted) -> sweeping (files) -> succeeded | failed | rolled_back
    Column("state", String(16), nullable=False),
    Column("phase", String(32), nullable=False, default=""),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("delete_untagged", Boolean, nullable=False, default=False),
    Column("started_at", UTCDateTime, nullable=False, default=utcnow),
    Column("finished_at", UTCDateTime),
    Column("restricted_seconds", Float),
    Column("images_deleted", Integer, nullable=False, default=0),
    Column("blobs_deleted", Integer, nullable=False, default=0),
    Column("bytes_freed", BigInteger, nullable=False, default=0),
    Column("progress_done", Integer, nullable=False, default=0),
    Column("progress_total", Integer, nullable=False, default=0),
    Column("actor", String(64), nullable=False, default=""),
    Column("error", Text),
    # The project's figures above count blobs the project no longer holds; these count what
    # left storage (blobs no project links any more) and abandoned uploads removed.
    Column("storage_blobs_deleted", Integer, nullable=False, default=0, server_default="0"),
    Column("storage_bytes_freed", BigInteger, nullable=False, default=0, server_default="0"),
    Column("uploads_deleted", Integer, nullable=False, default=0, server_default="0"),
    # Kept only because younger than the grace period (`grace_seconds`, the run's setting):
    # untagged images nothing else keeps, and blob links nothing references. All of them are
    # collectable from `young_collectable_at` on.
    Column("grace_seconds", Float),
    Column("young_images_kept", Integer, nullable=False, default=0, server_default="0"),
    Column("young_blobs_kept", Integer, nullable=False, default=0, server_default="0"),
    Column("young_collectable_at", UTCDateTime),
    Index(None, "project_id", "started_at"),
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
# it serves and deletes it when it stops (metadata/presence.py). `berth status` lists them, and a
# `berth serve` that would migrate the schema waits until none of them is left.
serving_processes = Table(
    "serving_processes",
    metadata,
    Column("holder", String(64), primary_key=True),  # host:pid, as a job lease names it
    Column("node_name", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("schema_revision", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
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

# ---------------------------------------------------------------- garbage collection

# What a GC run must still remove once the restriction is lifted: blobs whose links it removed
# (`kind` blob, `name` the digest; their rows and files go if no repository links them by
# then) and upload scratch files (`kind` upload, `name` the upload id). Rows go as the files
# do, so a run cut short resumes where it stopped.
gc_sweep = Table(
    "gc_sweep",
    metadata,
    Column("run_id", ForeignKey("gc_runs.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("name", DIGEST, primary_key=True),
    Column("size", BigInteger, nullable=False, default=0),
)

# Blobs whose rows a GC run deleted and whose objects it is removing from the store: a push of
# one waits for its removal to end before storing it again (`services/uploads.py`). A run's
# rows go once its objects are gone; those of a run that ended without (it failed) are void.
blob_removals = Table(
    "blob_removals",
    metadata,
    Column("digest", DIGEST, primary_key=True),
    Column("run_id", ForeignKey("gc_runs.id", ondelete="SET NULL"), index=True),
    # Counted in the run's figures once the object is gone (NULL on notes older than it).
    Column("size", BigInteger),
)

# ---------------------------------------------------------------- retention

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

# ---------------------------------------------------------------- console

# Signed-in sessions of the web console. `id` is the SHA-256 (hex) of the cookie's random
# token: the token itself is never stored. A session ends at `expires_at` (or at logout).
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime),
    Index(None, "expires_at"),
    Index(None, "user_id"),
)

# ---------------------------------------------------------------- webhooks

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

# ---------------------------------------------------------------- lifecycle

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

# ---------------------------------------------------------------- vulnerability database

# OSV records the operator imported (`berth vulndb import`), one row per advisory ID: a newer
# `modified` replaces the row, an older or equal one leaves it. `record` is the record's JSON,
# which matching reads; `vuln_packages` indexes the packages it names, by the key an image's
# package is looked up by (`domain/vulns.py`: the ecosystem as the record says it, the name
# normalized where the ecosystem compares names so).
vuln_advisories = Table(
    "vuln_advisories",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("advisory_id", String(128), nullable=False, unique=True),
    Column("source", String(64), nullable=False),
    Column("modified", UTCDateTime, nullable=False),
    Column("withdrawn", UTCDateTime),
    Column("severity", String(16), nullable=False),
    Column("summary", Text, nullable=False),
    Column("record", Text, nullable=False),
    Column("imported_at", UTCDateTime, nullable=False, default=utcnow),
    Index(None, "source"),
)

vuln_packages = Table(
    "vuln_packages",
    metadata,
    Column("advisory_id", ForeignKey("vuln_advisories.id", ondelete="CASCADE"), nullable=False),
    Column("ecosystem", String(100), nullable=False),
    Column("name", String(512), nullable=False),
    Index(None, "ecosystem", "name"),
    Index(None, "advisory_id"),
)

# Each import: what it changed. The newest import that added or replaced a record is the
# database's state a scan records, so results of an older state can be known as stale.
vulndb_imports = Table(
    "vulndb_imports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("added", Integer, nullable=False),
    Column("replaced", Integer, nullable=False),
    Column("unchanged", Integer, nullable=False),
    Column("refused", Integer, nullable=False),
)

# An image's scan (services/scanning/scans.py): one per stored manifest, gone with it. `state`
# is queued, scanning, done or failed (`reason` says why); `vulndb_state` is the vulnerability
# database's state it matched against (older than the database's: stale; 0 on a `done` row:
# the database was empty, a result readers see as `no_data`).
scans = Table(
    "scans",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "manifest_id",
        ForeignKey("manifests.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("critical", Integer, nullable=False, default=0),
    Column("high", Integer, nullable=False, default=0),
    Column("medium", Integer, nullable=False, default=0),
    Column("low", Integer, nullable=False, default=0),
    Column("unknown", Integer, nullable=False, default=0),
    Column("packages", Integer, nullable=False, default=0),
    Column("vulndb_state", Integer),
    Column("requested_by", String(64), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    # Renewed while the scan runs: a "scanning" row not renewed for a while lost its node.
    Column("alive_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Index(None, "state"),
)

scan_findings = Table(
    "scan_findings",
    metadata,
    Column("scan_id", ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
    Column("purl", Text, nullable=False),
    Column("name", String(512), nullable=False),
    Column("installed", String(255), nullable=False),
    Column("fixed", String(255)),
    Column("advisory_id", String(128), nullable=False),
    Column("aliases", Text, nullable=False),  # JSON list
    Column("summary", Text, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("link", Text),
    Index(None, "scan_id"),
)

# An image manifest's package inventory (its SBOM) as JSON, per digest: the same bytes hold
# the same packages in every repository.
scan_sboms = Table(
    "scan_sboms",
    metadata,
    Column("digest", DIGEST, primary_key=True),
    Column("inventory", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)
