"""blob removals: garbage collection removes objects from the store outside any transaction

Revision ID: 0014_blob_removals
Revises: 0013_pull_policy
Create Date: 2026-12-02 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_blob_removals"
down_revision: str | None = "0013_pull_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token", sa.String(length=32), nullable=True))
    op.create_table(
        "blob_removals",
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["gc_runs.id"],
            name=op.f("fk_blob_removals_run_id_gc_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_blob_removals")),
    )
    op.create_index(op.f("ix_blob_removals_run_id"), "blob_removals", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_blob_removals_run_id"), table_name="blob_removals")
    op.drop_table("blob_removals")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("token")
