"""The registry's content: projects, repositories, blobs and their links, manifests and their
references, tags, and uploads in progress."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from berth.metadata.tables.schema import DIGEST, UTCDateTime, metadata, utcnow

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
    # garbage collection deleted, with its object, meanwhile (`services/uploads/commits.py`).
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
