"""Every table snapbot keeps. Alembic (storage/migrations) owns the schema; these
classes describe it for queries. All times are UTC-aware.

State lives here, never only in memory: a restart, even ``kill -9``, must find every
pending approval, watched snapshot, queued job and undelivered Slack message.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Text, UniqueConstraint, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way in and out. SQLite keeps no zone, so values are
    normalised to UTC before storing (their text then sorts in time order) and marked
    UTC when read back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _ts(*, nullable: bool = False, index: bool = False) -> Column:
    return Column(UTCDateTime(), nullable=nullable, index=index)


class AuditEvent(SQLModel, table=True):
    """One row per action; ``hash`` chains it to the row before (core/audit_chain.py)."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_actor_id", "actor", "id"),)

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    at: datetime = Field(sa_column=_ts())
    team: str = ""
    channel: str = ""
    actor: str = ""
    action: str
    target: str = ""
    outcome: str
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    prev_hash: str
    hash: str


class AuditHead(SQLModel, table=True):
    """The chain's head, one row (id 1). Appends lock it, so the chain stays one line."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    count: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str


# A request holds its snapshot while in one of these states (bot/core/approval.py's
# ACTIVE_STATES); the partial unique index below lets only one request hold it.
ACTIVE_REQUEST = text("state IN ('pending', 'approved', 'safeguarding', 'executing')")


class RestoreRequest(SQLModel, table=True):
    """One active request per snapshot is the database's promise, not a check before
    the insert: two requests opened at the same instant race for the unique index."""

    __tablename__ = "restore_request"
    __table_args__ = (
        Index(
            "uq_restore_request_active_snapshot",
            "snapshot_id",
            unique=True,
            sqlite_where=ACTIVE_REQUEST,
            postgresql_where=ACTIVE_REQUEST,
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    snapshot_name: str = ""
    snapshot_created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    server_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    server_name: str = ""
    requester: str
    team: str = ""
    channel: str
    message_ts: str | None = None
    reason: str = ""
    state: str = Field(index=True)
    required_approvals: int = 1
    created_at: datetime = Field(sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts(index=True))
    decided_by: str | None = None
    decided_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    executing_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    executor: str | None = None
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    outcome_detail: str = ""
    # SPEC 9: the safety snapshot's plan, as the request announced it ("on", "off",
    # "opted_out"), the snapshot it named for eviction at 5/5, the newer snapshot it
    # warned about, and once approved the step being done ("evict", "create", "watch",
    # "ready"), when that step was claimed, and the safety snapshot's ID.
    safety_plan: str = "off"
    evict_snapshot_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    evict_snapshot_name: str = ""
    newer_snapshot_name: str = ""
    newer_snapshot_created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    safety_step: str = ""
    safety_step_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    safety_snapshot_id: int | None = Field(default=None, sa_column=Column(BigInteger))


class Approval(SQLModel, table=True):
    """A distinct approver of a request: the unique key makes a second click count once."""

    __tablename__ = "approval"
    __table_args__ = (UniqueConstraint("request_id", "approver", name="uq_approval_approver"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="restore_request.id", index=True)
    approver: str
    at: datetime = Field(sa_column=_ts())


class Watch(SQLModel, table=True):
    """A snapshot being created (kind ``snapshot``), a restore's safety snapshot being
    created (``safety``, SPEC 9) or a server being restored (``restore``)."""

    __tablename__ = "watch"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = "snapshot"
    snapshot_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    snapshot_name: str = ""
    server_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    server_name: str = ""
    request_id: int | None = None
    channel: str
    parent_ts: str | None = None
    requester: str = ""
    team: str = ""
    started_at: datetime = Field(sa_column=_ts())
    last_status: str = "in_progress"
    last_seen_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    state: str = Field(default="watching", index=True)
    final_status: str | None = None
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    size_mb: int | None = None


class Lease(SQLModel, table=True):
    """Who does the background duties; lapses unless renewed."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True)
    owner: str = ""
    expires_at: datetime = Field(sa_column=_ts())


class Job(SQLModel, table=True):
    """An acknowledged Slack request, waiting for or being done by a worker."""

    __tablename__ = "job"

    id: int | None = Field(default=None, primary_key=True)
    kind: str
    payload: str = Field(sa_column=Column(Text, nullable=False))
    progress: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    state: str = Field(default="queued", index=True)
    owner: str = ""
    lease_until: datetime = Field(sa_column=_ts())
    attempts: int = 0
    created_at: datetime = Field(sa_column=_ts())
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    error: str = ""


class Outbox(SQLModel, table=True):
    """A Slack message that must arrive: sent, then marked; retried until Slack accepts."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    key: str | None = Field(default=None, unique=True)
    method: str
    payload: str = Field(sa_column=Column(Text, nullable=False))
    state: str = Field(default="pending", index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=_ts())
    owner: str = ""
    lease_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    result_ts: str | None = None
    error: str = ""
    created_at: datetime = Field(sa_column=_ts())
    sent_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class SlackDelivery(SQLModel, table=True):
    """SHA-256 of every request body seen: a redelivery or replay is acknowledged, not redone."""

    __tablename__ = "slack_delivery"

    key: str = Field(primary_key=True)
    received_at: datetime = Field(sa_column=_ts(index=True))


class Setting(SQLModel, table=True):
    """Small durable facts (e.g. when the last daily audit checkpoint was posted), in the
    table ``kv`` (storage/repositories/settings.py)."""

    __tablename__ = "kv"

    key: str = Field(primary_key=True)
    value: str = ""


class SnapshotDeletion(SQLModel, table=True):
    """One row per snapshot a user confirmed deleting: the primary key lets one
    confirmation through, however many presses of Delete arrive (SPEC 13, a double click)."""

    __tablename__ = "snapshot_deletion"

    snapshot_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    state: str = "deleting"  # deleting -> deleted | failed (a failed one may be tried again)
    deleted_by: str = ""
    started_at: datetime = Field(sa_column=_ts())
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
