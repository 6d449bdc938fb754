"""uploads record who started them: one user may hold at most half of a project's open ones

Revision ID: 0016_uploads_started_by
Revises: 0015_uploads_by_repository
Create Date: 2026-12-03 18:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_uploads_started_by"
down_revision: str | None = "0015_uploads_by_repository"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch: SQLite adds a foreign key only by copying the table (uploads are few rows).
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_by", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_uploads_started_by"), ["started_by"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_uploads_started_by_users"),
            "users",
            ["started_by"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_uploads_started_by_users"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_uploads_started_by"))
        batch_op.drop_column("started_by")
