"""retention runs are recorded when they start: their state, and the process carrying them out

Revision ID: 0024_retention_run_state
Revises: 0023_retention_run_kept
Create Date: 2026-12-05 20:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024_retention_run_state"
down_revision: str | None = "0023_retention_run_kept"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Runs recorded before this revision were recorded once ended: succeeded, or failed with
    # their error.
    with op.batch_alter_table("retention_runs") as batch:
        batch.add_column(
            sa.Column("state", sa.String(16), nullable=False, server_default="succeeded")
        )
        batch.add_column(sa.Column("holder", sa.String(64), nullable=True))
    op.execute("UPDATE retention_runs SET state = 'failed' WHERE error IS NOT NULL")


def downgrade() -> None:
    # A run still running or interrupted goes back to one that ended with an error.
    op.execute(
        "UPDATE retention_runs SET error = 'interrupted' WHERE state <> 'succeeded' "
        "AND error IS NULL"
    )
    with op.batch_alter_table("retention_runs") as batch:
        batch.drop_column("holder")
        batch.drop_column("state")
