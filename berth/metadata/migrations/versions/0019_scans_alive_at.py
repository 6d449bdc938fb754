"""scans alive_at: a running scan says it is still alive, so scans can run on several nodes at
once and one whose node stopped is taken over minutes later, not an hour

Revision ID: 0019_scans_alive_at
Revises: 0018_blob_removal_sizes
Create Date: 2026-12-04 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0019_scans_alive_at"
down_revision: str | None = "0018_blob_removal_sizes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(
            sa.Column("alive_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("alive_at")
