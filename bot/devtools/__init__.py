"""Local stand-ins for Slack, shipped with the package.

`snapbot demo` and `snapbot shell` run the real app against these instead of
slack.com, and the test suite uses the same code (re-exported from
`tests/fakes/`), so what the demo shows and what the tests prove cannot drift.

    fake_slack      a loopback Slack Web API + response_url endpoint that records state
    slack_signing   signed request bodies exactly as Slack sends them
    blockkit_check  the Block Kit limits Slack enforces (and slack_sdk partly skips)

Standard library, slack_sdk and (for `slack_signing.SlackClientSim` only) httpx.
"""
