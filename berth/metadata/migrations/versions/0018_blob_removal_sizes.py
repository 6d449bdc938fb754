"""blob removal sizes: a GC run counts a blob as removed from storage once its object is gone

Revision ID: 0018_blob_removal_sizes
Revises: 0017_login_failures
Create Date: 2026-12-04 03:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_blob_removal_sizes"
down_revision: str | None = "0017_login_failures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blob_removals") as batch:
        batch.add_column(sa.Column("size", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blob_removals") as batch:
        batch.drop_column("size")
