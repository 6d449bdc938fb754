"""Schema. Alembic migrations under migrations/versions are written against these tables.

The tables are kept by area (`content`, `identity`, `management`, `gc`, `lifecycle`, `webhooks`,
`scanning`), all in the one `metadata` of `schema.py`; every one is importable from here.
"""

from __future__ import annotations

from berth.metadata.tables.content import (
    blobs,
    manifest_references,
    manifests,
    projects,
    repositories,
    repository_blobs,
    tags,
    upload_pieces,
    uploads,
)
from berth.metadata.tables.gc import blob_removals, gc_runs, gc_sweep
from berth.metadata.tables.identity import (
    access_keys,
    audit_log,
    console_sessions,
    memberships,
    repository_grants,
    users,
)
from berth.metadata.tables.lifecycle import immutable_tag_rules, retention_policies, retention_runs
from berth.metadata.tables.management import (
    image_events,
    install_facts,
    job_leases,
    login_failures,
    project_settings,
    serving_processes,
    storage_samples,
    traffic_daily,
)
from berth.metadata.tables.scanning import (
    scan_findings,
    scan_sboms,
    scans,
    vuln_advisories,
    vuln_packages,
    vulndb_imports,
)
from berth.metadata.tables.schema import (
    DIGEST,
    UTCDateTime,
    column_width,
    database_clock,
    metadata,
    utcnow,
)
from berth.metadata.tables.webhooks import (
    webhook_attempts,
    webhook_deliveries,
    webhook_events,
    webhooks,
)

__all__ = [
    "DIGEST",
    "UTCDateTime",
    "access_keys",
    "audit_log",
    "blob_removals",
    "blobs",
    "column_width",
    "console_sessions",
    "database_clock",
    "gc_runs",
    "gc_sweep",
    "image_events",
    "immutable_tag_rules",
    "install_facts",
    "job_leases",
    "login_failures",
    "manifest_references",
    "manifests",
    "memberships",
    "metadata",
    "project_settings",
    "projects",
    "repositories",
    "repository_blobs",
    "repository_grants",
    "retention_policies",
    "retention_runs",
    "scan_findings",
    "scan_sboms",
    "scans",
    "serving_processes",
    "storage_samples",
    "tags",
    "traffic_daily",
    "upload_pieces",
    "uploads",
    "users",
    "utcnow",
    "vuln_advisories",
    "vuln_packages",
    "vulndb_imports",
    "webhook_attempts",
    "webhook_deliveries",
    "webhook_events",
    "webhooks",
]
