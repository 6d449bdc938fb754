"""Identity and access: users, memberships, repository grants, access keys, the audit log and
the web console's sessions."""

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
