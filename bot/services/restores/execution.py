"""Executing an approved restore request (SPEC 5.5, 9.4): the target is re-read, then
the safety snapshot is taken first (bot/services/restores/safety.py) or, without one,
restore is called (bot/services/restores/restore_call.py)."""

from __future__ import annotations

from bot.core import approval
from bot.core.safety import Plan
from bot.services.deps import Deps
from bot.services.restores import safety
from bot.services.restores.restore_call import call_restore, finish_restore, target_problem
from storage import repositories as repo
from storage.db import session_scope


def execute_restore(deps: Deps, request_id: int) -> None:
    """Run an approved request at most once: re-read the target (gone or not
    completed: fail, nothing changed), then take the safety snapshot first (SPEC 9.4,
    bot/services/restores/safety.py) or, without one, call restore."""
    with session_scope(deps.engine, readonly=True) as s:
        req = repo.get_restore_request(s, request_id=request_id)
    if req is None or req.state != approval.State.APPROVED:
        return
    why = target_problem(deps, req)
    if why is not None:
        finish_restore(deps, req, approval.State.APPROVED, approval.State.FAILED, why)
        return
    if req.safety_plan == Plan.ON:
        safety.safeguard(deps, req)
        return
    call_restore(deps, req, approval.State.APPROVED)
