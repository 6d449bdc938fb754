"""serving processes say where clients reach them: the CLI prints a live server's address,
not that of the last server to start, which may have stopped

Revision ID: 0025_serving_process_addresses
Revises: 0024_retention_run_state
Create Date: 2026-12-06 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_serving_process_addresses"
down_revision: str | None = "0024_retention_run_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("serving_processes") as batch:
        batch.add_column(sa.Column("served_at", sa.String(255), nullable=True))
        batch.add_column(sa.Column("project_host_suffix", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("serving_processes") as batch:
        batch.drop_column("project_host_suffix")
        batch.drop_column("served_at")
