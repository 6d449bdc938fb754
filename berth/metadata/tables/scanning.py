"""Image scanning: the vulnerability database (imported advisories, their packages, imports)
and each image's scan, findings and SBOM."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from berth.metadata.tables.schema import DIGEST, UTCDateTime, metadata, utcnow

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
