"""serving processes: each server process's row while it serves, so that an upgrade can wait
for the older version's processes to be gone before migrating

Revision ID: 0021_serving_processes
Revises: 0020_webhook_pending_tests
Create Date: 2026-12-04 21:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from berth.metadata.tables import UTCDateTime

revision: str = "0021_serving_processes"
down_revision: str | None = "0020_webhook_pending_tests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "serving_processes",
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("node_name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("schema_revision", sa.String(length=64), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("holder", name=op.f("pk_serving_processes")),
    )


def downgrade() -> None:
    op.drop_table("serving_processes")
