"""vulnerability database: imported OSV records, the packages they name, and each import

Revision ID: 0011_vulndb
Revises: 0010_retention
Create Date: 2026-12-01 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0011_vulndb"
down_revision: str | None = "0010_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vuln_advisories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("modified", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("withdrawn", berth.metadata.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("imported_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vuln_advisories")),
        sa.UniqueConstraint("advisory_id", name=op.f("uq_vuln_advisories_advisory_id")),
    )
    with op.batch_alter_table("vuln_advisories", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vuln_advisories_source"), ["source"], unique=False)
    op.create_table(
        "vuln_packages",
        sa.Column("advisory_id", sa.Integer(), nullable=False),
        sa.Column("ecosystem", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["advisory_id"],
            ["vuln_advisories.id"],
            name=op.f("fk_vuln_packages_advisory_id_vuln_advisories"),
            ondelete="CASCADE",
        ),
    )
    with op.batch_alter_table("vuln_packages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vuln_packages_ecosystem_name"), ["ecosystem", "name"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_vuln_packages_advisory_id"), ["advisory_id"], unique=False
        )
    op.create_table(
        "vulndb_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("started_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("replaced", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vulndb_imports")),
    )


def downgrade() -> None:
    op.drop_table("vulndb_imports")
    with op.batch_alter_table("vuln_packages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vuln_packages_advisory_id"))
        batch_op.drop_index(batch_op.f("ix_vuln_packages_ecosystem_name"))
    op.drop_table("vuln_packages")
    with op.batch_alter_table("vuln_advisories", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vuln_advisories_source"))
    op.drop_table("vuln_advisories")
