"""image scans: a scan per stored manifest, its findings, and SBOMs per digest

Revision ID: 0012_scans
Revises: 0011_vulndb
Create Date: 2026-12-01 20:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0012_scans"
down_revision: str | None = "0011_vulndb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("critical", sa.Integer(), nullable=False),
        sa.Column("high", sa.Integer(), nullable=False),
        sa.Column("medium", sa.Integer(), nullable=False),
        sa.Column("low", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.Column("packages", sa.Integer(), nullable=False),
        sa.Column("vulndb_state", sa.Integer(), nullable=True),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifests.id"],
            name=op.f("fk_scans_manifest_id_manifests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
        sa.UniqueConstraint("manifest_id", name=op.f("uq_scans_manifest_id")),
    )
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scans_state"), ["state"], unique=False)
    op.create_table(
        "scan_findings",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("purl", sa.Text(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("installed", sa.String(length=255), nullable=False),
        sa.Column("fixed", sa.String(length=255), nullable=True),
        sa.Column("advisory_id", sa.String(length=128), nullable=False),
        sa.Column("aliases", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("link", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["scan_id"],
            ["scans.id"],
            name=op.f("fk_scan_findings_scan_id_scans"),
            ondelete="CASCADE",
        ),
    )
    with op.batch_alter_table("scan_findings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scan_findings_scan_id"), ["scan_id"], unique=False)
    op.create_table(
        "scan_sboms",
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("inventory", sa.Text(), nullable=False),
        sa.Column("created_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_scan_sboms")),
    )


def downgrade() -> None:
    op.drop_table("scan_sboms")
    with op.batch_alter_table("scan_findings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scan_findings_scan_id"))
    op.drop_table("scan_findings")
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scans_state"))
    op.drop_table("scans")
