"""pull policy: a project may refuse pulls of images with findings at or above a severity

Revision ID: 0013_pull_policy
Revises: 0012_scans
Create Date: 2026-12-01 21:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_pull_policy"
down_revision: str | None = "0012_scans"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("project_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refuse_pulls_severity", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("project_settings", schema=None) as batch_op:
        batch_op.drop_column("refuse_pulls_severity")
