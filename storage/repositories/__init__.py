"""Intent-named queries. Only this package speaks SQL.

Every function takes the session of the caller's unit of work (storage.db.session_scope)
and keyword arguments. Exactly-once is a conditional ``UPDATE … WHERE state = …`` whose
row count decides the winner, or an insert that a unique key refuses: both hold on
SQLite (one writer at a time) and on PostgreSQL (row locks), across threads and processes.

One module per question: ``audit`` (the chain), ``deliveries`` (Slack delivery keys),
``leases``, ``jobs``, ``requests`` (restore requests and approvals; a request's state
moves only along ``bot.core.approval.TRANSITIONS``), ``watches``, ``outbox``,
``settings`` (small durable facts) and ``deletions``. Callers keep using
``from storage import repositories as repo`` and ``repo.claim_job(...)``: every public
name is re-exported here.
"""

from storage.repositories.audit import (
    AUDIT_COLUMNS,
    AppendedAudit,
    append_audit,
    audit_hash_at,
    audit_head,
    latest_audit,
    stream_audit_rows,
)
from storage.repositories.deletions import begin_deletion, finish_deletion
from storage.repositories.deliveries import forget_deliveries, record_delivery
from storage.repositories.jobs import (
    ClaimedJob,
    accept_job,
    claim_job,
    count_jobs,
    finish_job,
    orphaned_jobs,
    purge_finished_jobs,
    release_queued_jobs,
    save_job_progress,
    unowned_jobs,
)
from storage.repositories.leases import acquire_lease, lease_holder, release_lease
from storage.repositories.outbox import (
    ClaimedMessage,
    claim_message,
    count_messages,
    defer_message,
    due_messages,
    enqueue_message,
    mark_message_failed,
    mark_message_retry,
    mark_message_sent,
    message_by_key,
    message_outcome,
)
from storage.repositories.requests import (
    active_requests_for_server,
    add_approval,
    approvers_of,
    expired_requests,
    get_restore_request,
    move_safety_step,
    open_request_for_snapshot,
    open_restore_request,
    requests_in_state,
    set_request_message,
    transition_request,
    unposted_requests,
)
from storage.repositories.settings import claim_setting, get_setting, put_setting
from storage.repositories.watches import (
    active_watches,
    add_watch,
    finish_watch,
    note_watch_status,
    snapshot_watch,
)

__all__ = [
    "AUDIT_COLUMNS",
    "AppendedAudit",
    "ClaimedJob",
    "ClaimedMessage",
    "accept_job",
    "acquire_lease",
    "active_requests_for_server",
    "active_watches",
    "add_approval",
    "add_watch",
    "append_audit",
    "approvers_of",
    "audit_hash_at",
    "audit_head",
    "begin_deletion",
    "claim_job",
    "claim_message",
    "claim_setting",
    "count_jobs",
    "count_messages",
    "defer_message",
    "due_messages",
    "enqueue_message",
    "expired_requests",
    "finish_deletion",
    "finish_job",
    "finish_watch",
    "forget_deliveries",
    "get_restore_request",
    "get_setting",
    "latest_audit",
    "lease_holder",
    "mark_message_failed",
    "mark_message_retry",
    "mark_message_sent",
    "message_by_key",
    "message_outcome",
    "move_safety_step",
    "note_watch_status",
    "open_request_for_snapshot",
    "open_restore_request",
    "orphaned_jobs",
    "purge_finished_jobs",
    "put_setting",
    "record_delivery",
    "release_lease",
    "release_queued_jobs",
    "requests_in_state",
    "save_job_progress",
    "set_request_message",
    "snapshot_watch",
    "stream_audit_rows",
    "transition_request",
    "unowned_jobs",
    "unposted_requests",
]
