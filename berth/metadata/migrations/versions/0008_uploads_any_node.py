"""uploads any node can continue (hash state, recorded pieces); the install's key fingerprint

Revision ID: 0008_uploads_any_node
Revises: 0007_webhooks
Create Date: 2026-12-01 14:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import berth.metadata.tables

revision: str = "0008_uploads_any_node"
down_revision: str | None = "0007_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hash_state", sa.LargeBinary(), nullable=True))
    op.create_table(
        "upload_pieces",
        sa.Column("upload_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["upload_id"],
            ["uploads.id"],
            name=op.f("fk_upload_pieces_upload_id_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upload_id", "name", name=op.f("pk_upload_pieces")),
    )
    op.create_table(
        "install_facts",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("recorded_at", berth.metadata.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_install_facts")),
    )


def downgrade() -> None:
    op.drop_table("install_facts")
    op.drop_table("upload_pieces")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("hash_state")
