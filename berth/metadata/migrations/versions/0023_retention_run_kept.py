"""retention runs keep their kept and outside-the-rules counts, so history shows them

Revision ID: 0023_retention_run_kept
Revises: 0022_webhook_redeliveries
Create Date: 2026-12-05 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_retention_run_kept"
down_revision: str | None = "0022_webhook_redeliveries"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: runs recorded before this revision did not keep them, and stay null.
    with op.batch_alter_table("retention_runs") as batch:
        batch.add_column(sa.Column("images_kept", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("images_outside_rules", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("retention_runs") as batch:
        batch.drop_column("images_outside_rules")
        batch.drop_column("images_kept")
