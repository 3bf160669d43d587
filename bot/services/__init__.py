"""Use cases: load -> decide (core) -> save -> call the provider -> notify.

Listeners hand every acknowledged request to a job (bot/jobs.py) of one kind; the
table in ``dispatch`` names the use case each kind runs. Use cases are functions
taking the shared collaborators (``deps.Deps``) first, one module per question:

    deps         Deps: settings, database, provider, Slack, outbox, jobs, groups, policy, clock
    actors       who acted (Actor) and who is in a user group (GroupCache)
    door         who may do anything at all (SPEC 13.5), accepting a request as a job
    auditing     the audit trail (and its log line), refusals recorded and answered
    messaging    answering the actor, the incident channel, outbox keys
    reporting    usage, list, audit, pending
    creates      the create modal, a create, watching and resuming it
    deletes      asking, confirming and cancelling a delete
    restores/    requests (opening), decisions (approve, reject, expire),
                 execution (the one provider call, its outcome), message (what it shows)
    checkpoints  the audit chain's head in the incident channel
    dispatch     job kind -> use case

Each step that must not be repeated is guarded by stored state: a conditional update
for the restore, saved job progress for a create, a unique key for every message that
must arrive (bot/outbox.py).
"""
