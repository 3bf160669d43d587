"""Every sentence and Block Kit payload a user sees, as pure builders (slack_sdk.models,
no I/O), one module per surface:

    snapshots.py   the list, a create's message, thread replies and modal, the delete prompt
    restore.py     a restore request's message, its thread replies, the requester's DM
    notices.py     what the incident channel is told (requests, outages, checkpoints)
    refusals.py    why snapbot did nothing, and what to do instead
    audit.py       the audit log in Slack
    pending.py     open requests and watched work
    help.py        a command's usage
    answers.py     one-section answers: a sentence, an error
    kit.py         the pieces the others are built of (payload, section, context)
    format.py      escaping, ages, sizes, durations, mentions
    ids.py         every action_id and callback_id
"""
