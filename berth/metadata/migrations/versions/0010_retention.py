"""retention: policies, runs and each manifest's last pull time

Revision ID: 0010_retention
Revises: 0008_uploads_any_node
Create Date: 2026-12-01 18:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0010_retention"
down_revision: str | None = "0009_immutable_tags"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "last_pulled_at",
                berth.metadata.tables.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
    op.create_table(
        "retention_policies",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("schedule", sa.String(length=64), nullable=True),
        sa.Column("next_run_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_retention_policies_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_retention_policies")),
    )
    op.create_table(
        "retention_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("started_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("deleted", sa.Text(), nullable=False),
        sa.Column("images_deleted", sa.Integer(), nullable=False),
        sa.Column("images_skipped", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_retention_runs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_runs")),
    )
    with op.batch_alter_table("retention_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retention_runs_project_id_started_at"),
            ["project_id", "started_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("retention_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retention_runs_project_id_started_at"))
    op.drop_table("retention_runs")
    op.drop_table("retention_policies")
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.drop_column("last_pulled_at")
