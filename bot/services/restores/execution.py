"""Executing an approved restore request (SPEC 5.5, 9.4): the target is re-read, then
the safety snapshot is taken first (bot/services/restores/safety.py) or, without one,
restore is called (bot/services/restores/restore_call.py)."""

from __future__ import annotations

from bot.core import approval
from bot.core.safety import Plan
from bot.services.deps import Deps
from bot.services.restores import safety
from bot.services.restores.restore_call import call_restore, restorable_request


def execute_restore(deps: Deps, request_id: int) -> None:
    """Run an approved request at most once: re-read the target (gone or not
    completed: fail, nothing changed), then take the safety snapshot first (SPEC 9.4,
    bot/services/restores/safety.py) or, without one, call restore."""
    req = restorable_request(deps, request_id, approval.State.APPROVED)
    if req is None:
        return
    if req.safety_plan == Plan.ON:
        safety.safeguard(deps, req)
        return
    call_restore(deps, req, approval.State.APPROVED)
