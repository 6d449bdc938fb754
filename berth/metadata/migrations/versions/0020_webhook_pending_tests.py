"""webhook pending tests: an index that finds the test events waiting to be sent, which skip
their endpoint's queue

Revision ID: 0020_webhook_pending_tests
Revises: 0019_scans_alive_at
Create Date: 2026-12-04 18:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020_webhook_pending_tests"
down_revision: str | None = "0019_scans_alive_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_webhook_deliveries_state_event_type"),
        "webhook_deliveries",
        ["state", "event_type"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_deliveries_state_event_type"), table_name="webhook_deliveries")
