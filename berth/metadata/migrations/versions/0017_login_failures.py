"""login failures: the failed-login throttle's counters, shared by every worker and node

Revision ID: 0017_login_failures
Revises: 0016_uploads_started_by
Create Date: 2026-12-03 18:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0017_login_failures"
down_revision: str | None = "0016_uploads_started_by"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("counter", sa.String(length=200), nullable=False),
        sa.Column("window_start", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("counter", name=op.f("pk_login_failures")),
    )
    op.create_index(
        op.f("ix_login_failures_window_start"), "login_failures", ["window_start"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_login_failures_window_start"), table_name="login_failures")
    op.drop_table("login_failures")
