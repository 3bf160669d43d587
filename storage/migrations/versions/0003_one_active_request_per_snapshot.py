"""one active restore request per snapshot

Revision ID: 0003_active_request
Revises: 0002_snapshot_deletion
Create Date: 2026-12-03

A partial unique index on restore_request.snapshot_id over the active states (pending,
approved, executing), on SQLite and PostgreSQL alike: two requests opened at the same
instant can no longer both be stored (SPEC 14.2). Closing a request (any other state)
takes it out of the index, so the snapshot is free for a new one.

Before the index, the race could leave duplicates behind: each pending request that
another active request of its snapshot precedes (an older one, or one already approved
or executing) is cancelled, so the index can be built. Of several approved or executing
ones, an executing request may be restoring right now and stays; an approved one beside
it (or beside an older approved one) has not reached the provider and is failed, so it
never will; a second executing one is marked interrupted, the state that says to check
the server (SPEC 5.4). The upgrade never leaves two of them active: that would stop it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_active_request"
down_revision = "0002_snapshot_deletion"
branch_labels = None
depends_on = None

ACTIVE = sa.text("state IN ('pending', 'approved', 'executing')")


def upgrade() -> None:
    op.execute(
        """
        UPDATE restore_request
        SET state = 'cancelled',
            outcome_detail = 'closed as a duplicate: another request for this snapshot was open'
        WHERE state = 'pending'
          AND EXISTS (
            SELECT 1 FROM restore_request AS other
            WHERE other.snapshot_id = restore_request.snapshot_id
              AND other.id <> restore_request.id
              AND other.state IN ('pending', 'approved', 'executing')
              AND (other.state <> 'pending' OR other.id < restore_request.id)
          )
        """
    )
    op.execute(
        """
        UPDATE restore_request
        SET state = 'failed',
            outcome_detail = 'closed at an upgrade: another request for this snapshot '
              || 'was already approved or restoring; nothing was restored by this one'
        WHERE state = 'approved'
          AND EXISTS (
            SELECT 1 FROM restore_request AS other
            WHERE other.snapshot_id = restore_request.snapshot_id
              AND other.id <> restore_request.id
              AND (other.state = 'executing'
                   OR (other.state = 'approved' AND other.id < restore_request.id))
          )
        """
    )
    op.execute(
        """
        UPDATE restore_request
        SET state = 'interrupted',
            outcome_detail = 'closed at an upgrade: another request for this snapshot '
              || 'was restoring too; check the server'
        WHERE state = 'executing'
          AND EXISTS (
            SELECT 1 FROM restore_request AS other
            WHERE other.snapshot_id = restore_request.snapshot_id
              AND other.state = 'executing'
              AND other.id < restore_request.id
          )
        """
    )
    op.create_index(
        "uq_restore_request_active_snapshot",
        "restore_request",
        ["snapshot_id"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_restore_request_active_snapshot", table_name="restore_request")
