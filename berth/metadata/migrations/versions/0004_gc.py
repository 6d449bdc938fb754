"""garbage collection: the sweep list and storage figures of a run

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gc_sweep",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=160), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["gc_runs.id"], name=op.f("fk_gc_sweep_run_id_gc_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "kind", "name", name=op.f("pk_gc_sweep")),
    )
    with op.batch_alter_table("gc_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("storage_blobs_deleted", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("storage_bytes_freed", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("uploads_deleted", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("gc_runs", schema=None) as batch_op:
        batch_op.drop_column("uploads_deleted")
        batch_op.drop_column("storage_bytes_freed")
        batch_op.drop_column("storage_blobs_deleted")
    op.drop_table("gc_sweep")
