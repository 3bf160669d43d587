"""Control characters at the boundary (SPEC §14.8), on SQLite and on PostgreSQL.

A NUL typed into a modal field used to give a 500 on PostgreSQL (which stores no NUL
in text), and a NUL in a button's id failed its job with no answer and no audit row.
Now every control character (but tab and newline) in what Slack sends is refused where
the payload enters: the user is answered, the refusal is audited, no 5xx, nothing
reaches the provider, and no stored row carries the character.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from bot.blocks import ids
from bot.listeners import inbound
from snapbot_local.slack.signing import block_actions_body, view_submission_body
from snapbot_local.stack import LocalStack
from storage.db import session_scope
from storage.tables import AuditEvent, Job
from tests.conftest import wait_until


@pytest.fixture
def stack(db_url) -> Iterator[LocalStack]:
    s = LocalStack(database_url=db_url, poll_seconds=0.2).start()
    yield s
    problems = s.slack.invalid_payloads
    s.stop()
    assert problems == [], f"Slack would refuse these payloads: {problems}"


def audit_rows(stack: LocalStack, action: str) -> list[AuditEvent]:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def provider_writes(stack: LocalStack) -> int:
    return len(stack.sim.state.stats()["writes"])


def jobs(stack: LocalStack) -> int:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return len(list(s.scalars(select(Job))))


@pytest.mark.parametrize(
    "field, value",
    [("description", "before\x00update"), ("name", "snap\x00"), ("server", "12345\x1b")],
)
def test_a_control_character_in_a_modal_field_is_refused_in_the_form_and_audited(
    stack, field, value
):
    values = {"server": "12345", "name": "nul-test", "description": "ok"}
    values[field] = value
    body = view_submission_body(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: values["server"]},
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: values["name"]},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: values["description"]},
        },
        user_id="UALICE",
        private_metadata="C1",
    )
    response = stack.client.post(body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["response_action"] == "errors"
    assert any("control characters" in e for e in answer["errors"].values())
    (row,) = audit_rows(stack, "snapshot.create")
    assert row.outcome == "denied" and row.detail == f"control characters in {field}"
    assert "\x00" not in row.target and "\x1b" not in row.target
    assert jobs(stack) == 0 and provider_writes(stack) == 0


def test_a_control_character_in_a_command_is_answered_in_the_ack_and_audited(stack):
    response = stack.user("UALICE").command("restore 801 bad\x00deploy")
    assert response.status_code == 200
    assert "control characters" in response.text
    (row,) = audit_rows(stack, "command.refused")
    assert row.outcome == "denied" and row.actor == "UALICE"
    assert row.detail == "control characters in text"
    assert jobs(stack) == 0 and provider_writes(stack) == 0


@pytest.mark.parametrize(
    "who, value",
    [("UBOB", "8\x0001"), ("UBOB\x00", "801")],
    ids=["NUL in the button's id", "NUL in the user id"],
)
def test_a_control_character_in_a_button_press_is_answered_and_audited(stack, who, value):
    fake = stack.slack
    body = block_actions_body(
        ids.RESTORE_OPEN,
        value,
        user_id=who,
        message_ts="1700000000.000100",
        response_url=fake.response_url("button", channel="C1", user="UBOB"),
    )
    response = stack.client.post(body)
    assert response.status_code == 200
    told = wait_until(
        lambda: next(
            (e.text for e in fake.ephemerals(user="UBOB") if "control characters" in e.text),
            None,
        ),
        what="the user to be told",
    )
    assert "nothing was done" in told
    (row,) = audit_rows(stack, "button.refused")
    assert row.outcome == "denied" and row.actor == "UBOB"
    assert row.detail in ("control characters in value", "control characters in user")
    assert jobs(stack) == 0 and provider_writes(stack) == 0


def test_tab_and_newline_pass_and_every_other_control_character_is_caught():
    allowed = {"\t", "\n", "\r"}
    for code in [*range(0x20), *range(0x7F, 0xA0)]:
        char = chr(code)
        found = inbound.controls_in({"text": f"a{char}b", "user": "U1"})
        assert found == ([] if char in allowed else ["text"]), repr(char)
    assert inbound.controls_in({"value": "\ud800"}) == ["value"]  # a lone surrogate
    assert inbound.without_controls({"text": "a\x00b\x1bc", "n": 1}) == {"text": "abc", "n": 1}
