"""Garbage collection: runs, what a run must still sweep, and blobs being removed."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from berth.metadata.tables.schema import DIGEST, UTCDateTime, metadata, utcnow

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
# one waits for its removal to end before storing it again (`services/uploads/commits.py`). A run's
# rows go once its objects are gone; those of a run that ended without (it failed) are void.
blob_removals = Table(
    "blob_removals",
    metadata,
    Column("digest", DIGEST, primary_key=True),
    Column("run_id", ForeignKey("gc_runs.id", ondelete="SET NULL"), index=True),
    # Counted in the run's figures once the object is gone (NULL on notes older than it).
    Column("size", BigInteger),
)
