"""immutable tag rules per project

Revision ID: 0009_immutable_tags
Revises: 0008_uploads_any_node
Create Date: 2026-12-01 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0009_immutable_tags"
down_revision: str | None = "0008_uploads_any_node"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "immutable_tag_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("tag_pattern", sa.String(length=128), nullable=False),
        sa.Column("repository_pattern", sa.String(length=255), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_immutable_tag_rules_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_immutable_tag_rules")),
    )
    with op.batch_alter_table("immutable_tag_rules", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_immutable_tag_rules_project_id"), ["project_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("immutable_tag_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_immutable_tag_rules_project_id"))
    op.drop_table("immutable_tag_rules")
