"""garbage collection: what a run kept because it was younger than the grace period

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gc_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grace_seconds", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("young_images_kept", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("young_blobs_kept", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "young_collectable_at",
                berth.metadata.tables.UTCDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("gc_runs", schema=None) as batch_op:
        batch_op.drop_column("young_collectable_at")
        batch_op.drop_column("young_blobs_kept")
        batch_op.drop_column("young_images_kept")
        batch_op.drop_column("grace_seconds")
