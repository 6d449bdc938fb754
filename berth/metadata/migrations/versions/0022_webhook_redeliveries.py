"""webhook redeliveries: a delivery may re-send an earlier one's event, and names it

Revision ID: 0022_webhook_redeliveries
Revises: 0021_serving_processes
Create Date: 2026-12-04 21:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_webhook_redeliveries"
down_revision: str | None = "0021_serving_processes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("redelivery_of", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("redelivery_of")
