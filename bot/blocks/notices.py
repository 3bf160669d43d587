"""What the incident channel is told (SPEC 13): restore requests opened, decided,
started, finished or expired; snapshots that failed; the provider down and back;
audit checkpoints. Each notice links to the request message when there is one."""

from __future__ import annotations

from collections.abc import Iterable

from bot.blocks.format import escape, mention, when
from bot.blocks.kit import payload, section


def incident_notice(mrkdwn: str, link: str | None) -> dict:
    full = mrkdwn + (f" <{link}|View the request>" if link else "")
    return payload(mrkdwn, [section(full)])


# --- restore requests ----------------------------------------------------------------------------


def request_opened_notice(req, reason: str, link: str | None) -> dict:
    return incident_notice(
        f":rotating_light: Restore requested: {mention(req.requester)} wants to restore "
        f"*{escape(req.server_name)}* from *{escape(req.snapshot_name)}* (request #{req.id}, "
        f"taken {when(req.snapshot_created_at)}). Reason: {escape(reason) or 'none given'}.",
        link,
    )


def request_approved_notice(req, approvals: Iterable[str], link: str | None) -> dict:
    who = ", ".join(mention(a) for a in sorted(approvals))
    return incident_notice(
        f":white_check_mark: Restore #{req.id} of *{escape(req.server_name)}* approved by {who}.",
        link,
    )


def request_decided_notice(req, word: str, decider: str, link: str | None) -> dict:
    return incident_notice(
        f":no_entry_sign: Restore #{req.id} of *{escape(req.server_name)}* {escape(word)} by "
        f"{mention(decider)}.",
        link,
    )


def restore_outcome_notice(req, state: str, detail: str, link: str | None) -> dict:
    if state == "succeeded":
        text = (
            f":arrows_counterclockwise: Restore #{req.id} started: *{escape(req.server_name)}* "
            f"is being restored from *{escape(req.snapshot_name)}*."
        )
    else:
        text = (
            f":x: Restore #{req.id} of *{escape(req.server_name)}* {escape(state)}: "
            f"{escape(detail)}"
        )
    return incident_notice(text, link)


def request_expired_notice(req, link: str | None) -> dict:
    return incident_notice(
        f":hourglass: Restore request #{req.id} of *{escape(req.server_name)}* expired undecided.",
        link,
    )


def request_unposted_notice(req, error: str) -> dict:
    return incident_notice(
        f":x: Restore request #{req.id} of *{escape(req.server_name)}* was cancelled: Slack "
        f"refused its message in <#{escape(req.channel)}> ({escape(error)}). Nothing was changed.",
        None,
    )


def restore_finished_notice(watch, status: str, took: str, link: str | None) -> dict:
    if status != "restoring":
        text = (
            f":white_check_mark: Restore #{watch.request_id} of *{escape(watch.server_name)}* "
            f"finished: the server is `{escape(status)}`."
        )
    else:
        text = (
            f":warning: Restore #{watch.request_id} of *{escape(watch.server_name)}* is still "
            f"restoring after {escape(took)}; snapbot stops following it."
        )
    return incident_notice(text, link)


# --- snapshots, the provider, the audit log ------------------------------------------------------


def snapshot_ended_notice(watch, status: str) -> dict:
    return incident_notice(
        f":x: Snapshot *{escape(watch.snapshot_name)}* of *{escape(watch.server_name)}* ended "
        f"as {escape(status)}.",
        None,
    )


def provider_down_notice(problem: str) -> dict:
    return incident_notice(
        f":warning: snapbot cannot reach the provider ({escape(problem)}); snapshot updates "
        "are delayed until it answers again.",
        None,
    )


def provider_back_notice() -> dict:
    return incident_notice(":white_check_mark: The provider answers again; updates resume.", None)


def checkpoint_notice(reason: str, count: int, head: str) -> dict:
    return incident_notice(
        f":lock: Audit checkpoint ({escape(reason)}): `{count}:{escape(head)}` — verify with "
        f"`snapbot audit verify --checkpoint {count}:{escape(head)}`",
        None,
    )
