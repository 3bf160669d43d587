"""Every action_id and callback_id, shared by the builders and the listener registry."""

RESTORE_OPEN = "snapshot_restore_open"  # "Restore…" on a listed snapshot
DELETE_OPEN = "snapshot_delete_open"  # "Delete…" on a listed snapshot, or "delete the oldest"
DELETE_CONFIRM = "snapshot_delete_confirm"
DELETE_CANCEL = "snapshot_delete_cancel"
APPROVE = "restore_approve"
REJECT = "restore_reject"
UNDO = "restore_undo"  # "Undo…" on a finished restore: a new request for its safety snapshot

# Exactly the ids the builders emit (tests/contracts): each has a listener and a job kind.
ACTION_IDS = (RESTORE_OPEN, DELETE_OPEN, DELETE_CONFIRM, DELETE_CANCEL, APPROVE, REJECT, UNDO)

CREATE_MODAL = "snapshot_create_modal"
CREATE_SERVER_BLOCK = "server"
CREATE_SERVER_ACTION = "server_value"
CREATE_NAME_BLOCK = "name"
CREATE_NAME_ACTION = "name_value"
CREATE_DESCRIPTION_BLOCK = "description"
CREATE_DESCRIPTION_ACTION = "description_value"

# The restore confirmation (SPEC 9.3): an allowed approver's Approve opens it.
RESTORE_CONFIRM_MODAL = "restore_confirm_modal"
RESTORE_CONFIRM_BLOCK = "confirm_server"
RESTORE_CONFIRM_ACTION = "confirm_server_value"

VIEW_CALLBACK_IDS = (CREATE_MODAL, RESTORE_CONFIRM_MODAL)
