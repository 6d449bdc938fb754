"""uploads by repository: a new upload counts its project's open ones (max_open_uploads)

Revision ID: 0015_uploads_by_repository
Revises: 0014_blob_removals
Create Date: 2026-12-03 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015_uploads_by_repository"
down_revision: str | None = "0014_blob_removals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_uploads_repository_id"), "uploads", ["repository_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_uploads_repository_id"), table_name="uploads")
