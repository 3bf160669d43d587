"""safer restores: a safety snapshot before every restore (SPEC 9)

Revision ID: 0004_safety_snapshot
Revises: 0003_active_request
Create Date: 2026-12-04

A restore request records its safety-snapshot plan (``safety_plan``: on, off, or
opted_out with ``--no-safety-snapshot``), the one snapshot it named for eviction when
the server was full, the newer snapshot it warned about, and, once approved, which
step of the safety snapshot it is on (``safety_step``: evict, create, watch, ready),
when that step was claimed, and the safety snapshot's ID. The new state
``safeguarding`` (the safety snapshot is being taken) holds the target snapshot like
the other active states, so the partial unique index is rebuilt over it.

Requests stored before this revision had no safety snapshot: their plan is ``off``.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004_safety_snapshot"
down_revision = "0003_active_request"
branch_labels = None
depends_on = None

OLD_ACTIVE = sa.text("state IN ('pending', 'approved', 'executing')")
ACTIVE = sa.text("state IN ('pending', 'approved', 'safeguarding', 'executing')")
INDEX = "uq_restore_request_active_snapshot"


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table("restore_request") as batch:
        batch.add_column(
            sa.Column(
                "safety_plan",
                sqlmodel.sql.sqltypes.AutoString(),
                nullable=False,
                server_default="off",
            )
        )
        batch.add_column(sa.Column("evict_snapshot_id", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column(
                "evict_snapshot_name",
                sqlmodel.sql.sqltypes.AutoString(),
                nullable=False,
                server_default="",
            )
        )
        batch.add_column(
            sa.Column(
                "newer_snapshot_name",
                sqlmodel.sql.sqltypes.AutoString(),
                nullable=False,
                server_default="",
            )
        )
        batch.add_column(_ts("newer_snapshot_created_at"))
        batch.add_column(
            sa.Column(
                "safety_step", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=""
            )
        )
        batch.add_column(_ts("safety_step_at"))
        batch.add_column(sa.Column("safety_snapshot_id", sa.BigInteger(), nullable=True))
    op.drop_index(INDEX, table_name="restore_request")
    op.create_index(
        INDEX,
        "restore_request",
        ["snapshot_id"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )


def downgrade() -> None:
    op.execute(
        "UPDATE restore_request SET state = 'failed', "
        "outcome_detail = 'closed at a downgrade while its safety snapshot was being taken; "
        "nothing was restored' WHERE state = 'safeguarding'"
    )
    op.drop_index(INDEX, table_name="restore_request")
    op.create_index(
        INDEX,
        "restore_request",
        ["snapshot_id"],
        unique=True,
        sqlite_where=OLD_ACTIVE,
        postgresql_where=OLD_ACTIVE,
    )
    with op.batch_alter_table("restore_request") as batch:
        for column in (
            "safety_snapshot_id",
            "safety_step_at",
            "safety_step",
            "newer_snapshot_created_at",
            "newer_snapshot_name",
            "evict_snapshot_name",
            "evict_snapshot_id",
            "safety_plan",
        ):
            batch.drop_column(column)
