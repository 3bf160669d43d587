"""snapshot deletion record

Revision ID: 0002_snapshot_deletion
Revises: 0001
Create Date: 2026-12-03

One row per snapshot whose deletion a user confirmed: two presses of Delete delete
once (the primary key), and the second is told who deleted it.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002_snapshot_deletion"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshot_deletion",
        sa.Column("snapshot_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("deleted_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("snapshot_id"),
    )


def downgrade() -> None:
    op.drop_table("snapshot_deletion")
